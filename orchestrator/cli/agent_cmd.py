"""``edgefarm agent``: build the device agent's zipapp, or print this machine's facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import console, new_app

__all__ = ["agent_app"]

agent_app = new_app(help="The device agent the controller ships.")


@agent_app.command("bundle")
def agent_bundle(
    out_dir: Annotated[Path, typer.Option(
        file_okay=False, help="Where to write the zipapp.")] = Path("."),
) -> None:
    """Build the agent zipapp (content-addressed by sha256)."""
    from orchestrator.bundle import build

    bundle = build(out_dir)
    console.print(f"{bundle.path} sha256={bundle.sha256}", highlight=False)


@agent_app.command("probe")
def agent_probe() -> None:
    """Print this machine's device facts, as the agent reports them."""
    from agents.probe import facts

    console.print_json(json.dumps(facts()))
