"""LocalElasticAgent with real worker processes on torch's static rendezvous over 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std

import agent.local as agent_local
from agent.api import WorkerState
from agent.local import LocalElasticAgent
from helpers.local_agent import (
    TESTS,
    capture_pipeline,
    create_times,
    kill_quietly,
    process_alive,
    read_pids,
    script_spec,
    static_spec,
)
from helpers.polling import wait_until
from telemetry import tracing
from telemetry.state import set_pipeline
from workers import callables

pytestmark = pytest.mark.timeout(60)

TORCHRUN_ENV = [
    "RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE",
    "WORLD_SIZE", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCHELASTIC_ERROR_FILE",
    "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TRACEPARENT",
]


@pytest.fixture
def telemetry():
    """A fresh pipeline per test: (memory sink with the events, metric capture)."""
    pipeline, memory, metrics = capture_pipeline()
    previous = set_pipeline(pipeline)
    yield memory, metrics
    set_pipeline(previous)


@pytest.fixture
def logs(tmp_path):
    return DefaultLogsSpecs(log_dir=str(tmp_path / "logs"))


def events_named(memory, name):
    return [e for e in memory.events() if e.name == name]


# ---- running to completion -----------------------------------------------------------------


def test_script_workers_that_exit_zero_make_the_group_succeed(telemetry, logs, tmp_path):
    spec = script_spec("record_env.py", tmp_path, nproc=4)
    result = LocalElasticAgent(spec, logs).run()
    assert result.state == WorkerState.SUCCEEDED
    assert result.return_values == {0: None, 1: None, 2: None, 3: None}
    assert sorted(p.name for p in tmp_path.glob("env.0.*.json")) == [f"env.0.{r}.json" for r in range(4)]


def test_callable_return_values_are_keyed_by_global_rank(telemetry, logs):
    spec = static_spec(callables.rank_tag, args=("v",), nproc=3)
    result = LocalElasticAgent(spec, logs, start_method="spawn").run()
    assert result.state == WorkerState.SUCCEEDED
    assert result.return_values == {0: "v-0-0", 1: "v-1-1", 2: "v-2-2"}


def test_every_worker_sees_the_torchrun_environment(telemetry, logs, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tracing.set_tracer_hooks(None, lambda: traceparent)
    try:
        spec = script_spec("record_env.py", tmp_path, nproc=4, max_restarts=2, role="trainer")
        result = LocalElasticAgent(spec, logs).run()
    finally:
        tracing.set_tracer_hooks(None, None)
    assert result.state == WorkerState.SUCCEEDED

    run_id = spec.rdzv_handler.get_run_id()
    master_port = str(spec.rdzv_handler.master_port)
    for rank in range(4):
        env = json.loads((tmp_path / f"env.0.{rank}.json").read_text())["env"]
        expected = {
            "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
            "ROLE_NAME": "trainer", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "4",
            "GROUP_WORLD_SIZE": "1", "ROLE_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": master_port, "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "2", "TORCHELASTIC_RUN_ID": run_id,
            "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
            "OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "0,1", "TRACEPARENT": traceparent,
        }
        assert {k: env.get(k) for k in expected} == expected
        error_file = Path(env["TORCHELASTIC_ERROR_FILE"])
        assert error_file.name == "error.json" and error_file.parent.name == str(rank)
        assert set(TORCHRUN_ENV) <= set(env)


def test_local_rank_macro_is_substituted_in_arguments(telemetry, logs, tmp_path):
    for rank in range(2):
        (tmp_path / f"out{rank}").mkdir()
    spec = script_spec("record_env.py", f"{tmp_path}/out${{local_rank}}", nproc=2)
    assert LocalElasticAgent(spec, logs).run().state == WorkerState.SUCCEEDED
    assert (tmp_path / "out0" / "env.0.0.json").exists()
    assert (tmp_path / "out1" / "env.0.1.json").exists()


# ---- failures and restarts -----------------------------------------------------------------


def test_failed_worker_is_restarted_and_its_live_failure_event_precedes_the_restart(telemetry, logs):
    memory, _ = telemetry
    spec = script_spec("fail_once.py", 0.5, nproc=4, max_restarts=1)
    result = LocalElasticAgent(spec, logs).run()
    assert result.state == WorkerState.SUCCEEDED

    seq = {e.name: s for s, e in reversed(memory.snapshot())}  # first occurrence of each
    failed = events_named(memory, "elastiscope.worker.failed")
    assert len(failed) == 1
    md = failed[0].metadata
    assert (md["global_rank"], md["local_rank"], md["exit_code"], md["state"]) == (0, 0, 1, "FAILED")
    assert md["signal"] is None and isinstance(md["worker_pid"], int)
    assert md["detect_latency_ms"] >= 0
    assert seq["elastiscope.worker.failed"] < seq["elastiscope.agent.restart"]
    restart = events_named(memory, "elastiscope.agent.restart")[0].metadata
    assert json.loads(restart["failed_ranks"]) == [0]


def test_failure_is_noticed_without_waiting_out_the_monitor_interval(telemetry, logs):
    spec = script_spec("exit_code.py", 3, nproc=2, monitor_interval=60)
    started = time.monotonic()
    result = LocalElasticAgent(spec, logs).run()
    assert result.state == WorkerState.FAILED
    # The base loop would sleep 60 s between passes; exit watching must wake it up.
    assert time.monotonic() - started < 20
    assert result.failures[0].exitcode == 3


def test_an_exit_right_after_a_quiet_wait_ends_the_next_wait_at_once(telemetry, logs, tmp_path):
    """A wait that times out has just looked for exits, so the monitor pass after it skips
    looking again; an exit in between must then end the next (60 s) wait at once."""
    killed = []

    class ExitBetweenWaitAndMonitor(LocalElasticAgent):
        def _wait_for_change(self, interval):
            if killed:
                return super()._wait_for_change(interval)
            wait_until(lambda: read_pids(tmp_path, 2), 20, "the workers to start")
            super()._wait_for_change(0.05)  # no exit yet: times out
            pid = read_pids(tmp_path, 2)[0]
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not process_alive(pid), 10, "the killed worker to exit")
            killed.append(pid)

    spec = script_spec("sleeper.py", tmp_path, nproc=2, monitor_interval=60)
    started = time.monotonic()
    try:
        result = ExitBetweenWaitAndMonitor(spec, logs).run()
    finally:
        (tmp_path / "go").touch()
    assert result.state == WorkerState.FAILED
    assert result.failures[0].exitcode == -signal.SIGKILL
    assert time.monotonic() - started < 20


def test_worker_killed_by_a_signal_is_reported_with_the_signal_name(telemetry, logs):
    memory, _ = telemetry
    result = LocalElasticAgent(script_spec("exit_code.py", "SIGKILL", nproc=2), logs).run()
    assert result.state == WorkerState.FAILED
    md = events_named(memory, "elastiscope.worker.failed")[0].metadata
    assert (md["exit_code"], md["signal"]) == (-signal.SIGKILL, "SIGKILL")
    assert "SIGKILL" in md["error_message"]


def test_workers_stopped_by_the_agent_are_terminated_not_failed(telemetry, logs, tmp_path):
    memory, _ = telemetry
    result = LocalElasticAgent(script_spec("exit_code.py", 1, nproc=3), logs).run()
    assert result.state == WorkerState.FAILED
    assert list(result.failures) == [0]
    final = {e.metadata["global_rank"]: e.metadata["state"]
             for e in memory.events() if e.name.startswith("torchelastic.worker.status.")
             and e.metadata["global_rank"] is not None and e.metadata["state"] != "START"}
    assert final[0] == "FAILED"
    assert all(state in ("TERMINATED", "SUCCEEDED") for rank, state in final.items() if rank)


def test_record_decorated_worker_error_reaches_the_failed_event(telemetry, logs):
    memory, _ = telemetry
    result = LocalElasticAgent(script_spec("record_boom.py", nproc=1), logs).run()
    assert result.state == WorkerState.FAILED
    md = events_named(memory, "elastiscope.worker.failed")[0].metadata
    assert "boom" in md["raw_error"] and "Traceback" in md["raw_error"]
    assert md["error_message"] == "ValueError: boom"


def test_callable_exception_reaches_the_failed_event(telemetry, logs):
    memory, _ = telemetry
    result = LocalElasticAgent(static_spec(callables.raise_boom, nproc=1), logs).run()
    assert result.state == WorkerState.FAILED
    md = events_named(memory, "elastiscope.worker.failed")[0].metadata
    assert "boom" in md["raw_error"] and "Traceback" in md["raw_error"]


# ---- warm standbys -------------------------------------------------------------------------


def _remember_standbys(local_agent, monkeypatch) -> list[int]:
    """Fill standbys as soon as workers start (no delay) and record their pids."""
    monkeypatch.setattr(agent_local, "STANDBY_DELAY_S", 0.0)
    pids: list[int] = []
    fill = local_agent._fill_standbys

    def fill_and_remember():
        fill()
        pids.extend(local_agent._standbys.pids)

    local_agent._fill_standbys = fill_and_remember
    return pids


def test_a_restarted_worker_from_a_standby_runs_like_a_fresh_interpreter(
    telemetry, logs, tmp_path, monkeypatch
):
    spec = script_spec("record_env.py", tmp_path, "--fail-first-attempt", nproc=2, max_restarts=1)
    agent = LocalElasticAgent(spec, logs)
    standby_pids = _remember_standbys(agent, monkeypatch)
    assert agent.run().state == WorkerState.SUCCEEDED
    for rank in range(2):
        cold = json.loads((tmp_path / f"env.0.{rank}.json").read_text())
        warm = json.loads((tmp_path / f"env.1.{rank}.json").read_text())
        assert warm["pid"] in standby_pids
        for key in ("argv", "file", "name", "path0", "main_globals", "modules"):
            assert warm[key] == cold[key], key
        cold_env, warm_env = cold["env"], warm["env"]
        assert warm_env.pop("TORCHELASTIC_RESTART_COUNT") == "1"
        cold_env.pop("TORCHELASTIC_RESTART_COUNT")
        cold_env.pop("TORCHELASTIC_ERROR_FILE"), warm_env.pop("TORCHELASTIC_ERROR_FILE")
        # Each attempt has progress records of its own.
        assert cold_env.pop("ELASTISCOPE_PROGRESS_FILE") != warm_env.pop("ELASTISCOPE_PROGRESS_FILE")
        # ... and stack dump files of their own (agent/stall_watch.py).
        assert cold_env.pop("ELASTISCOPE_STACK_FILE") != warm_env.pop("ELASTISCOPE_STACK_FILE")
        assert warm_env == cold_env


def test_a_module_worker_from_a_standby_runs_like_python_dash_m(telemetry, logs, tmp_path, monkeypatch):
    monkeypatch.chdir(TESTS)  # where `python -m workers.record_env` finds its package
    spec = static_spec(
        sys.executable, ("-u", "-m", "workers.record_env", str(tmp_path), "--fail-first-attempt"),
        nproc=1, max_restarts=1,
    )
    agent = LocalElasticAgent(spec, logs)
    standby_pids = _remember_standbys(agent, monkeypatch)
    assert agent.run().state == WorkerState.SUCCEEDED
    cold = json.loads((tmp_path / "env.0.0.json").read_text())
    warm = json.loads((tmp_path / "env.1.0.json").read_text())
    assert warm["pid"] in standby_pids
    for key in ("argv", "file", "name", "path0", "main_globals", "modules"):
        assert warm[key] == cold[key], key


def test_restart_takes_over_the_waiting_standby_interpreters(telemetry, logs, tmp_path, monkeypatch):
    spec = script_spec("record_env.py", tmp_path, "--fail-first-attempt", nproc=2, max_restarts=1)
    agent = LocalElasticAgent(spec, logs)
    standby_pids = _remember_standbys(agent, monkeypatch)
    assert agent.run().state == WorkerState.SUCCEEDED
    restarted = {json.loads((tmp_path / f"env.1.{r}.json").read_text())["pid"] for r in range(2)}
    assert len(standby_pids) == 2 and restarted == set(standby_pids)


def test_workers_start_cold_when_warm_standby_is_off(telemetry, logs, tmp_path, monkeypatch):
    spec = script_spec("record_env.py", tmp_path, "--fail-first-attempt", nproc=2, max_restarts=1)
    agent = LocalElasticAgent(spec, logs, warm_standby=False)
    fills = []
    monkeypatch.setattr(agent, "_fill_standbys", lambda: fills.append(1))
    assert agent.run().state == WorkerState.SUCCEEDED
    assert fills == [] and (tmp_path / "env.1.1.json").exists()


def test_no_standbys_without_a_possible_restart(telemetry, logs, tmp_path):
    agent = LocalElasticAgent(script_spec("sleeper.py", tmp_path, nproc=2), logs)
    fills = []
    agent._fill_standbys = lambda: fills.append(1)
    threading.Timer(0.6, lambda: (tmp_path / "go").touch()).start()
    assert agent.run().state == WorkerState.SUCCEEDED
    assert fills == []


# ---- logs ----------------------------------------------------------------------------------


def test_tee_prefixes_each_line_with_role_and_local_rank(telemetry, tmp_path, capfd):
    logs = DefaultLogsSpecs(log_dir=str(tmp_path), tee=Std.ALL)
    assert LocalElasticAgent(script_spec("print_lines.py", nproc=2), logs).run().is_failed() is False
    out, err = capfd.readouterr()
    for rank in range(2):
        assert f"[trainer{rank}]:out line {rank}\n" in out
        assert f"[trainer{rank}]:tail {rank}\n" in out
        assert f"[trainer{rank}]:err line {rank}\n" in err


def test_log_line_prefix_template_substitutes_role_rank_and_local_rank(telemetry, tmp_path, capfd):
    logs = DefaultLogsSpecs(log_dir=str(tmp_path), tee=Std.OUT)
    agent = LocalElasticAgent(
        script_spec("print_lines.py", nproc=2), logs,
        log_line_prefix_template="<${role_name}|${rank}|${local_rank}> ",
    )
    agent.run()
    out, _ = capfd.readouterr()
    assert "<trainer|1|1> out line 1\n" in out


def test_redirected_output_goes_to_per_rank_log_files_only(telemetry, tmp_path, capfd):
    logs = DefaultLogsSpecs(log_dir=str(tmp_path), redirects=Std.ALL)
    LocalElasticAgent(script_spec("print_lines.py", nproc=2), logs).run()
    out, err = capfd.readouterr()
    assert "out line" not in out and "err line" not in err
    attempt = next(tmp_path.glob("*/attempt_0"))
    assert (attempt / "1" / "stdout.log").read_text() == "out line 1\ntail 1"
    assert (attempt / "1" / "stderr.log").read_text() == "err line 1\n"


def test_local_ranks_filter_tees_only_the_selected_ranks(telemetry, tmp_path, capfd):
    logs = DefaultLogsSpecs(log_dir=str(tmp_path), tee=Std.ALL, local_ranks_filter={1})
    LocalElasticAgent(script_spec("print_lines.py", nproc=2), logs).run()
    out, _ = capfd.readouterr()
    assert "[trainer1]:out line 1" in out and "out line 0" not in out
    assert (next(tmp_path.glob("*/attempt_0")) / "0" / "stdout.log").read_text().startswith("out line 0")


# ---- resources and status ------------------------------------------------------------------


def test_resource_samples_are_published_per_worker(telemetry, logs, tmp_path):
    _, metrics = telemetry
    agent = LocalElasticAgent(script_spec("sleeper.py", tmp_path, nproc=2), logs,
                              resource_sample_interval=0.05)
    samples = lambda: len(metrics.values("workers.trainer.worker.1.rss_bytes"))  # noqa: E731

    def release_after_samples_of_started_workers():
        wait_until(lambda: read_pids(tmp_path, 2), 20)  # past interpreter start-up
        enough = samples() + 3
        wait_until(lambda: samples() >= enough, 20)
        (tmp_path / "go").touch()

    threading.Thread(target=release_after_samples_of_started_workers, daemon=True).start()
    assert agent.run().state == WorkerState.SUCCEEDED
    for rank in range(2):
        rss = metrics.values(f"workers.trainer.worker.{rank}.rss_bytes")
        cpu = metrics.values(f"workers.trainer.worker.{rank}.cpu_seconds")
        assert rss[-1] > 1_000_000
        assert cpu == sorted(cpu) and cpu[-1] > 0


@pytest.mark.parametrize("tapped", [False, True], ids=["plain", "tapped"])
def test_monitor_pass_timings_reach_the_pipeline_and_a_torch_handler_once_each(telemetry, logs, tapped):
    """The @prof points of every monitor pass go to the pipeline directly and to the handler
    configured on torch's metric stream; with Elastiscope's tap on that stream they must not
    reach the pipeline a second time through it."""
    import torch.distributed.elastic.metrics as torch_metrics

    from agent import torch_patches

    _, metrics = telemetry
    user = []

    class UserHandler(torch_metrics.MetricHandler):
        def emit(self, data):
            user.append(data.name)

    torch_metrics.configure(UserHandler(), "torchelastic")
    try:
        agent = LocalElasticAgent(script_spec("exit_code.py", 0, nproc=2), logs)
        if not tapped:  # building an agent applies the patches, the metric tap among them
            torch_patches.remove()
        result = agent.run()
    finally:
        torch_patches.remove()
        torch_metrics.configure(torch_metrics.NullMetricHandler(), "torchelastic")
    assert result.state == WorkerState.SUCCEEDED
    for name in ("LocalElasticAgent._monitor_workers.success",
                 "LocalElasticAgent._monitor_workers.duration.ms"):
        passes = len(metrics.values(name))
        assert passes >= 1 and user.count(name) == passes, name


def test_status_snapshot_describes_running_workers_from_another_thread(telemetry, logs, tmp_path):
    agent = LocalElasticAgent(script_spec("sleeper.py", tmp_path, nproc=2, max_restarts=3), logs)
    seen = {}

    def observe():
        def running():
            snap = agent.status_snapshot()
            ok = snap["state"] == "HEALTHY" and all(w["pid"] for w in snap["workers"])
            return snap if ok and read_pids(tmp_path, 2) else None

        seen["running"] = wait_until(running, 20)
        (tmp_path / "go").touch()

    threading.Thread(target=observe, daemon=True).start()
    assert agent.run().state == WorkerState.SUCCEEDED
    snap = seen["running"]
    assert {k: snap[k] for k in ("role", "state", "restarts_used", "remaining_restarts",
                                 "max_restarts", "group_rank", "group_world_size", "world_size")} == {
        "role": "trainer", "state": "HEALTHY", "restarts_used": 0, "remaining_restarts": 3,
        "max_restarts": 3, "group_rank": 0, "group_world_size": 1, "world_size": 2,
    }
    assert snap["run_id"] == agent.get_worker_group().spec.rdzv_handler.get_run_id()
    assert [w["pid"] for w in snap["workers"]] == read_pids(tmp_path, 2)
    for rank, w in enumerate(snap["workers"]):
        assert (w["local_rank"], w["global_rank"], w["role_rank"]) == (rank, rank, rank)
        assert w["state"] == "HEALTHY"
        assert w["exit_code"] is None and abs(w["start_time"] - time.time()) < 60
        assert set(w) == {"local_rank", "global_rank", "role_rank", "pid", "state", "start_time",
                          "exit_code", "cpu_seconds", "rss_bytes", "progress", "straggler", "stalled"}
        assert (w["straggler"], w["stalled"]) == (False, False)  # the live page's marks (issue 16)
        assert w["progress"] == {"reporting": False}  # the sleeper makes no step
    final = agent.status_snapshot()
    assert final["state"] == "SUCCEEDED" and [w["exit_code"] for w in final["workers"]] == [0, 0]


# ---- signals and orphans -------------------------------------------------------------------


def test_previous_signal_handlers_come_back_after_run(telemetry, logs):
    before = signal.getsignal(signal.SIGTERM)
    LocalElasticAgent(script_spec("exit_code.py", 0, nproc=1), logs).run()
    assert signal.getsignal(signal.SIGTERM) is before


def _pythonpath() -> str:
    return os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])


def _start_agent_process(tmp_path: Path, nproc: int, shutdown_timeout: int):
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "helpers" / "agent_runner.py"), str(events), str(nproc),
         str(shutdown_timeout), "sleeper.py", str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=_pythonpath()),
    )
    return proc, events


def test_sigkilled_agent_leaves_no_worker_alive(tmp_path):
    agent, _ = _start_agent_process(tmp_path, nproc=4, shutdown_timeout=30)
    pids = []
    try:
        pids = wait_until(lambda: read_pids(tmp_path, 4), 30)
        born = create_times(pids)
        agent.kill()
        agent.wait(10)
        wait_until(lambda: not any(process_alive(p, born[p]) for p in pids), 2.0)
    finally:
        agent.kill()
        kill_quietly(pids)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signalled_agent_stops_workers_and_records_a_signaled_run_end(tmp_path, sig):
    grace = 20  # long: workers that die on the signal must not be waiting for the SIGKILL
    agent, events = _start_agent_process(tmp_path, nproc=4, shutdown_timeout=grace)
    pids = []
    try:
        pids = wait_until(lambda: read_pids(tmp_path, 4), 30)
        born = create_times(pids)
        agent.send_signal(sig)
        signalled = time.monotonic()
        assert agent.wait(grace) == 128 + sig
        wait_until(lambda: not any(process_alive(p, born[p]) for p in pids), 1.0)
        assert time.monotonic() - signalled < grace / 2
        records = [json.loads(line) for line in events.read_text().splitlines()]
        run_end = [r for r in records if r["name"] == "elastiscope.agent.run_end"]
        assert [r["metadata"]["state"] for r in run_end] == ["SIGNALED"]
    finally:
        agent.kill()
        kill_quietly(pids)
