"""``elastiscope events``: reading an event log back into a timeline and a summary.

The logs here are written by hand in the agent's event format, so each test pins one reading
rule; the end-to-end case (a real crash and restart) is in test_cli.py.
"""

import json
import os
import subprocess
import sys

import pytest

from telemetry import timeline

pytestmark = pytest.mark.timeout(60)

RUN = "run-7"
T0 = 1_700_000_000_000


def ev(name, at, source="AGENT", **metadata):
    metadata.setdefault("run_id", RUN)
    metadata.setdefault("role", "trainer")
    return {"name": name, "source": source, "timestamp": T0 + at, "metadata": metadata}


def attempt(at, restart_count=0, rendezvous_ms=120.0):
    return [
        ev("torchelastic.worker.status.RENDEZVOUS", at - 1, state="RENDEZVOUS",
           duration_ms=rendezvous_ms),
        ev("elastiscope.rendezvous.complete", at, group_world_size=1, world_size=2,
           restart_count=restart_count),
        ev("torchelastic.worker.status.START", at + 5, "WORKER", global_rank=0, state="START"),
        ev("torchelastic.worker.status.START", at + 5, "WORKER", global_rank=1, state="START"),
        ev("elastiscope.agent.state_change", at + 6, state="HEALTHY", previous_state="INIT"),
    ]


def crash_and_restart_log():
    return [
        ev("elastiscope.endpoint.started", 0, url="http://127.0.0.1:9400"),
        ev("elastiscope.agent.run_start", 10, entry_point="train.py", local_world_size=2,
           max_restarts=3, hostname="node-a"),
        *attempt(200),
        ev("elastiscope.worker.failed", 5000, "WORKER", global_rank=1, local_rank=1,
           state="FAILED", exit_code=1, signal=None, worker_pid=4242, detect_latency_ms=3.5,
           error_message="RuntimeError: CUDA out of memory\nTried to allocate 2 GiB"),
        ev("elastiscope.agent.restart", 5050, reason="failure", remaining_restarts=2,
           max_restarts=3, failed_ranks="[1]"),
        *attempt(5400, restart_count=1, rendezvous_ms=300.0),
        ev("elastiscope.agent.run_end", 9000, state="SUCCEEDED", total_run_time=9),
        ev("torchelastic.worker.status.SUCCEEDED", 9001, state="SUCCEEDED"),
    ]


def write_log(path, events, extra_lines=()):
    lines = [json.dumps(e) for e in events] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def crash_log(tmp_path):
    return write_log(tmp_path / "run.jsonl", crash_and_restart_log())


def test_summary_counts_attempts_restarts_and_failures(crash_log):
    (run,) = timeline.read_runs(crash_log)
    assert (run.outcome, len(run.attempts), len(run.restarts)) == ("SUCCEEDED", 2, 1)
    (failure,) = run.failures
    assert (failure.global_rank, failure.exit_code, failure.attempt) == (1, 1, 0)
    assert failure.error == "RuntimeError: CUDA out of memory"  # the first line only


def test_restart_reason_and_failed_ranks(crash_log):
    (run,) = timeline.read_runs(crash_log)
    (restart,) = run.restarts
    assert (restart.reason, restart.failed_ranks, restart.remaining_restarts) == ("failure", [1], 2)


def test_restart_duration_runs_from_restart_to_healthy_again(crash_log):
    (run,) = timeline.read_runs(crash_log)
    assert run.restarts[0].duration_ms == (5400 + 6) - 5050


def test_rendezvous_durations_belong_to_their_attempts(crash_log):
    (run,) = timeline.read_runs(crash_log)
    assert [a.rendezvous_ms for a in run.attempts] == [120.0, 300.0]
    assert [a.outcome for a in run.attempts] == ["restart (failure)", "SUCCEEDED"]


def test_endpoint_event_before_run_start_belongs_to_that_run(crash_log):
    (run,) = timeline.read_runs(crash_log)
    assert run.endpoint_url == "http://127.0.0.1:9400"
    assert run.started == T0 + 10 and run.hostname == "node-a"


def test_rendered_timeline_names_failure_restart_and_outcome(crash_log):
    text = timeline.render(timeline.read_runs(crash_log), crash_log)
    assert "FAILED rank 1 (local 1), exit code 1: RuntimeError: CUDA out of memory" in text
    assert "restart #1 (failure of rank(s) 1); 2 left" in text
    assert "attempts: 2   restarts: 1 (failure: 1)   max restarts: 3" in text
    assert "rendezvous: 2 round(s), mean 210 ms, max 300 ms" in text


def test_error_message_falls_back_to_the_torch_error_file(tmp_path):
    raw = json.dumps({"message": {"message": "ValueError: bad batch\nmore",
                                  "extraInfo": {"py_callstack": "..."}}})
    events = [
        ev("elastiscope.agent.run_start", 0, max_restarts=0),
        *attempt(100),
        ev("elastiscope.worker.failed", 900, "WORKER", global_rank=0, local_rank=0, exit_code=1,
           raw_error=raw),
        ev("elastiscope.agent.run_end", 1000, state="FAILED"),
    ]
    (run,) = timeline.read_runs(write_log(tmp_path / "a.jsonl", events))
    assert run.failures[0].error == "ValueError: bad batch"


def test_signal_deaths_are_reported_by_signal_name(tmp_path):
    events = [
        ev("elastiscope.agent.run_start", 0, max_restarts=0),
        *attempt(100),
        ev("elastiscope.worker.failed", 900, "WORKER", global_rank=1, local_rank=1,
           exit_code=-9, signal="SIGKILL", error_message="Signal 9 (SIGKILL) received by PID 77"),
        ev("elastiscope.agent.run_end", 1000, state="FAILED"),
    ]
    path = write_log(tmp_path / "a.jsonl", events)
    assert "rank 1 (local 1), signal SIGKILL" in timeline.render(timeline.read_runs(path), path)


def test_torch_end_of_run_failures_count_when_there_are_no_live_ones(tmp_path):
    # A log written by torch's own agent: only the final per-worker FAILED events.
    events = [
        ev("torchelastic.worker.status.FAILED", 900, "WORKER", global_rank=0, local_rank=0,
           state="FAILED", raw_error="Traceback (most recent call last):\n  ...\nKeyError: 'x'"),
    ]
    (run,) = timeline.read_runs(write_log(tmp_path / "a.jsonl", events))
    assert [(f.global_rank, f.error) for f in run.failures] == [(0, "KeyError: 'x'")]


def test_live_failures_are_not_counted_twice_with_torchs_final_events(tmp_path):
    events = crash_and_restart_log()[:-2] + [
        ev("torchelastic.worker.status.FAILED", 8000, "WORKER", global_rank=1, state="FAILED",
           exit_code=1),
    ]
    events.insert(-1, ev("elastiscope.worker.failed", 7990, "WORKER", global_rank=1, local_rank=1,
                         exit_code=1, error_message="boom"))
    (run,) = timeline.read_runs(write_log(tmp_path / "a.jsonl", events))
    assert [f.error for f in run.failures] == ["RuntimeError: CUDA out of memory", "boom"]


def test_unreadable_lines_are_skipped_and_counted(tmp_path):
    path = write_log(tmp_path / "a.jsonl", crash_and_restart_log(),
                     extra_lines=["not json", '{"name": 3}', '{"half": '])
    runs = timeline.read_runs(path)
    assert runs[0].outcome == "SUCCEEDED"
    assert "3 line(s) of the log were not events" in timeline.render(runs, path)


def test_a_log_cut_short_reads_as_incomplete(tmp_path):
    events = crash_and_restart_log()[:6]
    (run,) = timeline.read_runs(write_log(tmp_path / "a.jsonl", events))
    assert run.outcome.startswith("INCOMPLETE")


def test_one_file_holding_two_runs_gives_two_summaries(tmp_path):
    second = [dict(e, metadata=dict(e["metadata"], run_id="run-8")) for e in crash_and_restart_log()]
    runs = timeline.read_runs(write_log(tmp_path / "a.jsonl", crash_and_restart_log() + second))
    assert [r.run_id for r in runs] == [RUN, "run-8"]
    assert [len(r.events) for r in runs] == [len(second), len(second)]


def test_a_directory_means_its_newest_log(tmp_path):
    old = write_log(tmp_path / "old.jsonl", crash_and_restart_log())
    new = write_log(tmp_path / "new.jsonl", crash_and_restart_log())
    os.utime(old, (1, 1))
    assert timeline.resolve_log_path(str(tmp_path)) == new


def test_an_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(timeline.TimelineError, match="no \\*.jsonl event log"):
        timeline.resolve_log_path(str(tmp_path))


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "agent", "events", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_events_command_prints_the_timeline(crash_log, tmp_path):
    result = run_cli(crash_log, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "restarts: 1 (failure: 1)" in result.stdout


def test_events_command_json_is_machine_readable(crash_log, tmp_path):
    result = run_cli(crash_log, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert (run["restart_count"], run["failure_count"], run["attempt_count"]) == (1, 1, 2)
    assert run["failures"][0]["error"] == "RuntimeError: CUDA out of memory"


def test_events_command_defaults_to_the_runs_directory(crash_log, tmp_path):
    (tmp_path / "runs").mkdir()
    write_log(tmp_path / "runs" / "x.jsonl", crash_and_restart_log())
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 0 and "runs/x.jsonl" in result.stdout, result.stderr


def test_all_lists_every_event_not_only_the_milestones(crash_log):
    runs = timeline.read_runs(crash_log)
    short, full = timeline.render(runs, crash_log), timeline.render(runs, crash_log, show_all=True)
    assert "torchelastic.worker.status.START" not in short
    assert full.count("torchelastic.worker.status.START") == 4


# ---- several nodes: one job timeline, root cause first ----------------------------------------


def node_log(group_rank, host, failures, run_id=RUN):
    """A node's log of a failed run: each failure is (global_rank, exit ms, root_cause or None)."""
    events = [
        ev("elastiscope.agent.run_start", 10, run_id=run_id, hostname=host, group_rank=group_rank,
           max_restarts=0, local_world_size=2),
        *[dict(e, metadata=dict(e["metadata"], run_id=run_id, group_rank=group_rank))
          for e in attempt(200)],
    ]
    for rank, exited, root in failures:
        # Told 600 ms after the exit (the root-cause wait): the timeline places it at the exit.
        marks = {} if root is None else {"root_cause": root, "root_cause_rank": 3}
        events.append(ev("elastiscope.worker.failed", exited + 600, "WORKER", run_id=run_id,
                         hostname=host, group_rank=group_rank, global_rank=rank,
                         local_rank=rank % 2, exit_code=1, detect_latency_ms=600,
                         error_message=f"error of rank {rank}",
                         stderr_log=f"/logs/{host}/{rank}/stderr.log", **marks))
    events.append(ev("elastiscope.agent.run_end", 9000, run_id=run_id, group_rank=group_rank,
                     state="FAILED", total_run_time=9))
    return events


def two_node_logs(tmp_path, marked=True):
    # Node 0's collateral failure is *told* first (node 1 waited longer), but rank 3 exited first.
    a = write_log(tmp_path / "a.jsonl", node_log(0, "node-a", [(1, 5100, False if marked else None)]))
    b = write_log(tmp_path / "b.jsonl", node_log(1, "node-b", [(3, 5000, True if marked else None),
                                                               (2, 5200, False if marked else None)]))
    return a, b


def test_two_node_logs_merge_into_one_job_with_the_root_cause_first(tmp_path):
    a, b = two_node_logs(tmp_path)
    (job,) = timeline.read_jobs([a, b])
    assert [r.hostname for r in job.runs] == ["node-a", "node-b"]
    assert [f.global_rank for f in job.root_causes] == [3]
    text = timeline.render_jobs([job])
    lines = text.splitlines()
    assert lines[0] == f"job {RUN}: 2 node(s): node 0 node-a, node 1 node-b"
    failed = [line for line in lines if "FAILED rank" in line]
    assert "[node 1 node-b] FAILED rank 3" in failed[0] and "[root cause]" in failed[0]
    assert "[collateral: after rank 3]" in failed[1] and "rank 1" in failed[1]
    root = next(i for i, line in enumerate(lines) if line.startswith("  root cause: rank 3"))
    assert root < lines.index(failed[0])
    assert "stderr log /logs/node-b/3/stderr.log" in lines[root]


def test_logs_without_root_cause_marks_name_the_earliest_failure(tmp_path):
    a, b = two_node_logs(tmp_path, marked=False)
    (job,) = timeline.read_jobs([a, b])
    assert [f.global_rank for f in job.root_causes] == [3]


def test_a_folder_of_one_jobs_node_logs_is_merged_by_the_command(tmp_path):
    two_node_logs(tmp_path)
    write_log(tmp_path / "other.jsonl", node_log(0, "node-c", [], run_id="older-run"))
    os.utime(tmp_path / "other.jsonl", (1, 1))
    result = run_cli(str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"job {RUN}: 2 node(s)") and "node-c" not in result.stdout
    data = json.loads(run_cli(str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json",
                              cwd=tmp_path).stdout)
    (job,) = data["jobs"]
    assert [f["global_rank"] for f in job["root_causes"]] == [3] and len(job["nodes"]) == 2


def test_a_missing_log_among_several_is_a_clear_error(tmp_path):
    a, _ = two_node_logs(tmp_path)
    result = run_cli(a, str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert result.returncode != 0 and "event log not found" in result.stderr
    assert "Traceback" not in result.stderr
