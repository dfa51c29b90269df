"""The guard of tests/outside_reads.py, which conftest.py installs for the whole session.

The real rule is checked on the real path (``<repository>/../shared``): the
audit hook refuses an ``open`` before it happens, so proving it reads nothing
from that folder, whether or not it exists. A fake layout in a tmp folder (a
``repo`` with a ``shared`` beside it) shows that reads, listings and globs
inside a guarded root fail and that reads elsewhere, /tmp included, do not.
Each test removes the reads it caused on purpose, so the conftest's check
after the test (which would fail it) sees none.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import outside_reads
import pytest
from outside_reads import READS, REPO, OutsideRepositoryRead, guarded_roots


@pytest.fixture
def caused_reads():
    """The reads this test has caused so far; removed before the conftest's check."""
    before = len(READS)
    yield lambda: READS[before:]
    del READS[before:]


def test_the_shared_folder_beside_this_checkout_is_guarded(caused_reads):
    shared = REPO.parent / "shared"
    assert str(shared) in outside_reads.ROOTS
    with pytest.raises(OutsideRepositoryRead, match="tests/data"):
        (shared / "telemetry-samples" / "README.md").read_text()
    with pytest.raises(OutsideRepositoryRead):
        open(os.path.join(REPO, "tests", "..", "..", "shared", "anything"), "rb")
    assert caused_reads() == [f"open {shared}/telemetry-samples/README.md",
                              f"open {shared}/anything"]


def test_a_fake_layout_trips_on_shared_only(tmp_path, monkeypatch, caused_reads):
    repo = tmp_path / "repo"
    (repo / "tests" / "data").mkdir(parents=True)
    (repo / "tests" / "data" / "ok.txt").write_text("in the repository\n")
    (tmp_path / "shared" / "telemetry-samples").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ok.txt").write_text("a sibling that is not shared\n")
    monkeypatch.setattr(outside_reads, "ROOTS", guarded_roots(repo))
    assert outside_reads.ROOTS == [str(tmp_path / "shared")]
    monkeypatch.chdir(repo)

    with pytest.raises(OutsideRepositoryRead):
        (tmp_path / "shared" / "telemetry-samples" / "tegrastats.txt").write_text("RAM 1/2MB\n")
    with pytest.raises(OutsideRepositoryRead):
        sorted((tmp_path / "shared").iterdir())
    with pytest.raises(OutsideRepositoryRead):
        glob.glob(str(tmp_path / "shared" / "*" / "*.txt"))
    with pytest.raises(OutsideRepositoryRead):  # relative, '..' folded before the check
        os.open("../shared/telemetry-samples/x", os.O_RDONLY)
    with pytest.raises(OutsideRepositoryRead):
        try:
            open("../shared/missing.txt")
        except OSError:  # not an OSError: code that handles a missing file cannot hide it
            pass
    refused = caused_reads()
    shared = str(tmp_path / "shared")
    assert len(refused) == 5 and all(read.split(" ", 1)[1].startswith(shared) for read in refused)

    # Everything else reads as usual: the repository, a sibling, /tmp, the standard library.
    assert (repo / "tests" / "data" / "ok.txt").read_text() == "in the repository\n"
    assert Path("../other/ok.txt").read_text().startswith("a sibling")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "repo", "shared"]
    assert Path(os.__file__).read_bytes()
    (tmp_path / "shared-notes.txt").write_text("a name that only starts with 'shared'\n")
    assert (tmp_path / "shared-notes.txt").read_text().startswith("a name")
    assert caused_reads() == refused


def test_the_conftest_fails_a_test_and_a_session_that_swallowed_the_error(tmp_path):
    """The real conftest.py and guard, copied into a fake checkout with a shared/ beside it."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    for name in ("conftest.py", "outside_reads.py"):
        (tests / name).write_bytes((REPO / "tests" / name).read_bytes())
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "sample.txt").write_text("recorded output\n")
    (tests / "test_reads.py").write_text(
        "from pathlib import Path\n"
        "SHARED = Path(__file__).resolve().parents[2] / 'shared'\n"
        "try:\n"
        "    FILES = sorted(SHARED.glob('*.txt'))  # at collection\n"
        "except Exception:\n"
        "    FILES = []\n"
        "def test_reads_shared_and_hides_it():\n"
        "    try:\n"
        "        (SHARED / 'sample.txt').read_text()\n"
        "    except Exception:\n"
        "        pass\n"
        "def test_reads_only_its_own_folder():\n"
        "    assert Path(__file__).read_text()\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tests)], cwd=tests.parent, capture_output=True, text=True,
                         timeout=120, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    # The test that read passes its call and fails in its teardown; the read at
    # collection, caught by the module, still fails the session.
    assert "2 passed, 1 error" in out, out
    assert "ERROR tests/test_reads.py::test_reads_shared_and_hides_it" in out, out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if " reads outside the repository " in line)
    assert lines[at + 1:at + 3] == [f"os.scandir {tmp_path}/shared",
                                    f"open {tmp_path}/shared/sample.txt"], out
