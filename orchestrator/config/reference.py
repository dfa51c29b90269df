"""Render the configuration models' fields as Markdown reference tables.

The Field descriptions in ``inventory.py`` and ``sweep.py`` are the single
source of truth for what each key means; ``docs/inventory.md`` and
``docs/sweeps.md`` embed the tables produced here between marker comments,
and a test fails when they drift apart. Regenerate with
``python -m orchestrator.config.reference --write``.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from orchestrator.config import inventory as inv
from orchestrator.config import sweep as sw

#: Model -> (doc file, marker name). The marker pair in the doc is
#: ``<!-- BEGIN GENERATED: name -->`` ... ``<!-- END GENERATED: name -->``.
DOC_TABLES: tuple[tuple[type[BaseModel], str, str], ...] = (
    (inv.Inventory, "docs/inventory.md", "inventory"),
    (inv.Device, "docs/inventory.md", "device"),
    (inv.DeviceExporter, "docs/inventory.md", "exporter"),
    (sw.Sweep, "docs/sweeps.md", "sweep"),
    (sw.ModelSpec, "docs/sweeps.md", "model"),
    (sw.ModelSource, "docs/sweeps.md", "source"),
    (sw.Pair, "docs/sweeps.md", "pair"),
    (sw.Matrix, "docs/sweeps.md", "matrix"),
    (sw.TorchSettings, "docs/sweeps.md", "torch"),
    (inv.DeviceSelector, "docs/sweeps.md", "selector"),
)

#: Validators of constrained strings -> the type name the docs explain them by.
_VALIDATOR_LABELS: dict[Any, str] = {
    inv.check_name: "name",
    inv.check_path: "path",
    inv._check_host: "host",
    inv._check_user: "user name",
    inv._check_proxy_jump: "jump spec",
    inv._check_env_name: "env var name",
    inv._check_command: "command",
}


def _type_label(annotation: Any) -> str:
    """A short human description of a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        funcs = [getattr(m, "func", None) for m in args[1:]]
        for func in funcs:
            if func in _VALIDATOR_LABELS:
                return _VALIDATOR_LABELS[func]
        inner = _type_label(args[0])
        scalar_ok = inv.as_list in funcs
        if scalar_ok and inner.startswith("list of "):
            return f"{inner[len('list of '):]} or list"
        return inner
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Union or origin is types.UnionType:
        labels = [_type_label(a) for a in args if a is not type(None)]
        suffix = " or null" if type(None) in args else ""
        return " or ".join(labels) + suffix
    if origin is list:
        return f"list of {_type_label(args[0])}"
    if origin is dict:
        return f"mapping {_type_label(args[0])} → {_type_label(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping ({annotation.__name__})"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _constraints(info: FieldInfo) -> str:
    bits: list[str] = []
    for meta in info.metadata:
        for attr, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                bits.append(f"{symbol} {value}")
    return f" ({', '.join(bits)})" if bits else ""


def _default_label(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is None or value is PydanticUndefined:
        return "null"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`" if not isinstance(value, dict) or value else "`{}`"


def field_reference(model_cls: type[BaseModel]) -> str:
    """A Markdown table of ``model_cls``'s keys: type, default and description."""
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for name, info in model_cls.model_fields.items():
        annotation: Any = info.annotation
        if info.metadata:  # pydantic moves a field's own Annotated extras here
            annotation = typing.Annotated[(annotation, *info.metadata)]
        type_label = _type_label(annotation) + _constraints(info)
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{name}` | {type_label} | {_default_label(info)} | {description} |")
    return "\n".join(lines) + "\n"


def _marker_re(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED: {re.escape(name)} -->\n)(.*?)(<!-- END GENERATED: "
        rf"{re.escape(name)} -->)",
        re.DOTALL,
    )


def _replacer(table: str) -> Callable[[re.Match[str]], str]:
    """A ``re.sub`` callback that puts ``table`` between a generated table's markers."""

    def replace(match: re.Match[str]) -> str:
        return match.group(1) + table + match.group(3)

    return replace


def render_doc(text: str, doc: str) -> str:
    """``text`` (the content of ``doc``) with every generated table brought up to date."""
    for model_cls, doc_path, name in DOC_TABLES:
        if doc_path != doc:
            continue
        pattern = _marker_re(name)
        if not pattern.search(text):
            raise ValueError(f"{doc}: missing markers for generated table {name!r}")
        table = field_reference(model_cls)
        text = pattern.sub(_replacer(table), text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Check (default) or rewrite (``--write``) the generated tables in the docs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update the docs in place")
    parser.add_argument("--root", default=".", help="repository root")
    args = parser.parse_args(argv)
    stale = []
    for doc in sorted({d for _, d, _ in DOC_TABLES}):
        path = Path(args.root) / doc
        text = path.read_text(encoding="utf-8")
        updated = render_doc(text, doc)
        if updated != text:
            if args.write:
                path.write_text(updated, encoding="utf-8")
            else:
                stale.append(doc)
    for doc in stale:
        print(f"{doc}: generated tables are stale; run with --write", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
