"""Telemetry parsers (agents/telemetry: tegrastats, powermetrics, macmon) against recorded output.

Cases are data, pyinfra-style: ``tests/data/telemetry/<parser>/<case>.<ext>`` is
the input, cut from the whole recorded files in ``tests/data/telemetry/samples``
(each case's JSON says from where; that folder's README gives every file's
provenance), and ``<case>.json`` holds ``source``, ``checked_by_hand`` and the
expected ``samples``. The expected values were typed from the input lines by
hand, not produced by the parser; ``checked_by_hand`` lists the arithmetic.
A new case is two files and no code.

Beyond the cases: every tool-output line of every recorded sample file parses,
unknown fields land in ``extra``, and truncated or garbage input never raises
anything but the documented ValueError.
"""

import doctest
import importlib
import json
import math
import plistlib
import random
import re
from pathlib import Path

import pytest

from agents.telemetry.macmon import parse_macmon, parse_macmon_line
from agents.telemetry.powermetrics import (
    looks_like_plist,
    parse_powermetrics_plist_stream,
    parse_powermetrics_text,
)
from agents.telemetry.sample import Sample
from agents.telemetry.tegrastats import parse_tegrastats, parse_tegrastats_line

DATA = Path(__file__).parent / "data" / "telemetry"
# Whole recorded files, in the repository so a fresh clone tests the same (README there).
SAMPLES = DATA / "samples"
# Two recorded files are case inputs already, byte for byte, so they are not repeated.
PLIST_SAMPLE = DATA / "powermetrics" / "mac16_5-macos25C56-plist.plist"
MACMON_SAMPLE = DATA / "macmon" / "readme-example.jsonc"


# -- helpers ---------------------------------------------------------------------

def jsonc_to_line(text: str) -> str:
    """The README's commented, pretty JSON as the one line ``macmon pipe`` prints."""
    without_comments = "\n".join(re.sub(r"\s*//.*$", "", line) for line in text.splitlines())
    without_trailing_commas = re.sub(r",(\s*[}\]])", r"\1", without_comments)
    return json.dumps(json.loads(without_trailing_commas))


def parse_case(parser: str, path: Path) -> list[Sample]:
    if parser == "tegrastats":
        return parse_tegrastats(path.read_text(encoding="utf-8").splitlines())
    if parser == "powermetrics":
        data = path.read_bytes()
        if looks_like_plist(data):
            return parse_powermetrics_plist_stream(data)
        return parse_powermetrics_text(data.decode("utf-8"))
    if parser == "macmon":
        text = path.read_text(encoding="utf-8")
        lines = [jsonc_to_line(text)] if path.suffix == ".jsonc" else text.splitlines()
        return parse_macmon(lines)
    raise AssertionError(f"no parser for {parser}")


def assert_same(actual, expected, where="sample"):
    """Equal structure and keys; numbers equal to 1e-9 (relative)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        assert sorted(actual) == sorted(expected), (
            f"{where}: keys differ: extra {sorted(set(actual) - set(expected))}, "
            f"missing {sorted(set(expected) - set(actual))}")
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (
            f"{where}: {actual!r} != {expected!r}")
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{index}]")
    elif isinstance(expected, bool) or expected is None or isinstance(expected, str):
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
    else:
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), (
            f"{where}: {actual!r} is not a number")
        assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12), (
            f"{where}: {actual!r} != {expected!r}")


def collect_cases():
    cases = []
    for expected in sorted(DATA.glob("*/*.json")):
        inputs = [p for p in expected.parent.glob(expected.stem + ".*")
                  if p.suffix != ".json"]
        cases.append(pytest.param(expected.parent.name, expected, inputs,
                                  id=f"{expected.parent.name}/{expected.stem}"))
    return cases


CASES = collect_cases()


# -- the recorded cases ----------------------------------------------------------

def test_there_are_cases_for_every_parser():
    parsers = {case.values[0] for case in CASES}
    assert parsers == {"tegrastats", "powermetrics", "macmon"}
    assert len(CASES) >= 20


@pytest.mark.parametrize(("parser", "expected_path", "inputs"), CASES)
def test_recorded_case(parser, expected_path, inputs):
    assert len(inputs) == 1, f"{expected_path.stem}: want one input file, found {inputs}"
    case = json.loads(expected_path.read_text(encoding="utf-8"))
    assert case["source"] and case["checked_by_hand"]
    samples = parse_case(parser, inputs[0])
    actual = [s.to_json() for s in samples]
    assert len(actual) == len(case["samples"])
    for index, (got, want) in enumerate(zip(actual, case["samples"], strict=True)):
        assert_same(got, want, f"sample[{index}]")
        # The normalised object survives JSON and rebuilds the same sample.
        assert json.loads(json.dumps(got)) == got
        assert Sample.from_json(got).to_json() == got


# -- every line of every recorded sample file -------------------------------------

def tool_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def excerpt_sections(path: Path) -> list[str]:
    """The '## [X]' sections of the issue-excerpts file, '#' note lines dropped."""
    sections = re.split(r"^## \[[A-Z]\].*$", path.read_text(encoding="utf-8"), flags=re.M)[1:]
    return ["\n".join(line for line in section.splitlines() if not line.startswith("#"))
            for section in sections]


def test_no_recorded_sample_file_is_left_untested():
    handled = {"README.md",
               "powermetrics-mac16_5-processor-gpu-excerpt.txt",
               "powermetrics-text-mac15_12-24F74.txt",
               "powermetrics-text-issue-excerpts-partial.txt",
               "rapl-powercap-samples.txt"}  # RAPL: see test_telemetry_readers.py
    present = {p.name for p in SAMPLES.iterdir()}
    tegrastats = {n for n in present if n.startswith("tegrastats-")}
    assert len(tegrastats) == 5
    assert present - tegrastats - handled == set()
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    for name in sorted(present - {"README.md"}):
        assert f"| {name} |" in readme, f"{name} has no provenance in samples/README.md"
    assert PLIST_SAMPLE.is_file() and MACMON_SAMPLE.is_file()


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("tegrastats-*.txt")), ids=lambda p: p.name)
def test_every_tegrastats_line_gives_ram_or_a_rail(path):
    lines = tool_lines(path)
    assert lines
    for line in lines:
        sample = parse_tegrastats_line(line)
        assert sample.ram_total_mb is not None or sample.rails_w, line
        assert "unparsed" not in sample.extra, (line, sample.extra["unparsed"])


def test_every_powermetrics_sample_parses():
    plist = parse_powermetrics_plist_stream(
        PLIST_SAMPLE.read_bytes())
    assert len(plist) == 1 and plist[0].total_w is not None

    text = (SAMPLES / "powermetrics-text-mac15_12-24F74.txt").read_text(encoding="utf-8")
    raw = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    samples = parse_powermetrics_text(raw)
    assert len(samples) == 1 and samples[0].total_w is not None

    sections = excerpt_sections(SAMPLES / "powermetrics-text-issue-excerpts-partial.txt")
    assert len(sections) == 5
    for section in sections:
        samples = parse_powermetrics_text(section)
        assert samples, section[:80]
        assert all(s.has_measurement() for s in samples)

    # The byte range of the plist kept as text: not a whole plist, so nothing parses;
    # the error says which plist failed and why, and nothing but ValueError escapes.
    excerpt = (SAMPLES / "powermetrics-mac16_5-processor-gpu-excerpt.txt").read_bytes()
    fragment = b"\n".join(line for line in excerpt.splitlines() if not line.startswith(b"#"))
    assert parse_powermetrics_plist_stream(fragment) == []  # a truncated last plist is dropped
    with pytest.raises(ValueError, match="plist 1 of 2"):
        parse_powermetrics_plist_stream(fragment + b"\0" + fragment)


def test_macmon_readme_example_parses():
    line = jsonc_to_line(MACMON_SAMPLE.read_text("utf-8"))
    sample = parse_macmon_line(line)
    assert sample.total_rail == "sys" and sample.ram_total_mb == 24576.0


# -- unknown fields, new boards --------------------------------------------------

def test_tegrastats_keeps_unknown_fields_in_extra():
    line = ("RAM 100/200MB NEWENG_FREQ 12%@300 FOO 7 BAR $X% weird@@ lonely "
            "VDD_NEW 100mW/90mW/120mW QUX 5uW/5uW")
    sample = parse_tegrastats_line(line)
    assert sample.ram_used_mb == 100
    assert sample.rails_w == {"VDD_NEW": 0.1}
    assert sample.total_w == 0.1 and sample.total_rail == "sum"
    assert sample.clocks_mhz == {"neweng": 300}
    assert sample.extra["neweng_util_pct"] == 12.0
    assert sample.extra["FOO"] == 7  # a bare number from an engine we do not know
    assert sample.extra["BAR"] == "$X%"
    assert sample.extra["QUX"] == "5uW/5uW"  # a rail in a unit we do not know: kept raw
    assert sample.extra["unparsed"] == "weird@@ lonely"


def test_tegrastats_wall_needs_the_utc_offset():
    line = "09-01-2025 10:55:25 RAM 1313/30697MB"
    assert parse_tegrastats_line(line).wall is None
    # 2025-09-01 08:55:25 UTC: 20332 days * 86400 + 32125 s
    assert parse_tegrastats_line(line, utc_offset_s=7200).wall == 1756716925.0
    # not a date: kept as unparsed text, not a timestamp
    bad = parse_tegrastats_line("13-45-2025 10:55:25 RAM 1/2MB")
    assert "timestamp" not in bad.extra and bad.ram_used_mb == 1


def test_powermetrics_text_keeps_unknown_lines():
    text = ("*** Sampled system activity (Wed Jan  1 00:00:00 2025 +0000) ***\n"
            "CPU Power: 100 mW\nGPU Power: 50 mW\n"
            "Some new counter: 42\nsomething odd\n")
    sample = parse_powermetrics_text(text)[0]
    assert sample.wall == 1735689600.0  # 20089 days * 86400
    assert sample.total_w == 0.15 and sample.total_rail == "sum"  # no "Combined" line
    assert sample.extra["Some new counter"] == 42
    assert sample.extra["unparsed"] == "something odd"


def test_powermetrics_plist_stream_accumulates_energy_and_drops_a_torn_tail():
    one = plistlib.dumps({"processor": {"cpu_power": 1000.0, "cpu_energy": 1000,
                                        "gpu_energy": 10},
                          "gpu": {"freq_hz": 1.2e9, "idle_ratio": 0.75}})
    stream = one + b"\0" + one + b"\0" + one[: len(one) // 2]
    samples = parse_powermetrics_plist_stream(stream)
    assert [s.energy_j for s in samples] == [{"cpu": 1.0, "gpu": 0.01}, {"cpu": 2.0, "gpu": 0.02}]
    assert samples[0].clocks_mhz == {"gpu": 1200.0} and samples[0].gpu_util_pct == 25.0
    assert samples[0].total_w == 1.0 and samples[0].total_rail == "sum"


def test_macmon_older_field_shapes_and_wrong_types():
    # gpu_usage / ecpu_usage as [MHz, ratio] pairs (older macmon releases);
    # wrong types are kept in extra, never raise.
    line = json.dumps({"gpu_usage": [389, 0.25], "ecpu_usage": [1000, 0.5],
                       "all_power": 1.5, "cpu_power": "n/a", "memory": 5,
                       "temp": {"cpu_temp_avg": "hot", "gpu_temp_avg": 40},
                       "ecpu_cores": [1, {"active_ratio": "x", "freq_mhz": 900}],
                       "fans": "none", "new_field": {"a": 1}, "timestamp": "yesterday"})
    sample = parse_macmon_line(line)
    assert sample.gpu_util_pct == 25.0 and sample.clocks_mhz["gpu"] == 389
    assert sample.clocks_mhz["ecpu"] == 1000 and sample.extra["ecpu_usage_pct"] == 50.0
    assert sample.total_w == 1.5 and sample.total_rail == "all"
    assert sample.temps_c == {"gpu_avg": 40.0}
    assert sample.cpu_util_pct == [None, None] and sample.clocks_mhz["cpu1"] == 900
    assert sample.extra["cpu_power"] == "n/a" and sample.extra["memory"] == 5
    assert sample.extra["new_field"] == '{"a": 1}' and sample.extra["timestamp"] == "yesterday"
    assert sample.wall is None


# -- robustness ------------------------------------------------------------------

def all_tegrastats_lines():
    return [line for path in sorted(SAMPLES.glob("tegrastats-*.txt")) for line in tool_lines(path)]


def test_tegrastats_never_raises_on_truncated_or_garbage_lines():
    rng = random.Random(4)
    alphabet = "RAMSWPCUGD3_FEQ0123456789%@[],/ mWCcx()lfb-.:offVINtj$"
    for line in all_tegrastats_lines():
        for end in range(0, len(line), 5):
            parse_tegrastats_line(line[:end])
    for _ in range(300):
        garbage = "".join(rng.choice(alphabet) for _ in range(rng.randrange(80)))
        parse_tegrastats_line(garbage)
    assert parse_tegrastats_line("").to_json() == {}
    assert parse_tegrastats_line("\x00\xff garbage").extra["unparsed"] == "\x00\xff garbage"
    assert parse_tegrastats([]) == []
    assert parse_tegrastats(["", "   ", "# note"]) == []


def test_powermetrics_never_raises_but_valueerror():
    text = (DATA / "powermetrics" / "mac15_12-24F74-text.txt").read_text("utf-8")
    for end in range(0, len(text), 37):
        parse_powermetrics_text(text[:end])
    plist = (DATA / "powermetrics" / "mac16_5-macos25C56-plist.plist").read_bytes()
    for end in range(0, len(plist), len(plist) // 40):
        assert parse_powermetrics_plist_stream(plist[:end]) == []  # torn tail dropped
    rng = random.Random(7)
    for _ in range(50):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        try:
            parse_powermetrics_plist_stream(junk + b"\0" + junk + b"\0")
        except ValueError:
            pass
    assert parse_powermetrics_plist_stream(b"") == []
    assert parse_powermetrics_text("") == []
    with pytest.raises(ValueError, match="not a dict"):
        parse_powermetrics_plist_stream(plistlib.dumps([1, 2]) + b"\0")


def test_macmon_bad_lines():
    good = json.dumps({"sys_power": 5.0})
    assert len(parse_macmon([good, "", good[:-3]])) == 1  # torn last line dropped
    with pytest.raises(ValueError, match="line 1"):
        parse_macmon([good[:-3], good])
    with pytest.raises(ValueError, match="not an object"):
        parse_macmon_line("[1, 2]")
    with pytest.raises(ValueError):
        parse_macmon_line("")
    assert parse_macmon([]) == []


# -- docstring examples ------------------------------------------------------------

@pytest.mark.parametrize("module", ["sample", "tegrastats", "powermetrics", "macmon", "energy",
                                    "rapl", "hwmon"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"agents.telemetry.{module}"))
    assert result.failed == 0 and result.attempted > 0
