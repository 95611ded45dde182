"""The job-wide first failure: two agents on 127.0.0.1 (c10d), two workers each; global rank 3
raises and its peers die after it. Both agents name rank 3 as the root cause and every other
failure as collateral, in their events, and the merged timeline of both logs (given as two
paths, or as a folder) shows rank 3's exception first."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import ROOT, Cluster, wait_until

pytestmark = pytest.mark.timeout(240)

RAISE_ON_RANK = Path(__file__).resolve().parent / "workers" / "raise_on_rank.py"
ERROR = "ValueError: rank 3: the batch at step 5 is corrupt"


def events_cli(*args):
    result = subprocess.run([sys.executable, "-m", "agent", "events", *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def failed_job(tmp_path_factory):
    base = tmp_path_factory.mktemp("root_cause")
    # One attempt, and the node without rank 3 hosts the store, so that it outlives the other
    # node's exit and its own workers die of their peers' deaths, not of a lost store.
    with Cluster(base, script=RAISE_ON_RANK, script_args=["3"], nnodes="2:2", nproc_per_node=2,
                 max_restarts=0) as job:
        job.start_host()
        job.start()
        codes = job.wait_all(180)
        assert codes == [1, 1], job.diagnostics()
        yield job


def test_both_agents_name_rank_3_as_the_root_cause_and_the_rest_as_collateral(failed_job):
    ranks = set()
    for node in failed_job.nodes:
        failures = node.events("elastiscope.worker.failed")
        assert failures, node.diagnostics()
        for event in failures:
            md = event["metadata"]
            assert md["root_cause_rank"] == 3, md
            assert md["root_cause_error"].endswith(ERROR), md
            assert md["root_cause"] is (md["global_rank"] == 3), md
            ranks.add(md["global_rank"])
        (end,) = node.events("elastiscope.agent.run_end")
        assert end["metadata"]["state"] == "FAILED" and end["metadata"]["root_cause_rank"] == 3
    assert 3 in ranks and ranks & {0, 1}, ranks  # rank 3, and collateral on the other node


def _first_failed_line(text):
    return next(line for line in text.splitlines() if "FAILED rank" in line)


def test_the_merged_timeline_shows_rank_3_first(failed_job):
    logs = [node.event_log for node in failed_job.nodes]
    text = events_cli(*logs)
    lines = text.splitlines()
    assert lines[0].startswith(f"job {failed_job.rdzv_id}: 2 node(s)"), text
    root_lines = [line for line in lines if line.startswith("  root cause: rank 3 (local 1)")]
    assert len(root_lines) == 1 and ERROR in root_lines[0], text
    assert lines.index(root_lines[0]) < lines.index(_first_failed_line(text))
    first = _first_failed_line(text)
    assert "rank 3 (local 1)" in first and ERROR in first and "[root cause]" in first, text
    assert "[collateral: after rank 3]" in text


def test_a_folder_of_node_logs_reads_as_one_job(failed_job, tmp_path):
    for i, node in enumerate(failed_job.nodes):
        shutil.copy(node.event_log, tmp_path / f"node{i}.jsonl")
    text = events_cli(tmp_path)
    assert text.startswith(f"job {failed_job.rdzv_id}: 2 node(s)"), text
    assert "rank 3 (local 1)" in _first_failed_line(text)
    data = json.loads(events_cli(tmp_path, "--json"))
    (job,) = data["jobs"]
    assert [f["global_rank"] for f in job["root_causes"]] == [3]
    assert len(job["nodes"]) == 2
