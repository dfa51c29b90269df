"""The study report's plots, drawn from ``report.build_report``'s dict with matplotlib.

One function per plot; each takes the report and returns a ``Drawn``: a
matplotlib ``Figure`` and caption notes that depend on the data (what was
left out and why). Every figure shows something: where the report holds
nothing for a plot, the figure says why in words, so a page never has a blank
image. ``render_plots`` draws them all to PNG bytes.

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas
directly, never through pyplot: no global figure registry, no GUI backend, and
nothing is left open between calls. Strings from the store (model ids, device
names, reasons) are drawn literally: ``text.parse_math`` is off while a figure
is built and saved, so a "$" in a model id is a dollar sign, not the start of
TeX that could fail to parse.

The report's fields that are newer than some stores (``routing``,
``memory``, a roofline's ``measured`` part) are read with ``.get`` and may be
absent or None: the plot then says they were not measured.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

from orchestrator.report import CONFIG_KEYS

__all__ = ["PLOTS", "Drawn", "PlotSpec", "RenderedPlot", "render_plots"]

MOE_COLOUR = "#d95f02"
DENSE_COLOUR = "#1b9e77"
NEUTRAL_COLOUR = "#7570b3"
AHEAD_COLOUR = "#1f5fa8"
WARN_COLOUR = "#c0392b"
#: Stacked memory parts: weights, KV cache, the rest of the process.
PART_COLOURS = ("#4c72b0", "#dd8452", "#8c8c8c")

#: rcParams while a figure is built and saved (see the module docstring).
RC: dict[RcKeyType, Any] = {"text.parse_math": False, "text.usetex": False, "font.size": 9,
                            "axes.titlesize": 10, "axes.titleweight": "bold",
                            "savefig.dpi": 100, "figure.dpi": 100}

WIDTH_IN = 10.0
ROW_IN = 0.5  # height per bar row
WRAP = 110    # characters per line of text drawn in a figure


@dataclass
class Drawn:
    """One drawn plot: its figure and any data-dependent caption notes."""

    figure: Figure
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlotSpec:
    """A plot of the report: its anchor id, title, fixed caption and drawing function."""

    key: str
    title: str
    caption: str
    draw: Callable[[dict[str, Any]], Drawn]


@dataclass(frozen=True)
class RenderedPlot:
    """A plot rendered to PNG, with its caption (fixed text, then the notes)."""

    key: str
    title: str
    caption: str
    notes: tuple[str, ...]
    png: bytes


# -- what the plots are drawn from ---------------------------------------------


def config_label(config: dict[str, Any]) -> str:
    """``prompt 16, gen 8, threads 1, ngl 0`` in short: ``p16 g8 t1 ngl0``."""
    return (f"p{config.get('prompt_tokens')} g{config.get('gen_tokens')} "
            f"t{config.get('threads')} ngl{config.get('gpu_layers')}"
            + (f" {config['variant']}" if config.get("variant") else ""))


@dataclass(frozen=True)
class Run:
    """One model on one device and configuration (a side of one or more comparisons)."""

    device: str
    config: dict[str, Any]
    side: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.side['model_id']}\n{self.device} · {config_label(self.config)}"

    @property
    def is_moe(self) -> bool:
        return self.side.get("arch") == "moe"


def runs(report: dict[str, Any]) -> list[Run]:
    """Each distinct (device, configuration, model) of the comparisons, in report order.

    A MoE compared with two baselines appears once; its stats are the same in
    both comparisons.
    """
    seen: dict[tuple[Any, ...], Run] = {}
    for c in report.get("comparisons") or []:
        config = c.get("config") or {}
        for side in (c["moe"], c["dense"]):
            key = (c["device"], *(config.get(k) for k in CONFIG_KEYS), config.get("variant"),
                   side["model_id"])
            seen.setdefault(key, Run(c["device"], config, side))
    return list(seen.values())


def comparison_label(c: dict[str, Any]) -> str:
    return (f"{c['moe']['model_id']} vs {c['dense']['model_id']}\n"
            f"{c['device']} · {config_label(c.get('config') or {})}")


def _wrap(text: str, width: int = WRAP) -> str:
    return "\n".join(textwrap.fill(part, width) for part in text.split("\n"))


def _colour(run: Run) -> str:
    return MOE_COLOUR if run.is_moe else DENSE_COLOUR


def _number(value: Any) -> float | None:
    """A finite number from the report, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


# -- figure helpers --------------------------------------------------------------


def _figure(rows: int, panels: int = 1, extra_in: float = 1.4) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` side-by-side axes sharing one bar row per ``rows``."""
    height = min(40.0, max(2.6, ROW_IN * rows + extra_in))
    fig = Figure(figsize=(WIDTH_IN, height), layout="constrained")
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def message_figure(title: str, message: str) -> Figure:
    """A figure that says ``message`` in words (the plot's data is not there)."""
    fig = Figure(figsize=(WIDTH_IN, 2.2), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, _wrap(message, 100), ha="center", va="center", transform=ax.transAxes,
            fontsize=10, wrap=False)
    return fig


def _rows(ax: Axes, labels: Sequence[str]) -> None:
    """Bar rows top to bottom, labelled."""
    ax.set_yticks(range(len(labels)), list(labels))
    ax.set_ylim(len(labels) - 0.5, -0.5)


def _xerr(median: float, low: Any, high: Any) -> tuple[float, float]:
    lo, hi = _number(low), _number(high)
    return (max(0.0, median - lo) if lo is not None else 0.0,
            max(0.0, hi - median) if hi is not None else 0.0)


def _annotate(ax: Axes, x: float, y: float, text: str, colour: str = "black") -> None:
    ax.annotate(text, (x, y), xytext=(4, 0), textcoords="offset points", va="center",
                fontsize=8, color=colour)


def _legend(fig: Figure, entries: Sequence[tuple[str, str, str | None]]) -> None:
    """A legend under the axes: (colour, label, hatch) per entry."""
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(facecolor=colour, hatch=hatch, edgecolor="white", label=label)
                        for colour, label, hatch in entries],
               loc="outside lower center", ncols=len(entries), fontsize=8)


ARCH_LEGEND = ((MOE_COLOUR, "MoE", None), (DENSE_COLOUR, "dense", None))


def _headroom(ax: Axes, top: float, factor: float = 1.3) -> None:
    """Room to the right of the longest bar for its text."""
    ax.set_xlim(0, top * factor if top > 0 else 1.0)


# -- 1. throughput ---------------------------------------------------------------


def throughput(report: dict[str, Any]) -> Drawn:
    """Decode (median, interval as error bar) and prefill tok/s per device and model."""
    found = runs(report)
    title = "Decode and prefill throughput"
    notes = [f"{r.side['model_id']} on {r.device} ({config_label(r.config)}): "
             f"{_unmeasured(r.side)}" for r in found if not r.side.get("decode")]
    if not any(r.side.get("decode") or _number(r.side.get("prefill_tps_median"))
               for r in found):
        return Drawn(message_figure(title, "no throughput measured: " + _why_unmeasured(found)),
                     notes)
    fig, (dec, pre) = _figure(len(found), 2)
    _rows(dec, [r.label for r in found])
    top_dec = top_pre = 0.0
    for y, run in enumerate(found):
        d = run.side.get("decode") or {}
        median = _number(d.get("median"))
        if median is None:
            _annotate(dec, 0, y, "not measured", WARN_COLOUR)
        else:
            err = _xerr(median, d.get("low"), d.get("high"))
            dec.barh(y, median, color=_colour(run), xerr=[[err[0]], [err[1]]], capsize=4)
            _annotate(dec, median + err[1], y, f"{median:,.1f} ({d.get('interval', '?')}, "
                                               f"n={d.get('n', '?')})")
            top_dec = max(top_dec, median + err[1])
        prefill = _number(run.side.get("prefill_tps_median"))
        if prefill is None:
            _annotate(pre, 0, y, "not measured", WARN_COLOUR)
        else:
            pre.barh(y, prefill, color=_colour(run))
            _annotate(pre, prefill, y, f"{prefill:,.1f}")
            top_pre = max(top_pre, prefill)
    dec.set_title("decode tok/s (median; error bar: its interval)")
    pre.set_title("prefill tok/s (median)")
    dec.set_xlabel("tokens per second")
    pre.set_xlabel("tokens per second")
    _headroom(dec, top_dec, 1.6)
    _headroom(pre, top_pre, 1.35)
    _legend(fig, ARCH_LEGEND)
    return Drawn(fig, notes)


def _unmeasured(side: dict[str, Any]) -> str:
    return f"not measured ({side.get('error') or side.get('job_state') or 'no repetitions'})"


def _why_unmeasured(found: Iterable[Run]) -> str:
    reasons = dict.fromkeys(f"{r.side['model_id']} on {r.device}: {_unmeasured(r.side)}"
                            for r in found)
    return "; ".join(reasons) or "no models in this sweep's comparisons"


# -- 2. MoE/dense decode ratio ---------------------------------------------------


def ratio(report: dict[str, Any]) -> Drawn:
    """The paired MoE/dense decode ratio per comparison, its interval and the verdict."""
    comparisons = list(report.get("comparisons") or [])
    title = "MoE/dense decode ratio"
    if not comparisons:
        return Drawn(message_figure(title, "no comparisons in this sweep"))
    fig, (ax,) = _figure(len(comparisons), 1, extra_in=1.6)
    ax.set_yticks(range(len(comparisons)), [comparison_label(c) for c in comparisons])
    ax.set_ylim(len(comparisons) - 0.35, -0.6)
    xs: list[float] = [1.0]
    for y, c in enumerate(comparisons):
        est = c.get("decode_estimate") or {}
        point = _number(est.get("ratio"))
        if point is None:
            continue
        err = _xerr(point, est.get("low"), est.get("high"))
        xs += [point - err[0], point + err[1]]
        colour = NEUTRAL_COLOUR
        if c.get("significant"):
            colour = WARN_COLOUR if point < 1 else AHEAD_COLOUR
        ax.errorbar(point, y, xerr=[[err[0]], [err[1]]], fmt="o", color=colour, capsize=5,
                    markersize=6)
        ax.annotate(f"{point:.3f} ({est.get('kind', '?')}, n={est.get('n', '?')})",
                    (point, y), xytext=(0, 7), textcoords="offset points", ha="center",
                    fontsize=8, color=colour)
    lo, hi = min(xs), max(xs)
    pad = max(0.02, (hi - lo) * 0.15)
    ax.set_xlim(lo - pad, hi + pad)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    for y, c in enumerate(comparisons):
        text = c.get("not_compared") or c.get("verdict") or "no verdict"
        ax.text(0.01, y + 0.28, _wrap(text, 120), transform=ax.get_yaxis_transform(),
                ha="left", va="center", fontsize=7.5, color="#333333")
    ax.set_xlabel("MoE / dense decode tok/s (geometric mean of per-round ratios); "
                  "dashed: parity")
    ax.set_title(title)
    return Drawn(fig)


# -- 3. energy -------------------------------------------------------------------


def energy(report: dict[str, Any]) -> Drawn:
    """Decode J/token per model where measured; otherwise the figure says it was not."""
    found = runs(report)
    measured = [r for r in found if _number(r.side.get("j_per_token_median")) is not None]
    title = "Decode energy per token"
    notes = [f"{device}: {note}" for device, note in _energy_notes(found).items()]
    if not measured:
        fig = message_figure(title, "energy not measured on these devices")
        return Drawn(fig, notes)
    fig, (ax,) = _figure(len(measured))
    _rows(ax, [r.label for r in measured])
    top = 0.0
    for y, run in enumerate(measured):
        value = float(run.side["j_per_token_median"])
        ax.barh(y, value, color=_colour(run))
        idle = _number(run.side.get("idle_power_w"))
        _annotate(ax, value, y, f"{value:.3g} J/token"
                  + (f" (idle {idle:.1f} W)" if idle is not None else ""))
        top = max(top, value)
    _headroom(ax, top, 1.5)
    ax.set_xlabel("joules per decoded token (median of counted repetitions)")
    ax.set_title(title)
    _legend(fig, ARCH_LEGEND)
    missing = [r for r in found if r not in measured]
    notes += [f"not measured: {r.side['model_id']} on {r.device} ({config_label(r.config)})"
              for r in missing if r.device not in _energy_notes(found)]
    return Drawn(fig, notes)


def _energy_notes(found: Iterable[Run]) -> dict[str, str]:
    out: dict[str, str] = {}
    for run in found:
        note = run.side.get("energy_note")
        if note and run.device not in out:
            out[run.device] = str(note)
    return out


# -- 4. memory -------------------------------------------------------------------


def _memory_of(run: Run, facts: dict[str, Any]) -> dict[str, Any] | None:
    """Peak, its parts where known and the device's memory, from ``memory`` or the stats."""
    m = run.side.get("memory") or {}
    peak = _number(m.get("peak_bytes")) or _number(run.side.get("peak_rss_bytes"))
    if peak is None:
        return None
    device = (_number(m.get("device_bytes")) or _number(m.get("ram_total_bytes"))
              or _number((facts.get(run.device) or {}).get("ram_total_bytes")))
    fraction = _number(m.get("fraction"))
    if fraction is None:
        fraction = _number(m.get("fraction_of_ram"))
    if fraction is None and device:
        fraction = peak / device
    parts = [_number(m.get(k)) for k in ("weights_bytes", "kv_bytes", "runtime_bytes")]
    return {"peak": peak, "device": device, "fraction": fraction,
            "parts": parts if all(p is not None for p in parts) else None,
            "scope": m.get("peak_scope") or "process RSS",
            "device_scope": m.get("device_scope") or "RAM",
            "warning": m.get("warning"), "note": m.get("note")}


def _unit(largest: float) -> tuple[float, str]:
    return (2**30, "GiB") if largest >= 2**30 else (2**20, "MiB")


def memory(report: dict[str, Any]) -> Drawn:
    """Peak memory per model, stacked weights/KV/runtime where known, against the device's."""
    found = runs(report)
    facts = report.get("device_facts") or {}
    rows = [(r, m) for r in found if (m := _memory_of(r, facts)) is not None]
    title = "Peak memory against the device's memory"
    if not rows:
        return Drawn(message_figure(title, "peak memory not measured"))
    fig, (ax, share) = _figure(len(rows), 2)
    _rows(ax, [r.label for r, _ in rows])
    scale, unit = _unit(max(m["peak"] for _, m in rows))
    notes: list[str] = []
    top = 0.0
    for y, (run, m) in enumerate(rows):
        if m["parts"]:
            left = 0.0
            for part, colour in zip(m["parts"], PART_COLOURS, strict=True):
                ax.barh(y, part / scale, left=left, color=colour)
                left += part / scale
            ax.plot([m["peak"] / scale], [y], marker="|", color="black", markersize=18,
                    markeredgewidth=2)
            top = max(top, left, m["peak"] / scale)
        else:
            ax.barh(y, m["peak"] / scale, color=_colour(run), hatch="//", edgecolor="white")
            top = max(top, m["peak"] / scale)
        _annotate(ax, max(m["peak"] / scale, sum(m["parts"] or [0.0]) / scale), y,
                  f"peak {m['peak'] / scale:,.1f} {unit} ({m['scope']})")
        fraction = m["fraction"]
        if fraction is not None:
            colour = WARN_COLOUR if m["warning"] else _colour(run)
            share.barh(y, fraction * 100, color=colour)
            counted = (f"{fraction * m['device'] / 2**30:.2f} GiB = {fraction * 100:.2f}% of "
                       f"{m['device'] / 2**30:.1f} GiB {m['device_scope']}"
                       if m["device"] else f"{fraction * 100:.2f}%")
            _annotate(share, fraction * 100, y, counted + (" WARNING" if m["warning"] else ""),
                      colour)
        else:
            _annotate(share, 0, y, "device memory unknown", WARN_COLOUR)
        for key in ("warning", "note"):
            if m[key]:
                notes.append(f"{run.side['model_id']} on {run.device}: {m[key]}")
    _headroom(ax, top, 1.7)
    share.set_xlim(0, 100 * 1.45)
    share.axvline(100, color=WARN_COLOUR, linestyle="--", linewidth=1)
    share.axvline(90, color=WARN_COLOUR, linestyle=":", linewidth=1)
    ax.set_xlabel(unit)
    share.set_xlabel("% of the device's memory (dotted: 90%, the warning line)")
    ax.set_title("weights + KV cache + runtime (|: the peak)")
    share.set_title("peak against the device's memory")
    entries: list[tuple[str, str, str | None]] = []
    if any(m["parts"] for _, m in rows):
        entries += [(c, n, None) for c, n in
                    zip(PART_COLOURS, ("weights", "KV cache", "runtime"), strict=True)]
    if not all(m["parts"] for _, m in rows):
        entries += [(MOE_COLOUR, "MoE peak only (no breakdown)", "//"),
                    (DENSE_COLOUR, "dense peak only", "//")]
    _legend(fig, entries)
    return Drawn(fig, notes)


# -- 5. roofline -----------------------------------------------------------------


def _roofline_rows(report: dict[str, Any]) -> tuple[list[tuple[str, float, float, bool]],
                                                     list[str]]:
    """(label, fraction, bound tok/s, is MoE) per model and bandwidth, and reasons for none."""
    rows: dict[tuple[Any, ...], tuple[str, float, float, bool]] = {}
    reasons: dict[str, None] = {}
    for c in report.get("comparisons") or []:
        r = c.get("roofline") or {}
        if not r:
            reasons["no roofline in the report (a report from before it)"] = None
            continue
        if r.get("reason"):
            reasons[f"{c['device']}: {r['reason']}"] = None
            continue
        arch = {c["moe"]["model_id"]: True, c["dense"]["model_id"]: False}
        sources = []
        if r.get("chip") and r.get("models"):
            sources.append((f"{r['chip']} vendor peak {r.get('bandwidth_gbps', 0):g} GB/s",
                            r["models"]))
        measured = r.get("measured") or {}
        if measured.get("models"):
            sources.append((f"measured copy {measured.get('bandwidth_gbps', 0):.1f} GB/s",
                            measured["models"]))
        for source, models in sources:
            for model_id, m in models.items():
                fraction, bound = _number(m.get("fraction")), _number(m.get("bound_tps"))
                if fraction is None or bound is None:
                    reasons[f"{model_id} on {c['device']}: "
                            f"{m.get('reason') or 'decode not measured'}"] = None
                    continue
                key = (c["device"], config_label(c.get("config") or {}), model_id, source)
                rows.setdefault(key, (f"{model_id}\n{c['device']} · {key[1]} · {source}",
                                      fraction, bound, arch.get(model_id, False)))
    return list(rows.values()), list(reasons)


def roofline(report: dict[str, Any]) -> Drawn:
    """Achieved decode tok/s as a share of each model's roofline bound."""
    rows, reasons = _roofline_rows(report)
    title = "Decode against the memory-bandwidth roofline"
    if not rows:
        return Drawn(message_figure(title, "no roofline bound: " + ("; ".join(reasons)
                                                                    or "no comparisons")))
    fig, (ax,) = _figure(len(rows))
    _rows(ax, [label for label, *_ in rows])
    top = 100.0
    for y, (_, fraction, bound, is_moe) in enumerate(rows):
        ax.barh(y, fraction * 100, color=MOE_COLOUR if is_moe else DENSE_COLOUR)
        _annotate(ax, fraction * 100, y,
                  f"{fraction * 100:.1f}%: {fraction * bound:,.0f} of {bound:,.0f} tok/s")
        top = max(top, fraction * 100)
    ax.set_xlim(0, top * 1.45)
    ax.axvline(100, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("% of the decode bound (bandwidth / bytes read per token); dashed: the bound")
    ax.set_title(title)
    _legend(fig, ARCH_LEGEND)
    return Drawn(fig, reasons)


# -- 6. decode against context ---------------------------------------------------


def context(report: dict[str, Any]) -> Drawn:
    """Decode tok/s against the prompt length, one line per model and device."""
    lines: dict[tuple[Any, ...], list[tuple[int, float, tuple[float, float], bool]]] = {}
    for run in runs(report):
        d = run.side.get("decode") or {}
        median, prompt = _number(d.get("median")), _number(run.config.get("prompt_tokens"))
        if median is None or prompt is None:
            continue
        key = (run.side["model_id"], run.device, run.config.get("gen_tokens"),
               run.config.get("threads"), run.config.get("gpu_layers"),
               run.config.get("variant"))
        lines.setdefault(key, []).append((int(prompt), median,
                                          _xerr(median, d.get("low"), d.get("high")),
                                          run.is_moe))
    title = "Decode throughput against context length"
    if not lines:
        return Drawn(message_figure(title, "decode not measured in this sweep"))
    fig = Figure(figsize=(WIDTH_IN, 5.0 + 0.22 * len(lines)), layout="constrained")
    ax = fig.subplots()
    markers = "osD^v<>ph*"
    prompts: set[int] = set()
    for i, (key, points) in enumerate(sorted(lines.items(), key=lambda kv: str(kv[0]))):
        points.sort()
        prompts.update(p[0] for p in points)
        model_id, device, gen, threads, ngl, variant = key
        ax.errorbar([p[0] for p in points], [p[1] for p in points],
                    yerr=[[p[2][0] for p in points], [p[2][1] for p in points]],
                    marker=markers[i % len(markers)], capsize=3,
                    linestyle="-" if points[0][3] else "--",
                    label=f"{model_id} · {device} · g{gen} t{threads} ngl{ngl}"
                    + (f" {variant}" if variant else ""))
    ax.set_xlabel("prompt tokens (context before decoding)")
    ax.set_ylabel("decode tok/s (median; error bar: its interval)")
    ax.set_ylim(bottom=0)
    ax.set_xticks(sorted(prompts))
    ax.set_title(title + ("" if len(prompts) > 1 else
                          " (one prompt length in this sweep: points, no trend)"))
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8, ncols=2)
    return Drawn(fig)


# -- 7. routing share ------------------------------------------------------------


def routing(report: dict[str, Any]) -> Drawn:
    """Routing's share of MoE-block time per MoE model and device, with its interval."""
    rows: list[tuple[Run, dict[str, Any]]] = []
    reasons: dict[str, None] = {}
    for run in runs(report):
        if not run.is_moe:
            continue
        r = run.side.get("routing")
        where = f"{run.side['model_id']} on {run.device} ({config_label(run.config)})"
        if not r:
            reasons[f"{where}: no profiling pass recorded (routing_profile off, "
                    "or a result from before it)"] = None
        elif r.get("unmeasured"):
            reasons[f"{where}: {r['unmeasured']}"] = None
        elif _number(r.get("share")) is None:
            reasons[f"{where}: no share in the profiling summary"] = None
        else:
            rows.append((run, r))
    title = "Routing share of MoE-block time"
    if not rows:
        why = "; ".join(reasons) or "no MoE model in this sweep's comparisons"
        return Drawn(message_figure(title, f"routing share not measured: {why}"))
    fig, (ax,) = _figure(len(rows))
    _rows(ax, [run.label for run, _ in rows])
    top = 0.0
    for y, (_, r) in enumerate(rows):
        share = float(r["share"]) * 100
        lo, hi = _number(r.get("low")), _number(r.get("high"))
        err = _xerr(share, None if lo is None else lo * 100, None if hi is None else hi * 100)
        ax.barh(y, share, color=MOE_COLOUR, xerr=[[err[0]], [err[1]]], capsize=4)
        interval = ("" if lo is None or hi is None
                    else f", {r.get('kind', '?')} {lo * 100:.1f}–{hi * 100:.1f}%")
        _annotate(ax, share + err[1], y, f"{share:.1f}%{interval}, n={r.get('n', '?')}")
        top = max(top, share + err[1])
    _headroom(ax, top, 1.8)
    ax.set_xlabel("% of the MoE block's time spent routing (gate, top-k, weights); "
                  "the rest is the experts")
    ax.set_title(title)
    return Drawn(fig, list(reasons))


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("throughput", "Throughput",
             "Decode and prefill tokens per second of each model on each device and "
             "configuration (p: prompt tokens, g: generated tokens, t: threads, ngl: GPU "
             "layers). Bars are medians of the counted repetitions; decode's error bar is "
             "its 95% CI (order statistics, 6 or more repetitions) or, below that, the range.",
             throughput),
    PlotSpec("ratio", "MoE/dense decode ratio",
             "The paired MoE/dense decode ratio of each comparison: the geometric mean of "
             "per-round ratios, with a t-interval on their logarithms (95% CI, 5 rounds or "
             "more) or the range as error bar. Below 1 the MoE is slower. Under each point, "
             "the verdict: \"behind\" or \"ahead\" only when the 95% CI excludes 1.",
             ratio),
    PlotSpec("energy", "Energy per token",
             "Decode energy per token (median of the counted repetitions' decode windows), "
             "where the device's telemetry measured energy.", energy),
    PlotSpec("memory", "Peak memory",
             "Left: each run's measured peak (the process's RSS; on an offloaded run the GPU's "
             "used memory) split into weights (the model file), KV cache (bytes per position x "
             "positions filled) and the rest. Right: the peak that meets the device's ceiling "
             "(system-wide where telemetry measured it, else the process's) as a share of the "
             "device's memory. Without a breakdown, the peak alone.", memory),
    PlotSpec("roofline", "Roofline",
             "Achieved decode throughput as a share of its memory-bandwidth bound (bandwidth "
             "/ bytes one decode step reads: the weights it touches plus the KV cache at the "
             "run's mean context), against the vendor's peak bandwidth and the agent's measured "
             "copy bandwidth where known.", roofline),
    PlotSpec("context", "Decode against context",
             "Decode tokens per second against the prompt length, one line per model, device "
             "and remaining settings (solid: MoE, dashed: dense). Only a sweep with several "
             "prompt lengths shows a trend.", context),
    PlotSpec("routing", "Routing share",
             "The share of each MoE block's time spent routing (from the block's input norm to "
             "its last routing tensor) rather than in the experts, from the profiling pass "
             "after the counted repetitions, with its interval over the profiled tokens.",
             routing),
)


def render_png(spec: PlotSpec, report: dict[str, Any]) -> tuple[bytes, list[str]]:
    """One plot as PNG bytes and its notes."""
    with matplotlib.rc_context(RC):
        drawn = spec.draw(report)
        buffer = io.BytesIO()
        drawn.figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue(), drawn.notes


def render_plots(report: dict[str, Any]) -> list[RenderedPlot]:
    """Every plot of ``PLOTS`` rendered to PNG, in order."""
    out = []
    for spec in PLOTS:
        png, notes = render_png(spec, report)
        out.append(RenderedPlot(spec.key, spec.title, spec.caption, tuple(notes), png))
    return out
