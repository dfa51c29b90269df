"""The farm's alert rules: in sync with the code, valid, and unit-tested with the real promtool.

promtool comes with the prometheus package that ``make test`` installs; a
missing one fails here with the install command, it is never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator import alerts

REPO = Path(__file__).resolve().parents[1]
RULE_TESTS = REPO / "tests" / "data" / "alerts" / "edgefarm.rules.test.yml"


def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.fail("promtool is missing: `sudo apt-get install prometheus` (Debian/Ubuntu) or "
                    "`brew install prometheus` (macOS); `make test` installs it", pytrace=False)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_the_committed_rules_are_what_the_code_renders() -> None:
    assert alerts.check(REPO / alerts.RULES_FILE) == []


def test_promtool_check_rules_passes() -> None:
    result = run("check", "rules", str(alerts.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts.RULES)} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = run("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_a_unit_test() -> None:
    tested = RULE_TESTS.read_text()
    for rule in alerts.RULES:
        assert f"alertname: {rule['alert']}" in tested, rule["alert"]


@pytest.mark.parametrize("old, new", [
    ("> 600", "> 6000"),             # a stall would never be noticed
    ("> 0.25", "> 0.75"),            # half the attempts failing would pass
    ('"for": "5m"', '"for": "15m"'),  # device down reported too late
])
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    """The same tests against a mutated copy of the rules must fail: they can fail."""
    source = Path(alerts.__file__).read_text()
    assert old in source
    namespace: dict[str, object] = {"__name__": "mutated_alerts"}
    exec(compile(source.replace(old, new, 1), "mutated_alerts", "exec"), namespace)
    rules_dir = tmp_path / "dashboards" / "prometheus"
    rules_dir.mkdir(parents=True)
    (rules_dir / "edgefarm.rules.yml").write_text(namespace["render_rules"]())  # type: ignore[operator]
    tests_dir = tmp_path / "tests" / "data" / "alerts"
    tests_dir.mkdir(parents=True)
    (tests_dir / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = subprocess.run([promtool(), "test", "rules", str(tests_dir / RULE_TESTS.name)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr
