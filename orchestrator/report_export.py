"""Report files: a sweep's counted repetitions as CSV, and writing report files all or nothing.

``repetitions_csv`` writes one row per counted repetition (``Store.counted_repetitions``:
not a warm-up, from its job's successful attempt), the rows every median,
interval and ratio of the report is computed from, so they can be re-analysed
elsewhere. Each row carries its job's settings and the provenance the job's
result recorded for that model, flattened into ``prov_*`` columns
(``prov_unknown_<key>`` holds why a value is unknown).

Only CSV: Parquet would need pyarrow, which edgefarm does not depend on.

``write_files`` puts a report's files into an output directory without ever
leaving one half-written: everything is written into a temporary directory
beside it first, then renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import EdgefarmError
from orchestrator.report import PROVENANCE_ORDER, model_result
from orchestrator.store import Store

__all__ = ["BASE_COLUMNS", "BODY_COLUMNS", "CSV_NAME", "HTML_NAME", "ReportOutputError",
           "repetition_rows", "repetitions_csv", "write_files"]

CSV_NAME = "repetitions.csv"
HTML_NAME = "index.html"

#: Columns every row has, from the repetitions and jobs tables.
BASE_COLUMNS = ("sweep_id", "device", "job_key", "attempt", "model_id", "arch", "round",
                "index", "prompt_tokens", "gen_tokens", "threads", "gpu_layers", "prefill_s",
                "decode_s", "prefill_tps", "decode_tps", "ttft_s", "peak_rss_bytes",
                "disturbed")
#: Columns from the repetition's recorded event (empty where the device did not measure them).
BODY_COLUMNS = ("j_per_token", "energy_prefill_j", "energy_decode_j", "energy_decode_net_j",
                "avg_power_w", "peak_power_w", "idle_power_w", "energy_source",
                "peak_mem_bytes", "peak_mem_scope", "other_load_share", "steal_share",
                "synthetic")
PROVENANCE_PREFIX = "prov_"


class ReportOutputError(EdgefarmError, ValueError):
    """The report's output options or directory are unusable (exit 2: nothing was written)."""

    exit_code = 2


def _flatten(value: Any, name: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(inner, f"{name}_{key}", out)
    else:
        out[name] = value


def _model_columns(result_json: str | None, model_id: str) -> dict[str, Any]:
    """The ``prov_*`` and ``torch_*`` columns of ``model_id`` from a stored job result.

    Every repetition of a job shares them, so ``repetition_rows`` reads each
    job's result once per model.
    """
    try:
        result = json.loads(result_json) if result_json else {}
    except ValueError:
        result = {}
    part = model_result(result, model_id) if isinstance(result, dict) else {}
    flat: dict[str, Any] = {}
    provenance = part.get("provenance")
    _flatten(provenance if isinstance(provenance, dict) else {}, "prov", flat)
    flat.update(_torch_experts(part.get("torch")))
    return flat


def _torch_experts(facts: Any) -> dict[str, Any]:
    """Backend torch: the MoE experts implementation in force, and why not the one asked.

    Not a provenance key (a MoE and its dense baseline differ in it by
    nature), yet it tells torch rows of one model apart.
    """
    if not isinstance(facts, dict) or not facts.get("experts"):
        return {}
    return {"torch_experts": facts.get("experts"),
            "torch_experts_fallback": facts.get("experts_fallback"),
            "torch_prefill_experts": facts.get("prefill_experts")}


def repetition_rows(store: Store, sweep_id: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The column names and one dict per counted repetition of ``sweep_id``, in job order."""
    rows: list[dict[str, Any]] = []
    provenance_keys: dict[str, None] = {}
    columns: dict[tuple[str, str], dict[str, Any]] = {}  # (job, model) -> its result's columns
    for rep in store.counted_repetitions(sweep_id):
        spec = json.loads(rep["spec_json"])
        body = json.loads(rep["body"]) if rep["body"] else {}
        row: dict[str, Any] = {
            "sweep_id": rep["sweep_id"], "device": rep["device"], "job_key": rep["job_key"],
            "attempt": rep["attempt"], "model_id": rep["model_id"], "arch": rep["arch"],
            "round": rep["round"], "index": rep["idx"],
            "prompt_tokens": rep["prompt_tokens"], "gen_tokens": rep["gen_tokens"],
            "threads": spec.get("threads"), "gpu_layers": spec.get("gpu_layers"),
            **{k: rep[k] for k in ("prefill_s", "decode_s", "prefill_tps", "decode_tps",
                                   "ttft_s", "peak_rss_bytes", "disturbed")},
            **{k: body.get(k) for k in BODY_COLUMNS}}
        key = (rep["job_key"], rep["model_id"])
        if key not in columns:
            columns[key] = _model_columns(rep["result_json"], rep["model_id"])
        flat = columns[key]
        provenance_keys.update(dict.fromkeys(flat))
        rows.append(row | flat)
    known = [f"{PROVENANCE_PREFIX}{k}" for k in PROVENANCE_ORDER]
    prov = [k for k in known if k in provenance_keys]
    prov += sorted(k for k in provenance_keys if k not in known)
    return [*BASE_COLUMNS, *BODY_COLUMNS, *prov], rows


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value


def repetitions_csv(store: Store, sweep_id: str) -> str:
    """The counted repetitions as CSV text (a header row, then one row each)."""
    columns, rows = repetition_rows(store, sweep_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def check_out_dir(out: Path) -> None:
    """Refuse an output path that exists and is not a directory, before any work is done."""
    if out.exists() and not out.is_dir():
        raise ReportOutputError(f"--out {out} exists and is not a directory")


def write_files(out: Path, files: Mapping[str, bytes]) -> list[Path]:
    """Write ``files`` (name -> content) into directory ``out``; all of them or none.

    They are written into a temporary directory beside ``out`` first. A new
    ``out`` is that directory renamed; into an existing one each file is
    renamed over its old version, so a reader sees the old file or the new
    one, never part of one. Other files in ``out`` are left alone. On any
    error the temporary directory is removed and ``ReportOutputError`` says why.
    """
    check_out_dir(out)
    out = out.absolute()
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise ReportOutputError(f"cannot write into {out.parent}: "
                                f"{exc.strerror or exc}") from None
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if out.exists():
            for name in files:
                os.replace(tmp / name, out / name)
            tmp.rmdir()
        else:
            tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReportOutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    return [out / name for name in files]
