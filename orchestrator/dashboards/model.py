"""Small, typed building blocks for Grafana dashboards, rendered to the JSON model.

A dashboard is written as data (``Panel`` and ``Query`` specs laid out in rows)
and rendered by ``render_dashboard``. The specs carry what the JSON cannot: the
label names a query's series must have and why a query may legitimately return
nothing. ``orchestrator.dashboards.queries`` reads those from the same specs, so
the dashboards and the checks run against a real Prometheus can never disagree.

Layout is computed, not written by hand: each row of panels is placed left to
right and the next row starts below the tallest panel, so panels cannot overlap
and ids are unique by construction (the tests check both anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DATASOURCE",
    "DATASOURCE_TYPE",
    "DATASOURCE_UID",
    "GRID_COLUMNS",
    "SCHEMA_VERSION",
    "SCRAPE_COLUMNS",
    "STATE_COLOURS",
    "SWEEP_ANNOTATION_TAGS",
    "Dashboard",
    "Panel",
    "Query",
    "Row",
    "Variable",
    "render_dashboard",
]

#: The classic dashboard JSON model as current Grafana (12.x) saves it. Older
#: Grafana migrates only forward and may not read it, which is why
#: ``grafana_push`` refuses servers older than 11.
SCHEMA_VERSION = 42

#: The datasource compose provisioning and ``edgefarm dashboards push`` create.
#: The dashboards do not hard-wire it: every panel and variable uses the
#: ``$datasource`` variable (any Prometheus datasource), which opens on this
#: uid where it exists.
DATASOURCE_UID = "edgefarm-prometheus"
DATASOURCE_TYPE = "prometheus"
#: What panels, targets and query variables reference: the datasource variable.
DATASOURCE: dict[str, str] = {"type": DATASOURCE_TYPE, "uid": "${datasource}"}
#: Tags of the sweep annotations ``grafana_push.push_annotations`` writes; every
#: dashboard shows annotations carrying them.
SWEEP_ANNOTATION_TAGS = ("edgefarm", "sweep")

GRID_COLUMNS = 24

#: Columns a table of an instant query shows that say nothing about edgefarm:
#: the sample time and value, the metric name, and the labels Prometheus adds
#: when it scrapes (job, instance).
SCRAPE_COLUMNS = ("Time", "Value", "__name__", "instance", "job")

#: Series colours by meaning rather than by palette position, so "failed" is red
#: on every dashboard.
STATE_COLOURS = {
    "done": "green",
    "running": "blue",
    "pending": "text",
    "failed": "red",
    "cancelled": "orange",
}


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel.

    ``labels`` are the label names every returned series must carry (checked
    against a real Prometheus); ``may_be_empty`` is the reason an empty answer
    is correct (the metric is absent when not measured), or "" when an empty
    answer after a sweep means something is broken.
    """

    expr: str
    legend: str = ""
    labels: tuple[str, ...] = ()
    instant: bool = False
    table: bool = False
    may_be_empty: str = ""


@dataclass(frozen=True)
class Panel:
    """A visualisation: its kind, size, unit and queries."""

    title: str
    kind: str
    queries: tuple[Query, ...]
    w: int = 12
    h: int = 8
    unit: str = "none"
    description: str = ""
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    thresholds: tuple[tuple[str, float | None], ...] = (("green", None),)
    mappings: tuple[tuple[str, str, str], ...] = ()
    colour_by_name: dict[str, str] = field(default_factory=dict)
    stack: bool = False
    step: bool = False
    hide_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    """A full-width collapsible header that groups the panels below it."""

    title: str


@dataclass(frozen=True)
class Variable:
    """A query variable filled from ``label_values(selector, label)``.

    ``multi`` variables also offer "All", which Grafana expands to ``.*`` so
    every expression can match with ``=~``.
    """

    name: str
    label: str
    metric_selector: str
    label_name: str
    multi: bool = True
    description: str = ""
    #: Grafana's option order: 1 alphabetical, 2 alphabetical descending. With
    #: no saved value a variable opens on its first option, so 2 makes a sweep
    #: variable (ids start with the date and time) open on the newest sweep.
    sort: int = 1

    @property
    def definition(self) -> str:
        return f"label_values({self.metric_selector}, {self.label_name})"


@dataclass(frozen=True)
class Dashboard:
    """Everything needed to render one dashboard and to derive its checks."""

    uid: str
    title: str
    description: str
    layout: tuple[Row | tuple[Panel, ...], ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = ("edgefarm",)
    refresh: str = "10s"
    time_from: str = "now-1h"

    def panels(self) -> list[Panel]:
        """Every panel in layout order (rows left out)."""
        out: list[Panel] = []
        for item in self.layout:
            if isinstance(item, tuple):
                out.extend(item)
        return out


# -- rendering ---------------------------------------------------------------


def _target(query: Query, ref_id: str) -> dict[str, Any]:
    return {
        "datasource": dict(DATASOURCE),
        "editorMode": "code",
        "expr": query.expr,
        "format": "table" if query.table else "time_series",
        "instant": query.instant,
        "legendFormat": query.legend or "__auto",
        "range": not query.instant,
        "refId": ref_id,
    }


def _thresholds(panel: Panel) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": colour, "value": value} for colour, value in panel.thresholds],
    }


def _mappings(panel: Panel) -> list[dict[str, Any]]:
    if not panel.mappings:
        return []
    options = {
        value: {"color": colour, "index": i, "text": text}
        for i, (value, text, colour) in enumerate(panel.mappings)
    }
    return [{"options": options, "type": "value"}]


def _overrides(panel: Panel) -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "color", "value": {"fixedColor": colour, "mode": "fixed"}}],
        }
        for name, colour in sorted(panel.colour_by_name.items())
    ]


def _field_config(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "color": {"mode": "thresholds" if panel.kind in ("stat", "gauge") else "palette-classic"},
        "mappings": _mappings(panel),
        "thresholds": _thresholds(panel),
        "unit": panel.unit,
    }
    if panel.kind == "bargauge":
        defaults["color"] = {"mode": "thresholds"}
    if panel.kind == "state-timeline":
        defaults["color"] = {"mode": "thresholds"}
        defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 20 if panel.stack else 0,
            "lineInterpolation": "stepAfter" if panel.step else "linear",
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if panel.stack else "none"},
        }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    return {"defaults": defaults, "overrides": _overrides(panel)}


_REDUCE = {"calcs": ["lastNotNull"], "fields": "", "values": False}
_LEGEND = {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True}
_TOOLTIP = {"mode": "multi", "sort": "desc"}


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "timeseries":
        return {"legend": dict(_LEGEND), "tooltip": dict(_TOOLTIP)}
    if panel.kind == "stat":
        return {
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": dict(_REDUCE),
            "textMode": "value_and_name",
        }
    if panel.kind == "bargauge":
        return {
            "displayMode": "gradient",
            "minVizHeight": 16,
            "orientation": "horizontal",
            "reduceOptions": dict(_REDUCE),
            "showUnfilled": True,
            "valueMode": "color",
        }
    if panel.kind == "gauge":
        return {
            "orientation": "auto",
            "reduceOptions": dict(_REDUCE),
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
        }
    if panel.kind == "table":
        return {"cellHeight": "sm", "showHeader": True}
    if panel.kind == "state-timeline":
        return {
            "alignValue": "left",
            "legend": {**_LEGEND, "showLegend": False},
            "mergeValues": True,
            "rowHeight": 0.9,
            "showValue": "auto",
            "tooltip": {"mode": "single", "sort": "none"},
        }
    raise ValueError(f"unknown panel kind {panel.kind!r}")


def _render_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "datasource": dict(DATASOURCE),
        "description": panel.description,
        "fieldConfig": _field_config(panel),
        "gridPos": {"h": panel.h, "w": panel.w, "x": x, "y": y},
        "id": panel_id,
        "options": _options(panel),
        "targets": [_target(q, chr(ord("A") + i)) for i, q in enumerate(panel.queries)],
        "title": panel.title,
        "type": panel.kind,
    }
    if panel.hide_columns:
        out["transformations"] = [{
            "id": "organize",
            "options": {
                "excludeByName": {name: True for name in panel.hide_columns},
                "indexByName": {},
                "renameByName": {},
            },
        }]
    return out


def _render_row(row: Row, panel_id: int, y: int) -> dict[str, Any]:
    return {
        "collapsed": False,
        "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y},
        "id": panel_id,
        "panels": [],
        "title": row.title,
        "type": "row",
    }


def _render_variable(var: Variable) -> dict[str, Any]:
    out: dict[str, Any] = {
        "current": {},
        "datasource": dict(DATASOURCE),
        "definition": var.definition,
        "description": var.description,
        "hide": 0,
        "includeAll": var.multi,
        "label": var.label,
        "multi": var.multi,
        "name": var.name,
        "options": [],
        "query": var.definition,
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": var.sort,
        "type": "query",
    }
    if var.multi:
        out["allValue"] = ".*"
    return out


def _datasource_variable() -> dict[str, Any]:
    """``$datasource``: any Prometheus datasource, opening on edgefarm's own where it exists."""
    return {
        "current": {"text": "edgefarm Prometheus", "value": DATASOURCE_UID},
        "description": "The Prometheus that scrapes the edgefarm farm service.",
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": DATASOURCE_TYPE,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def _annotations() -> dict[str, Any]:
    """Grafana's own annotations, and the sweeps' start and end pushed with their tags."""
    grafana = {"type": "grafana", "uid": "-- Grafana --"}
    return {"list": [
        {"builtIn": 1, "datasource": grafana, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
         "type": "dashboard"},
        {"datasource": grafana, "enable": True, "hide": False, "iconColor": "purple",
         "name": "Sweeps",
         "target": {"limit": 100, "matchAny": False, "tags": list(SWEEP_ANNOTATION_TAGS),
                    "type": "tags"}},
    ]}


def render_dashboard(dash: Dashboard, links: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The Grafana JSON model of ``dash``: panels laid out row by row, ids from 1."""
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for item in dash.layout:
        if isinstance(item, Row):
            panels.append(_render_row(item, next_id, y))
            next_id += 1
            y += 1
            continue
        width = sum(p.w for p in item)
        if width > GRID_COLUMNS:
            titles = ", ".join(p.title for p in item)
            raise ValueError(f"{dash.uid}: row [{titles}] is {width} columns wide (max 24)")
        x = 0
        for panel in item:
            panels.append(_render_panel(panel, next_id, x, y))
            next_id += 1
            x += panel.w
        y += max(p.h for p in item)
    return {
        "annotations": _annotations(),
        "description": dash.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": list(links),
        "liveNow": False,
        "panels": panels,
        "refresh": dash.refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": list(dash.tags),
        "templating": {"list": [_datasource_variable(),
                                *(_render_variable(v) for v in dash.variables)]},
        "time": {"from": dash.time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": dash.title,
        "uid": dash.uid,
        "weekStart": "",
    }
