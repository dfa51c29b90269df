"""``edgefarm dashboards``: write the generated Grafana JSON, push it to a Grafana server.

The work lives in ``orchestrator.dashboards`` and ``orchestrator.grafana_push``;
this module only parses options and prints. Errors go through the CLI's one
boundary: a ``GrafanaPushError`` carries its exit status (2 for bad input, 1
for server trouble).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from orchestrator import dashboards
from orchestrator.cli.app import new_app
from orchestrator.grafana_push import (
    DEFAULT_FOLDER,
    DEFAULT_PROMETHEUS_URL,
    GrafanaInputError,
    PushResult,
    check_timeout,
    push,
    token_from_env,
)

__all__ = ["dashboards_app"]

dashboards_app = new_app(help="Grafana dashboards: generate the JSON, push it to Grafana.")

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_COLOURS = {"created": "green", "updated": "yellow", "unchanged": "dim"}


def _print_result(result: PushResult) -> None:
    colour = _COLOURS.get(result.action.split(" ")[0], "yellow")
    console.print(f"[{colour}]{result.action}[/] {result.kind} {result.uid} ({result.title})"
                  + (f"; {result.detail}" if result.detail else ""))


def _timeout_option(value: float) -> float:
    """Check ``--timeout`` while parsing, so a bad value is a usage error (exit 2)."""
    try:
        return check_timeout(value)
    except GrafanaInputError as exc:
        raise typer.BadParameter(str(exc)) from None


@dashboards_app.command("push")
def push_cmd(
    url: Annotated[str, typer.Option("--url", help="Grafana base URL, e.g. http://127.0.0.1:3000.")],
    token_env: Annotated[str, typer.Option(
        "--token-env", help="Name of the environment variable holding a Grafana "
                            "service-account token (never the token itself).")],
    folder: Annotated[str, typer.Option(
        "--folder", help="Folder (title and uid) to put the dashboards in.")] = DEFAULT_FOLDER,
    prometheus_url: Annotated[str, typer.Option(
        "--prometheus-url", help="Prometheus URL as the Grafana server reaches it.")]
        = DEFAULT_PROMETHEUS_URL,
    timeout: Annotated[float, typer.Option(
        callback=_timeout_option,
        help="Seconds each request may take in all, from sending it to the last byte "
             "of the answer (more than 0).")] = 10.0,
    results_dir: Annotated[Path | None, typer.Option(
        "--results-dir", "-r",
        help="Results store whose sweeps become start/end annotations on every dashboard "
             "(default: none).")] = None,
) -> None:
    """Create or update the Prometheus datasource, the folder and every dashboard.

    With --results-dir also each sweep's start and end as an annotation.
    Idempotent: items already as wanted are reported "unchanged" and not written.
    """
    token = token_from_env(token_env)
    spans = None
    if results_dir is not None:
        from orchestrator.grafana_push import sweep_spans
        from orchestrator.store import open_to_read

        open_to_read(results_dir).close()  # a missing store: one clear message, exit 2
        spans = sweep_spans(results_dir)
    results = push(url, token, folder=folder, prometheus_url=prometheus_url,
                   sweeps=spans, timeout=timeout, on_result=_print_result)
    counts: dict[str, int] = {}
    for result in results:
        key = result.action.split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
    console.print(f"{url}: " + ", ".join(f"{n} {action}" for action, n in counts.items()))


@dashboards_app.command("write")
def write_cmd(
    out: Annotated[Path, typer.Option(file_okay=False, help="Directory for the JSON files.")]
        = dashboards.DEFAULT_OUT_DIR,
    check: Annotated[bool, typer.Option(
        "--check", help="Write nothing; exit 1 if the files differ from the code.")] = False,
) -> None:
    """Render the dashboards from orchestrator/dashboards/ to JSON (what provisioning loads)."""
    if check:
        problems = dashboards.check(out)
        for problem in problems:
            err_console.print(f"[red]error:[/] {problem}")
        if problems:
            err_console.print("run: edgefarm dashboards write")
            raise typer.Exit(1)
        console.print(f"{out}: up to date")
        return
    for path in dashboards.write(out):
        console.print(f"wrote {path}")
