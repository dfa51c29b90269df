"""``edgefarm report --format html`` and ``--export csv``, checked in a real headless browser.

The store comes from a real sweep: tiny-moe against tiny-dense through Ray,
the detached agent and llama.cpp (xllamacpp), at two prompt lengths. The page
is opened in Debian's chromium (``--headless=new --dump-dom``); the page's own
script writes each plot image's decoded width onto ``<body data-rendered>``
after the load event, so the dumped DOM says whether every image rendered.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers import counted_per_job, edgefarm, write_inventory, write_sweep
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.report import build_report
from orchestrator.report_export import CSV_NAME, HTML_NAME, ReportOutputError, write_files
from orchestrator.report_html import EMPTY_SWEEP, render_html
from orchestrator.report_plots import PLOTS, render_plots
from orchestrator.store import Store

PROMPTS = [16, 48]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished real sweep: its results dir and id (one paired job per prompt length)."""
    tmp = tmp_path_factory.mktemp("sweep")
    inv = write_inventory(tmp, ["local"])
    spec = write_sweep(tmp, devices=["local"], name="study",
                       matrix={"prompt_tokens": PROMPTS, "gen_tokens": [8], "threads": [1],
                               "gpu_layers": [0]})
    results = tmp / "results"
    run = edgefarm("sweep", "run", str(spec), "-i", str(inv), "-r", str(results),
                   "--metrics-addr", "off", tmp=tmp)
    assert run.returncode == 0, run.stdout + run.stderr
    return results, run.stdout.splitlines()[0].split()[1]


def report(*args: str) -> Any:
    return CliRunner().invoke(app, ["report", *args])


def browser_dom(page: Path, profile: Path) -> str:
    """The page's DOM after load, as headless chromium leaves it (its script has run)."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (make system-deps installs it)"
    done = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered_widths(dom: str) -> list[int]:
    """``data-rendered`` of ``<body>``: each plot image's naturalWidth after load."""
    found = re.search(r'<body[^>]*\sdata-rendered="([^"]*)"', dom)
    assert found, "the page's script did not run (no data-rendered on <body>)"
    return [int(w) for w in found.group(1).split()]


VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}


class Structure(HTMLParser):
    """Balanced elements, and every src/href, of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


def structure(page: str) -> Structure:
    parser = Structure()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>")
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    for url in parser.urls:  # self-contained: nothing to fetch
        assert url.startswith(("data:image/png;base64,", "#")), url[:80]
    return parser


def test_html_page_has_every_plot_and_each_renders_in_a_browser(
        sweep: tuple[Path, str], tmp_path: Path) -> None:
    results, sweep_id = sweep
    out = tmp_path / "study"
    done = report(sweep_id, "-r", str(results), "--format", "html", "--out", str(out))
    assert done.exit_code == 0, done.output
    page = (out / HTML_NAME).read_text()
    parsed = structure(page)
    assert parsed.tags.count("img") == parsed.tags.count("figure") == len(PLOTS) == 7
    for spec in PLOTS:
        assert f'<figure id="plot-{spec.key}">' in page
    assert parsed.tags.count("figcaption") == len(PLOTS)
    # The words of the Markdown report: one section per prompt length, verdict first.
    for prompt in PROMPTS:
        assert f"tiny-moe vs tiny-dense · prompt {prompt}, gen 8" in page
    assert page.count('<p class="verdict">Decode: MoE is ') == len(PROMPTS)
    assert "<th>decode tok/s median</th>" in page and "tiny-moe (moe)" in page
    assert "tiny-dense: backend xllamacpp 2026.10.11549" in page  # provenance_line

    widths = rendered_widths(browser_dom(out / HTML_NAME, tmp_path / "chromium"))
    assert len(widths) == len(PLOTS) and all(w > 0 for w in widths), widths

    # The check can fail: an image the browser cannot decode reads 0.
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"data:image/png;base64,[^\"]+", "data:image/png;base64,AAAA",
                             page, count=1))
    widths = rendered_widths(browser_dom(broken, tmp_path / "chromium"))
    assert widths[0] == 0 and all(w > 0 for w in widths[1:]), widths


def test_csv_export_has_every_counted_repetition_with_its_provenance(
        sweep: tuple[Path, str], tmp_path: Path) -> None:
    results, sweep_id = sweep
    out = tmp_path / "export"
    done = report(sweep_id, "-r", str(results), "--format", "md", "--export", "csv",
                  "--out", str(out))
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("# edgefarm report: study")  # md still on stdout
    assert sorted(p.name for p in out.iterdir()) == [CSV_NAME]
    rows = list(csv.DictReader(io.StringIO((out / CSV_NAME).read_text())))
    store = Store(results, read_only=True)
    counted = store.counted_repetitions(sweep_id)
    store.close()
    per_job = counted_per_job(results / "edgefarm.sqlite", sweep_id)
    assert len(rows) == len(counted) == sum(per_job.values()) == 2 * 2 * len(PROMPTS)
    assert {r["model_id"] for r in rows} == {"tiny-moe", "tiny-dense"}
    assert sorted({int(r["prompt_tokens"]) for r in rows}) == PROMPTS
    for row, rep in zip(rows, counted, strict=True):
        assert (row["job_key"], row["model_id"], int(row["index"])) == \
            (rep["job_key"], rep["model_id"], rep["idx"])
        assert float(row["decode_tps"]) == rep["decode_tps"] > 0
        assert row["round"] in ("0", "1") and row["threads"] == "1"
        assert row["prov_backend"] == "xllamacpp" and row["prov_threads"] == "1"
        assert row["prov_cpu_repack"] == "true" and row["prov_type_k"] == "f16"
        assert row["prov_unknown_use_mmap"]  # why use_mmap is unknown, flattened
        assert row["j_per_token"] == ""  # not measured on this VM


def hostile_store(results: Path) -> str:
    """A store whose model ids and device name are HTML (only the store API allows that)."""
    # "$\\frac{$" is TeX that fails to parse, were matplotlib to read it as mathtext.
    moe, dense, device = "<script>alert(1)</script>$\\frac{$", "d\"en'se&<b>", "<img src=x>"
    store = Store(results)
    sweep = {"models": [{"id": moe, "arch": "moe"}, {"id": dense, "arch": "dense"}],
             "pairs": [{"moe": moe, "dense": [dense]}]}
    config = {"prompt_tokens": 8, "gen_tokens": 9, "threads": 1, "gpu_layers": 0}
    jobs = [dict(config, key=f"k{i}", device=device, model_id=m, arch=a)
            for i, (m, a) in enumerate(((moe, "moe"), (dense, "dense")))]
    store.create_sweep("s", "<i>name</i>", sweep, {"devices": []}, jobs)
    for job, rate in zip(jobs, (90.0, 100.0), strict=True):
        store.start_attempt("s", job["key"], 1)
        store.add_events("s", device, [
            {"v": 1, "seq": i, "kind": "repetition", "job": job["key"], "attempt": 1, "t": 1.0,
             "index": i, "warmup": False, "round": i, "decode_tps": rate + i,
             "prefill_tps": 500.0, "j_per_token": 0.5 + i / 10, "peak_rss_bytes": 2**26}
            for i in range(5)])
        store.finish_job("s", job["key"], "done", 1, result={})
    store.close()
    return "s"


def test_hostile_names_are_escaped_and_run_nothing(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "page"
    sweep_id = hostile_store(results)
    done = report(sweep_id, "-r", str(results), "--format", "html", "--out", str(out))
    assert done.exit_code == 0, done.output
    page = (out / HTML_NAME).read_text()
    structure(page)
    assert "<script>alert(1)" not in page and "<img src=x>" not in page
    assert "<b>" not in page and "<i>name" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;$\\frac{$" in page
    assert "&lt;img src=x&gt;" in page and "d&quot;en&#x27;se&amp;&lt;b&gt;" in page
    assert page.count("<script>") == 1  # the page's own self-check only
    dom = browser_dom(out / HTML_NAME, tmp_path / "chromium")
    assert dom.count("<script") == 1 and "<img src=\"x\"" not in dom
    widths = rendered_widths(dom)
    assert len(widths) == len(PLOTS) and all(w > 0 for w in widths), widths


def test_a_sweep_without_comparisons_still_gets_a_page(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "page"
    store = Store(results)
    store.create_sweep("e", "empty", {"models": [], "pairs": []}, {"devices": []}, [])
    store.close()
    done = report("e", "-r", str(results), "--format", "html", "--out", str(out))
    assert done.exit_code == 0, done.output
    page = (out / HTML_NAME).read_text()
    parsed = structure(page)
    assert EMPTY_SWEEP in page and "img" not in parsed.tags


def test_every_plot_draws_something_when_nothing_was_measured(tmp_path: Path) -> None:
    """A pair whose MoE job failed and whose dense job never ran: each plot says so."""
    store = Store(tmp_path / "results")
    sweep = {"models": [{"id": "m", "arch": "moe"}, {"id": "d", "arch": "dense"}],
             "pairs": [{"moe": "m", "dense": ["d"]}]}
    config = {"prompt_tokens": 8, "gen_tokens": 9, "threads": 1, "gpu_layers": 0}
    store.create_sweep("f", "failed", sweep, {"devices": []},
                       [dict(config, key=m, device="dev", model_id=m, arch=a)
                        for m, a in (("m", "moe"), ("d", "dense"))])
    store.start_attempt("f", "m", 1)
    store.finish_job("f", "m", "failed", 1, error_kind="backend-error", error="no llama.cpp")
    data = build_report(store, "f")
    store.close()
    rendered = render_plots(data)
    assert [p.key for p in rendered] == [spec.key for spec in PLOTS]
    for plot in rendered:
        assert plot.png.startswith(b"\x89PNG") and len(plot.png) > 2000, plot.key
    assert any("no llama.cpp" in note for note in rendered[0].notes)
    page = render_html(data, rendered)
    structure(page)
    assert "not measured (m: no llama.cpp; d: pending)" in page


@pytest.mark.parametrize(("args", "fragment"), [
    (["--format", "html"], "give --out DIR"),
    (["--export", "csv"], "give --out DIR"),
    (["--format", "md", "--out", "{tmp}/dir"], "--out is for --format html and --export"),
    (["--format", "html", "--out", "{tmp}/a-file"], "is a file"),
])
def test_bad_output_options_exit_2_with_one_message_and_write_nothing(
        tmp_path: Path, args: list[str], fragment: str) -> None:
    results = tmp_path / "results"
    hostile_store(results)
    (tmp_path / "a-file").write_text("keep me\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    done = report("s", "-r", str(results), *(a.format(tmp=tmp_path) for a in args))
    assert done.exit_code == 2, done.output
    flat = " ".join(done.stderr.replace("│", " ").split())
    assert fragment in flat, done.stderr
    assert "Traceback" not in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "a-file").read_text() == "keep me\n"


def test_write_files_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real = Path.write_bytes

    def fail_second(self: Path, data: bytes) -> int:
        if self.name == "b":
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fail_second)
    with pytest.raises(ReportOutputError, match="No space left on device"):
        write_files(out, {"a": b"1", "b": b"2"})
    assert list(tmp_path.iterdir()) == []  # no out, no temporary directory
    monkeypatch.undo()
    write_files(out, {"a": b"1", "b": b"2"})
    write_files(out, {"b": b"3"})  # into an existing dir: b replaced, a left alone
    assert (out / "a").read_bytes() == b"1" and (out / "b").read_bytes() == b"3"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
