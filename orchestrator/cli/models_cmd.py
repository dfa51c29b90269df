"""``edgefarm models``: list presets and write synthetic GGUF models with real models' shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.app import console, err_console, new_app
from orchestrator.errors import ConfigError

__all__ = ["models_app"]

models_app = new_app(help="Synthetic GGUF models with real models' shapes.")


@models_app.command("presets")
def models_presets() -> None:
    """List the presets `models synth` knows, with their parameter counts."""
    from agents.models import presets

    table = Table(title="synthetic model presets", title_justify="left")
    for col in ("preset", "arch", "layers", "hidden", "experts", "params total", "params active"):
        table.add_column(col)
    for name, shape in presets.PRESETS.items():
        total, active = presets.param_counts(shape)
        experts = f"{shape.n_expert} (top-{shape.n_expert_used})" if shape.n_expert else "-"
        table.add_row(name, shape.arch, str(shape.n_layer), str(shape.n_embd), experts,
                      f"{total:,}", f"{active:,}")
    console.print(table)


@models_app.command("synth")
def models_synth(
    preset: Annotated[str, typer.Argument(help="Preset name (see `edgefarm models presets`).")],
    quant: Annotated[str, typer.Option(help="Weight type: F16, Q8_0 or Q4_0.")] = "Q4_0",
    out: Annotated[Path | None, typer.Option(
        dir_okay=False, help="Output GGUF file (default: ./<preset>-<quant>.gguf).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random-weight GGUF with a real model's published shapes."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from agents.models.synth import KNOWN_PRESETS, QUANTS, synthesize

    if preset not in KNOWN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (known: {', '.join(KNOWN_PRESETS)})",
                          key_path="PRESET")
    if quant not in QUANTS:
        raise ConfigError(f"unknown quant {quant!r} (known: {', '.join(QUANTS)})",
                          key_path="--quant")
    target = out or Path(f"{preset}-{quant}.gguf")
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=err_console) as bars:
        task = bars.add_task(f"writing {target}", total=None)

        def progress(done: int, total: int) -> None:
            bars.update(task, completed=done, total=total)

        info = synthesize(preset, quant, str(target), seed=seed, progress=progress)
    verified = _verify_gguf(target)
    console.print(f"wrote {target}: {info['size_bytes'] / 2**20:,.1f} MiB, "
                  f"{info['params_total']:,} params ({info['params_active']:,} active), "
                  f"{verified} tensors checked with gguf-py, {info['seconds']:.1f} s")


def _verify_gguf(path: Path) -> int:
    """Read the file back with the reference reader (gguf-py); return its tensor count."""
    import gguf

    return len(gguf.GGUFReader(str(path)).tensors)
