"""Every command's bad input exits 2 through the CLI's one boundary, with one clear message.

The commands are enumerated from the click group behind the typer app, so a
new command fails ``test_every_command_has_a_bad_input_case`` until it gets a
case here (or an exemption with its reason). Commands run in process through
typer's CliRunner, against real files and a real (empty) results store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from helpers import write_inventory
from typer.core import TyperGroup
from typer.testing import CliRunner

from orchestrator.cli.app import BoundaryGroup, exit_code
from orchestrator.cli.main import app
from orchestrator.errors import ConfigError, EdgefarmError, StoreError
from orchestrator.store import IllegalTransitionError, UnknownSweepError


def command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every leaf command of ``group`` as its words (``("sweep", "run")``)."""
    out: set[tuple[str, ...]] = set()
    ctx = typer.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, TyperGroup):
            out |= command_paths(command, (*prefix, name))
        else:
            out.add((*prefix, name))
    return out


ROOT = typer.main.get_command(app)
assert isinstance(ROOT, TyperGroup)
COMMANDS = command_paths(ROOT)

#: Commands that read no user input at all, so they have no bad input to give.
EXEMPT = {
    ("models", "presets"): "lists built-in presets; takes no arguments or options",
    ("agent", "probe"): "prints this machine's facts; takes no arguments or options",
}

Args = Callable[[Path], list[str]]


def _inventory(tmp: Path) -> str:
    return str(write_inventory(tmp, ["dev-a"]))


def _malformed(tmp: Path, name: str) -> str:
    path = tmp / name
    path.write_text("devices: [\n  {name: a\n")  # unterminated flow sequence
    return str(path)


def _a_file(tmp: Path) -> str:
    path = tmp / "a-file"
    path.write_text("not a directory\n")
    return str(path)


def _results(tmp: Path) -> str:
    return str(tmp / "results")


#: command -> (argv after the command words, a fragment of the expected message)
BAD_INPUT: dict[tuple[str, ...], tuple[Args, str]] = {
    ("inventory", "validate"): (lambda t: ["-i", str(t / "missing.yaml")], "missing.yaml"),
    ("inventory", "list"): (lambda t: ["-i", _malformed(t, "inv.yaml")], "inv.yaml:"),
    ("inventory", "probe"): (lambda t: ["nosuch-device", "-i", _inventory(t), "-r",
                                        _results(t)], "nosuch-device"),
    ("inventory", "trust"): (lambda t: ["nosuch-device", "-i", _inventory(t), "--yes"],
                             "nosuch-device"),
    ("models", "synth"): (lambda t: ["no-such-preset", "--out", str(t / "m.gguf")],
                          "unknown preset"),
    ("sweep", "plan"): (lambda t: [str(t / "missing-sweep.yaml"), "-i", _inventory(t)],
                        "missing-sweep.yaml"),
    ("sweep", "run"): (lambda t: [_malformed(t, "sweep.yaml"), "-i", _inventory(t), "-r",
                                  _results(t), "--metrics-addr", "off"], "sweep.yaml:"),
    ("sweep", "resume"): (lambda t: ["no-such-sweep", "-r", _results(t)], "no-such-sweep"),
    ("sweep", "cancel"): (lambda t: ["no-such-sweep", "-r", _results(t), "--wait", "0"],
                          "no-such-sweep"),
    ("sweep", "status"): (lambda t: ["no-such-sweep", "-r", _results(t)], "no-such-sweep"),
    ("report",): (lambda t: ["no-such-sweep", "-r", _results(t)], "no-such-sweep"),
    ("watch",): (lambda t: ["no-such-sweep", "-r", _results(t), "--once"], "no-such-sweep"),
    ("serve",): (lambda t: ["-r", _results(t), "--addr", "no-port-here"], "no-port-here"),
    ("agent", "bundle"): (lambda t: ["--out-dir", _a_file(t)], "is a file"),
    ("dashboards", "push"): (lambda t: ["--url", "http://127.0.0.1:9", "--token-env",
                                        "EDGEFARM_TEST_NO_SUCH_TOKEN"],
                             "EDGEFARM_TEST_NO_SUCH_TOKEN"),
    ("dashboards", "write"): (lambda t: ["--out", _a_file(t)], "is a file"),
    ("telemetry", "parse"): (lambda t: [str(t / "missing.log"), "--format", "tegrastats"],
                             "cannot read"),
    ("monitor", "up"): (lambda t: ["-r", _results(t), "--prometheus",
                                   str(t / "no-prometheus")], "prometheus"),
    ("monitor", "down"): (lambda t: ["-r", _a_file(t)], "is a file"),
    ("monitor", "status"): (lambda t: ["-r", _a_file(t)], "is a file"),
}


def test_every_command_has_a_bad_input_case() -> None:
    assert COMMANDS, "no commands found in the app"
    missing = COMMANDS - set(BAD_INPUT) - set(EXEMPT)
    assert not missing, f"commands without a bad-input case in this file: {sorted(missing)}"
    stale = (set(BAD_INPUT) | set(EXEMPT)) - COMMANDS
    assert not stale, f"cases for commands that no longer exist: {sorted(stale)}"


def test_every_group_of_the_cli_is_a_boundary_group() -> None:
    """A sub-app invoked on its own (as some tests do) has the same boundary."""

    def groups(group: TyperGroup) -> list[TyperGroup]:
        ctx = typer.Context(group)
        subs = [group.get_command(ctx, n) for n in group.list_commands(ctx)]
        return [group] + [g for s in subs if isinstance(s, TyperGroup) for g in groups(s)]

    assert all(isinstance(g, BoundaryGroup) for g in groups(ROOT))


@pytest.mark.parametrize("words", sorted(BAD_INPUT), ids=" ".join)
def test_bad_input_exits_2_with_one_clear_message(words: tuple[str, ...], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing a command writes lands in the checkout
    monkeypatch.setenv("EDGEFARM_DEBUG_LOG", str(tmp_path / "debug.log"))
    monkeypatch.delenv("EDGEFARM_TEST_NO_SUCH_TOKEN", raising=False)
    args, fragment = BAD_INPUT[words]
    result = CliRunner().invoke(app, [*words, *args(tmp_path)])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert not (tmp_path / "debug.log").exists(), "bad input is not an unexpected error"
    stderr = result.stderr.strip()
    flat = " ".join(stderr.replace("│", " ").split())  # typer frames and wraps its message
    assert fragment in flat, stderr
    if stderr.startswith("error:"):  # edgefarm's own message: one line (one per problem)
        assert len(stderr.splitlines()) == 1, stderr
    else:  # click's usage error: its one framed message
        assert "Invalid value" in stderr, stderr


def test_unexpected_error_prints_one_line_and_logs_the_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "debug.log"
    monkeypatch.setenv("EDGEFARM_DEBUG_LOG", str(log))
    boom = typer.Typer(cls=BoundaryGroup)

    @boom.command("a")
    def a() -> None:
        raise ZeroDivisionError("a bug")

    @boom.command("b")
    def b() -> None:
        pass

    result = CliRunner().invoke(boom, ["a"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ZeroDivisionError: a bug" in lines[0] and str(log) in lines[0]
    text = log.read_text()
    assert "Traceback" in text and 'raise ZeroDivisionError("a bug")' in text


@pytest.mark.parametrize(("error", "code"), [
    (ConfigError("bad file"), 2),
    (UnknownSweepError("no sweep"), 2),
    (StoreError("cannot open"), 2),
    (IllegalTransitionError("done -> running"), 1),
    (EdgefarmError("known trouble"), 1),
])
def test_exit_code_per_error_class(error: EdgefarmError, code: int) -> None:
    assert exit_code(error) == code

