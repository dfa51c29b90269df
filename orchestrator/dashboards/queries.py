"""Every PromQL expression the dashboards run, ready to run against a real Prometheus.

No Grafana server can run where the tests run, so the dashboards are checked
by running their queries on Prometheus directly: after a real sweep each
``PanelQuery`` must return at least one series carrying ``labels`` unless it
``may_be_empty`` (its metric is absent when not measured; ``reason`` says why).

Grafana fills template variables before it sends a query; ``substitute`` does
the same with the values "All" would give (``.*``) and fixed windows for the
interval variables, so ``expr`` is plain PromQL::

    >>> substitute('rate(m{device=~"$device"}[$__rate_interval])')
    'rate(m{device=~".*"}[5m])'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.dashboards import dashboard_specs

__all__ = ["DEFAULT_VALUES", "PanelQuery", "panel_queries", "substitute"]

#: What each variable becomes outside Grafana. Multi-value variables match
#: everything, as "All" does; ``$__rate_interval`` is wide enough to hold
#: several scrapes at any sensible scrape interval.
DEFAULT_VALUES: dict[str, str] = {
    "sweep": ".*",
    "device": ".*",
    "pair": ".*",
    "config": ".*",
    "__rate_interval": "5m",
    "__interval": "30s",
    "__range": "1h",
}

# $name, ${name} and ${name:format}. Names Grafana does not know, such as the
# "$1" of label_replace, are left alone, as Grafana leaves them.
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.S)


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel (or one template variable) of a dashboard."""

    dashboard_uid: str
    panel_title: str
    ref_id: str
    expr: str
    template: str
    labels: tuple[str, ...]
    may_be_empty: bool = False
    reason: str = ""


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """``expr`` with Grafana's variables replaced by ``values`` over ``DEFAULT_VALUES``."""
    merged = {**DEFAULT_VALUES, **(values or {})}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return merged.get(name, match.group(0))

    return _VARIABLE.sub(replace, expr)


def panel_queries(values: Mapping[str, str] | None = None) -> list[PanelQuery]:
    """Every panel target and variable query of every dashboard, variables substituted.

    A variable's ``label_values(selector, label)`` becomes
    ``count by (label) (selector)``: the same series, as PromQL, so an empty
    variable drop-down is caught like an empty panel.
    """
    out: list[PanelQuery] = []
    for spec in dashboard_specs().values():
        for var in spec.variables:
            match = _LABEL_VALUES.match(var.definition)
            if match is None:  # pragma: no cover - every Variable builds this shape
                raise ValueError(f"{spec.uid}: cannot read variable {var.definition!r}")
            template = f"count by ({match['label']}) ({match['selector']})"
            out.append(PanelQuery(spec.uid, f"variable ${var.name}", "var", substitute(
                template, values), template, (match["label"],)))
        for panel in spec.panels():
            for i, query in enumerate(panel.queries):
                out.append(PanelQuery(
                    dashboard_uid=spec.uid,
                    panel_title=panel.title,
                    ref_id=chr(ord("A") + i),
                    expr=substitute(query.expr, values),
                    template=query.expr,
                    labels=query.labels,
                    may_be_empty=bool(query.may_be_empty),
                    reason=query.may_be_empty,
                ))
    return out
