"""``edgefarm telemetry parse`` (orchestrator/cli/telemetry_cmd.py), invoked on the sub-app."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.telemetry_cmd import telemetry_app

DATA = Path(__file__).parent / "data" / "telemetry"


def run(*args):
    return CliRunner().invoke(telemetry_app, ["parse", *map(str, args)])


def json_lines(output):
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_tegrastats_file_gives_one_json_object_per_line(tmp_path):
    log = tmp_path / "tegrastats.log"
    log.write_text((DATA / "tegrastats" / "agx-thor-r38.4.txt").read_text()
                   + (DATA / "tegrastats" / "orin-nano-jp6-idle.txt").read_text())
    result = run("--format", "tegrastats", log)
    assert result.exit_code == 0, result.output
    samples = json_lines(result.output)
    assert [s["total_rail"] for s in samples] == ["VIN", "VDD_IN"]
    assert "wall" not in samples[0]


def test_tegrastats_utc_offset_sets_wall(tmp_path):
    log = tmp_path / "t.log"
    log.write_text("09-01-2025 10:55:25 RAM 1313/30697MB\n")
    result = run("--format", "tegrastats", "--utc-offset", "+02:00", log)
    assert result.exit_code == 0, result.output
    # 2025-09-01 08:55:25 UTC = 20332 days * 86400 + 32125 s
    assert json_lines(result.output)[0]["wall"] == 1756716925.0
    assert run("--format", "tegrastats", "--utc-offset", "UTC", log).exit_code == 0
    bad = run("--format", "tegrastats", "--utc-offset", "two hours", log)
    assert bad.exit_code == 2 and "not an offset" in bad.output


@pytest.mark.parametrize(("name", "rail"), [("mac16_5-macos25C56-plist.plist", "combined"),
                                            ("mac15_12-24F74-text.txt", "combined")])
def test_powermetrics_plist_or_text_is_detected(name, rail):
    result = run("--format", "powermetrics", DATA / "powermetrics" / name)
    assert result.exit_code == 0, result.output
    (sample,) = json_lines(result.output)
    assert sample["total_rail"] == rail


def test_macmon_lines(tmp_path):
    log = tmp_path / "macmon.jsonl"
    log.write_text('{"sys_power": 5.5, "all_power": 0.5}\n{"sys_power": 6.0}\n')
    result = run("-f", "MACMON", log)
    assert result.exit_code == 0, result.output
    assert [s["total_w"] for s in json_lines(result.output)] == [5.5, 6.0]


def test_bad_files_exit_2_with_one_message(tmp_path):
    missing = run("--format", "tegrastats", tmp_path / "nope.log")
    assert missing.exit_code == 2
    assert missing.output.startswith("error: cannot read") and "No such file" in missing.output

    garbage = tmp_path / "garbage.log"
    garbage.write_text("hello world\nnot telemetry\n")
    for fmt in ("tegrastats", "powermetrics"):
        result = run("--format", fmt, garbage)
        assert result.exit_code == 2
        assert f"no {fmt} sample found" in result.output

    result = run("--format", "macmon", garbage)
    assert result.exit_code == 2 and "not macmon output: line 1" in result.output

    plist = DATA / "powermetrics" / "mac16_5-macos25C56-plist.plist"
    wrong = run("--format", "macmon", plist)
    assert wrong.exit_code == 2 and "not macmon output" in wrong.output

    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert run("--format", "tegrastats", empty).exit_code == 2

    assert run("--format", "bogus", garbage).exit_code == 2


def test_help_lists_parse():
    result = CliRunner().invoke(telemetry_app, ["--help"])
    assert result.exit_code == 0 and "parse" in result.output
