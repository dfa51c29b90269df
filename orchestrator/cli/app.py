"""The CLI's one error boundary, and the factory every typer app of the CLI is made with.

Commands raise; they never catch to print. ``BoundaryGroup.invoke`` wraps the
whole command (option parsing included), so every path out of every command
is decided here:

* an ``EdgefarmError`` prints one ``error:`` line (one per problem for a
  ``ConfigError``) and exits with the error class's code: its ``exit_code``
  attribute where it has one, else 2 for bad input (``ConfigError``,
  ``StoreError``) and 1 for every other known error;
* click's own usage errors (a bad option value) keep click's exit 2;
* Ctrl-C exits 130;
* anything else is a bug: one short line naming a debug log, which gets the
  traceback.

Sub-apps are made with ``new_app`` too, so a sub-app invoked on its own (as
tests do) has the same boundary; nested, the innermost one handles an error
and the outer ones pass the resulting exit through.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

from orchestrator.errors import ConfigError, EdgefarmError, StoreError

__all__ = ["BoundaryGroup", "console", "debug_log_path", "err_console", "exit_code", "new_app"]

console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

#: Exit codes of the root error classes without an ``exit_code`` attribute,
#: most specific first.
EXIT_CODES: tuple[tuple[type[EdgefarmError], int], ...] = (
    (ConfigError, 2),   # a file or value the user gave is invalid
    (StoreError, 2),    # an unknown sweep id, an unreadable results directory
    (EdgefarmError, 1),
)


def exit_code(exc: EdgefarmError) -> int:
    """The exit status for a known error: its class's ``exit_code``, else ``EXIT_CODES``."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    return next(c for cls, c in EXIT_CODES if isinstance(exc, cls))


def debug_log_path() -> Path:
    """Where unexpected errors' tracebacks go: $EDGEFARM_DEBUG_LOG, else the working directory.

    The working directory, like pyinfra's debug log: the user finds it where
    they ran the command, and a shared temp directory is no place to append to.
    """
    return Path(os.environ.get("EDGEFARM_DEBUG_LOG", "edgefarm-debug.log")).absolute()


def _report_known(exc: EdgefarmError) -> NoReturn:
    lines = [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else [str(exc)]
    for line in lines:
        err_console.print(f"[red]error:[/] {escape(line)}")
    raise typer.Exit(exit_code(exc))


def _report_unexpected(exc: Exception) -> NoReturn:
    path = debug_log_path()
    try:
        with open(path, "a") as handle:
            handle.write(f"--- {dt.datetime.now().isoformat()} {' '.join(sys.argv)}\n")
            handle.write("".join(traceback.format_exception(exc)))
        where = f"the traceback is in {path}"
    except OSError as log_exc:
        where = f"and its traceback could not be written to {path}: {log_exc.strerror}"
    err_console.print(f"[red]unexpected error:[/] {escape(type(exc).__name__)}: "
                      f"{escape(str(exc))}; {escape(where)}; please report it")
    raise typer.Exit(1)


class BoundaryGroup(TyperGroup):
    """A typer group whose ``invoke`` is the CLI's error boundary (see the module docstring)."""

    # typer passes its own Context subclass; the base class it overrides names the
    # vendored click Context, which has no public import.
    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            # Exits, aborts and usage errors (bad option values: exit 2) are
            # typer's to print. typer.Exit is a RuntimeError, so this comes first.
            raise
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except EdgefarmError as exc:
            _report_known(exc)
        except Exception as exc:
            _report_unexpected(exc)


def new_app(help: str | None = None, **kwargs: Any) -> typer.Typer:  # noqa: A002 (typer's name)
    """A ``typer.Typer`` with the boundary, no completion and plain tracebacks off."""
    kwargs.setdefault("no_args_is_help", True)
    return typer.Typer(help=help, cls=BoundaryGroup, add_completion=False,
                       pretty_exceptions_enable=False, **kwargs)
