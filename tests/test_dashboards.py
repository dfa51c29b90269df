"""Generated Grafana dashboards: in sync with the code, well-formed, true to the metric contract.

No Grafana server can run here, so a dashboard is checked in two ways: its JSON
against the rules Grafana's model imposes (schemaVersion, unique ids, grid
layout, datasource references), and its queries by running every one of them
on a real Prometheus (the Debian ``prometheus`` binary) that scrapes a fake
exporter serving every metric of docs/metrics.md. The integration test after a
real sweep runs the same ``panel_queries()`` against the real exporter.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import product
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

from orchestrator.dashboards import DATASOURCE, SCHEMA_VERSION, check, render_all
from orchestrator.dashboards.__main__ import main as dashboards_main
from orchestrator.dashboards.queries import DEFAULT_VALUES, panel_queries, substitute

GRAFANA_DIR = REPO / "dashboards" / "grafana"
METRIC_NAME = re.compile(r"\bedgefarm_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(edgefarm_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on|ignoring)\s*\(([^)]*)\)")


def contract_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """docs/metrics.md's table: metric name -> (type, label names)."""
    metrics = {}
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`edgefarm_"):
            labels = tuple(x.strip() for x in cells[2].split(",") if x.strip())
            metrics[cells[0].strip("`")] = (cells[1].split()[0], labels)
    assert len(metrics) >= 15, "could not read the table of docs/metrics.md"
    return metrics


CONTRACT = contract_metrics()
MODELS = render_all()


def all_panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return list(model["panels"])


def targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(stem, panel, target) for stem, model in MODELS.items()
            for panel in all_panels(model) for target in panel.get("targets", [])]


# -- the committed JSON is what the code generates ---------------------------------


def test_committed_json_matches_the_code() -> None:
    problems = check(GRAFANA_DIR)
    assert problems == [], "run: python -m orchestrator.dashboards --write"


def test_module_entry_point_writes_and_checks(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grafana"
    assert dashboards_main(["--check", "--out", str(out)]) == 1
    assert dashboards_main(["--write", "--out", str(out)]) == 0
    assert dashboards_main(["--check", "--out", str(out)]) == 0
    (out / "moe-vs-dense.json").write_text("{}\n")
    (out / "stale.json").write_text("{}\n")
    assert dashboards_main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "moe-vs-dense.json: differs" in err and "stale.json: not generated" in err


# -- Grafana JSON model ------------------------------------------------------------


def test_dashboards_identity() -> None:
    assert {stem: (m["uid"], m["title"]) for stem, m in MODELS.items()} == {
        "farm-overview": ("edgefarm-farm-overview", "edgefarm · Farm overview"),
        "moe-vs-dense": ("edgefarm-moe-vs-dense", "edgefarm · MoE vs dense"),
        "sweep-progress": ("edgefarm-sweep-progress", "edgefarm · Sweep progress"),
    }
    for model in MODELS.values():
        assert model["schemaVersion"] == SCHEMA_VERSION == 42
        assert model["id"] is None
        assert len(model["uid"]) <= 40
        assert "edgefarm" in model["tags"]


def test_panel_ids_unique_and_grid_fits_without_overlap() -> None:
    for stem, model in MODELS.items():
        panels = all_panels(model)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), stem
        boxes = []
        for p in panels:
            g = p["gridPos"]
            assert g["w"] >= 1 and g["h"] >= 1 and g["x"] >= 0 and g["y"] >= 0, (stem, p["title"])
            assert g["x"] + g["w"] <= 24, (stem, p["title"])
            boxes.append((p["title"], g))
        for i, (ta, a) in enumerate(boxes):
            for tb, b in boxes[i + 1:]:
                overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                           and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
                assert not overlap, f"{stem}: {ta!r} overlaps {tb!r}"


def test_every_panel_target_and_variable_uses_the_datasource_variable() -> None:
    """Any Prometheus datasource works: nothing is tied to the uid edgefarm provisions."""
    assert DATASOURCE == {"type": "prometheus", "uid": "${datasource}"}
    for stem, panel, target in targets():
        assert target["datasource"] == DATASOURCE, (stem, panel["title"])
        assert panel["datasource"] == DATASOURCE
        assert target["expr"].strip() and target["refId"]
    for model in MODELS.values():
        for panel in all_panels(model):
            assert panel["type"] == "row" or panel["targets"], panel["title"]
        first, *queries = model["templating"]["list"]
        assert (first["name"], first["type"], first["query"]) == (
            "datasource", "datasource", "prometheus")
        assert "edgefarm-prometheus" not in json.dumps(model).replace(
            json.dumps(first), ""), "only the variable's default names the provisioned uid"
        for var in queries:
            assert var["datasource"] == DATASOURCE


def test_sweep_variables_open_on_the_newest_sweep() -> None:
    """Sweep ids start with the date and time: sorted descending, the first is the newest."""
    for stem in ("moe-vs-dense", "sweep-progress"):
        (sweep,) = [v for v in MODELS[stem]["templating"]["list"] if v["name"] == "sweep"]
        assert sweep["sort"] == 2 and sweep["current"] == {}, stem
    ids = ["20261201-233008-4542", "20261202-003747-080d", "20261130-120000-ffff"]
    assert sorted(ids, reverse=True)[0] == "20261202-003747-080d"


def test_template_variables_used_are_defined() -> None:
    for stem, model in MODELS.items():
        defined = {v["name"] for v in model["templating"]["list"]}
        texts = [t["expr"] for t in (t for s, _, t in targets() if s == stem)]
        texts += [v["definition"] for v in model["templating"]["list"] if v["type"] == "query"]
        for text in texts:
            for name in re.findall(r"\$\{?(\w+)", text):
                assert name in defined or name.startswith("__") or name.isdigit(), (stem, name)


def test_units() -> None:
    units = {(m["uid"], p["title"]): p["fieldConfig"]["defaults"]["unit"]
             for m in MODELS.values() for p in all_panels(m) if p["type"] != "row"}
    farm, moe = "edgefarm-farm-overview", "edgefarm-moe-vs-dense"
    assert units[(farm, "Power per rail")] == "watt"
    assert units[(farm, "Total power")] == "watt"
    assert units[(farm, "Memory used and total")] == "bytes"
    assert units[(farm, "Memory used, % of total")] == "percent"
    assert units[(farm, "Temperature")] == "celsius"
    assert units[(moe, "MoE behind dense, % (decode)")] == "percent"
    assert units[(moe, "Time to first token")] == "s"
    assert units[(moe, "Peak memory")] == "bytes"
    assert units[(moe, "Energy per token")] == "joule"
    assert units[(moe, "Routing share of MoE time")] == "percentunit"
    # A unit-bearing metric never lands in a panel with another unit.
    by_suffix = {"_watts": "watt", "_bytes": "bytes", "_seconds": "s", "_joules": "joule",
                 "_celsius": "celsius"}
    for _stem, panel, target in targets():
        names = set(METRIC_NAME.findall(target["expr"]))
        for suffix, unit in by_suffix.items():
            if any(n.endswith(suffix) for n in names) and "%" not in panel["title"]:
                assert panel["fieldConfig"]["defaults"]["unit"] == unit, panel["title"]


def test_moe_dashboard_shows_the_deficit_clearly() -> None:
    moe = MODELS["moe-vs-dense"]
    deficit = [p for p in all_panels(moe) if p["title"].startswith("MoE behind dense, %")]
    assert len(deficit) == 2
    exprs = [t["expr"] for p in deficit for t in p["targets"]]
    assert any(e.startswith("(1 - edgefarm_moe_dense_decode_ratio{") and e.endswith(") * 100")
               for e in exprs)
    assert [v["name"] for v in moe["templating"]["list"]] == ["datasource", "sweep", "device",
                                                               "pair", "config"]


# -- the metric contract -------------------------------------------------------------


def test_every_metric_and_label_used_is_in_the_contract() -> None:
    for stem, panel, target in targets():
        expr = target["expr"]
        names = set(METRIC_NAME.findall(expr))
        unknown = names - set(CONTRACT)
        assert not unknown, f"{stem} / {panel['title']}: {sorted(unknown)} not in docs/metrics.md"
        known_labels = {label for n in names for label in CONTRACT[n][1]}
        for metric, matchers in SELECTOR.findall(expr):
            labels = set(MATCHER_LABEL.findall(matchers))
            assert labels <= set(CONTRACT[metric][1]), (panel["title"], metric, labels)
        for group in GROUPING.findall(expr):
            labels = {x.strip() for x in group.split(",") if x.strip()}
            # label_replace adds "model" to the pair ratios before the join.
            assert labels <= known_labels | {"model"}, (panel["title"], labels)
        counters = [n for n in names if CONTRACT[n][0] == "counter"]
        assert all(n.endswith("_total") for n in counters)


def test_panel_queries_are_plain_promql_with_expected_labels() -> None:
    queries = panel_queries()
    panel_count = sum(len(p.get("targets", [])) for m in MODELS.values() for p in all_panels(m))
    variable_count = sum(len([v for v in m["templating"]["list"] if v["type"] == "query"])
                         for m in MODELS.values())
    assert len(queries) == panel_count + variable_count
    for q in queries:
        leftover = re.findall(r"\$\{?(\w+)", q.expr)
        assert all(name.isdigit() for name in leftover), (q.panel_title, leftover)
        names = set(METRIC_NAME.findall(q.expr))
        contract_labels = {label for n in names for label in CONTRACT[n][1]} | {"model"}
        assert set(q.labels) <= contract_labels, (q.panel_title, q.labels)
        assert q.may_be_empty == bool(q.reason)
    optional = {(q.panel_title, q.ref_id) for q in queries if q.may_be_empty}
    for q in queries:
        if re.search(r"energy|routing", q.expr):
            assert (q.panel_title, q.ref_id) in optional, q.panel_title
    assert ("Decode tok/s", "A") not in optional


def test_substitute() -> None:
    assert substitute('m{device=~"$device", pair=~"${pair}", c=~"${config:regex}"}') == \
        'm{device=~".*", pair=~".*", c=~".*"}'
    assert substitute("rate(m[$__rate_interval])") == \
        f"rate(m[{DEFAULT_VALUES['__rate_interval']}])"
    assert substitute('label_replace(m, "model", "$1", "pair", "(.+)")') == \
        'label_replace(m, "model", "$1", "pair", "(.+)")'
    assert substitute('m{sweep=~"$sweep", x="$unknown"}', {"sweep": "abc"}) == \
        'm{sweep=~"abc", x="$unknown"}'


# -- every query on a real Prometheus -------------------------------------------------

LABEL_VALUES: dict[str, list[str]] = {
    "sweep": ["s1"], "name": ["seed-study"], "state": ["running", "done"],
    "device": ["dev-a", "dev-b"], "platform": ["linux-cpu"], "outcome": ["done", "failed"],
    "phase": ["decode"], "rail": ["total", "cpu"], "sensor": ["cpu"],
    "model": ["olmoe-1b-7b", "llama-3.2-1b"], "arch": ["moe"],
    "pair": ["olmoe-1b-7b_vs_llama-3.2-1b"], "config": ["p128-g64-t2-ngl0"],
}


class ContractExporter:
    """Serves every metric of docs/metrics.md; counters grow by one per scrape."""

    def __init__(self) -> None:
        self.scrapes = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                exporter.scrapes += 1
                data = exporter.text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def text(self) -> str:
        lines = []
        for name, (kind, labels) in CONTRACT.items():
            lines.append(f"# TYPE {name} {'counter' if kind == 'counter' else 'gauge'}")
            value = self.scrapes if kind == "counter" else 1
            for combo in product(*(LABEL_VALUES[label] for label in labels)):
                pairs = ",".join(f'{label}="{v}"' for label, v in zip(labels, combo, strict=True))
                # A state set has one series at 1 per sweep: the current state.
                current = name != "edgefarm_sweep_state" or combo[labels.index("state")] == \
                    LABEL_VALUES["state"][0]
                lines.append(f"{name}{{{pairs}}} {value if current else 0}")
        return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prom_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"Prometheus rejected {expr!r}: {exc.read().decode()}") from None
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on a loopback port, scraping ContractExporter every second."""
    binary = "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus is not installed (Debian package 'prometheus')")
    tmp = tmp_path_factory.mktemp("prometheus")
    exporter = ContractExporter()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: contract\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n")
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([binary, f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                # Two scrapes of the counters make rate() answer.
                ready = prom_query(base, "count_over_time(edgefarm_telemetry_samples_total[1m])")
                if ready and float(ready[0]["value"][1]) >= 2:
                    break
            except (OSError, AssertionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Prometheus did not come up; log:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        exporter.server.shutdown()
        exporter.server.server_close()


def test_every_query_returns_series_with_its_labels(prometheus: str) -> None:
    failures = []
    for q in panel_queries():
        result = prom_query(prometheus, q.expr)
        if not result:
            failures.append(f"{q.dashboard_uid} / {q.panel_title} {q.ref_id}: no series")
        for series in result:
            missing = set(q.labels) - set(series["metric"])
            if missing:
                failures.append(f"{q.dashboard_uid} / {q.panel_title} {q.ref_id}: "
                                f"series without {sorted(missing)}")
    assert failures == []


def test_pair_join_picks_each_side(prometheus: str) -> None:
    by_ref = {q.ref_id: q for q in panel_queries() if q.panel_title == "Decode tok/s"}
    moe = {s["metric"]["model"] for s in prom_query(prometheus, by_ref["A"].expr)}
    dense = {s["metric"]["model"] for s in prom_query(prometheus, by_ref["B"].expr)}
    assert (moe, dense) == ({"olmoe-1b-7b"}, {"llama-3.2-1b"})
    narrowed = substitute(by_ref["A"].template, {"pair": "nothing_vs_else"})
    assert prom_query(prometheus, narrowed) == []
