"""bench/against_commit.py: a bench script's figures for this tree against a commit's, for real.

One cheap run (the telemetry hot path, few calls, this tree against HEAD) shows the table has a
row per figure asked for, with both sides and their ratio; bad input is one line and status 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "against_commit.py"
sys.path.insert(0, str(REPO / "bench"))

import against_commit  # noqa: E402


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_numeric_leaves_are_dotted_paths_of_numbers_only():
    value = {"n": 3, "ok": True, "cases": {"a": {"p99_us": 1.5, "samples": [1, 2]}}, "name": "x"}
    assert against_commit.numeric_leaves(value) == {"n": 3.0, "cases.a.p99_us": 1.5}


@pytest.mark.timeout(240)
def test_one_run_against_head_tabulates_both_trees_and_their_ratio():
    proc = _run("telemetry_hotpath.py", "--baseline", "HEAD", "--reps", "1",
                "--key", "cases.a.*.p99_us", "--", "--n", "1000", timeout=230)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "new/old" in line]
    assert [row.split()[0] for row in rows] == ["cases.a.record.p99_us", "cases.a.put_metric.p99_us"]
    for row in rows:
        assert " new " in row and " old " in row
    worktrees = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True)
    assert "against-commit-" not in worktrees.stdout  # the baseline's checkout is removed


@pytest.mark.parametrize("args, says", [
    (["no_such_bench.py"], "no bench/no_such_bench.py"),
    (["telemetry_hotpath.py", "--reps", "0"], "--reps must be at least 1"),
    (["telemetry_hotpath.py", "--baseline", "no-such-commit"], "cannot check out 'no-such-commit'"),
])
def test_bad_input_is_one_line_and_exit_status_2(args, says):
    proc = _run(*args, timeout=30)
    assert proc.returncode == 2
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
