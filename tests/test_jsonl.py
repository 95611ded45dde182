"""The event log: one torch Event JSON per line, written as it happens, readable by torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from torch.distributed.elastic.events import Event as TorchEvent

import telemetry
from telemetry import Event, EventSource
from telemetry.sinks import jsonl
from telemetry.sinks.jsonl import JsonlEventSink
from telemetry_jobs import run_job, telemetry_isolation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def c10d_run_log(tmp_path_factory):
    """The event log of one real job: c10d rendezvous, one failed attempt, then success."""
    directory = tmp_path_factory.mktemp("events")
    with telemetry_isolation():
        telemetry.configure(event_log=str(directory) + "/", log_format="json", env={})
        result = run_job(fail_attempts=1, max_restarts=1, backend="c10d", run_id="jsonl-run")
        assert telemetry.shutdown(timeout=5)
    assert result.state.value == "SUCCEEDED"
    return directory / "jsonl-run.jsonl"


def test_every_line_of_a_real_run_log_round_trips_through_torch(c10d_run_log):
    lines = c10d_run_log.read_text().splitlines()
    assert len(lines) > 20
    for line in lines:
        ours = json.loads(line)
        theirs = TorchEvent.deserialize(line)
        assert (theirs.name, theirs.source.value, theirs.timestamp, theirs.metadata) == (
            ours["name"], ours["source"], ours["timestamp"], ours["metadata"])
        assert json.loads(theirs.serialize()) == ours


def test_run_log_holds_the_run_from_start_to_end_in_order(c10d_run_log):
    names = [json.loads(line)["name"] for line in c10d_run_log.read_text().splitlines()]
    agent_names = [n for n in names if not n.startswith("elastiscope.rendezvous.") or n.endswith(".complete")]
    assert agent_names[0] == "elastiscope.agent.run_start"
    assert agent_names[-1] == "elastiscope.agent.run_end"
    assert names.count("torchelastic.worker.status.START") == 4  # 2 workers x 2 attempts
    assert "elastiscope.agent.restart" in names


def test_torch_rendezvous_events_are_bridged_into_the_log(c10d_run_log):
    events = [json.loads(line) for line in c10d_run_log.read_text().splitlines()]
    joins = [e for e in events if e["name"] == "elastiscope.rendezvous.DynamicRendezvousHandler.next_rendezvous"]
    assert joins, "no rendezvous events from torch"
    md = joins[0]["metadata"]
    assert md["run_id"] == "jsonl-run"
    assert md["node_state"] in ("INIT", "RUNNING", "SUCCEEDED", "FAILED")
    assert md["torch_event"].endswith("DynamicRendezvousHandler.next_rendezvous")
    assert {"message", "hostname", "pid", "master_endpoint", "rank", "local_id", "error_trace"} <= set(md)


def test_directory_path_means_one_file_named_after_the_run_id(tmp_path):
    sink = JsonlEventSink(directory=tmp_path, run_id="run/7")
    sink.emit(Event("a", EventSource.AGENT, 1, {}))
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["run_7.jsonl"]


def test_directory_without_run_id_takes_the_first_event_run_id(tmp_path):
    sink = JsonlEventSink(directory=tmp_path)
    sink.emit(Event("elastiscope.agent.run_start", EventSource.AGENT, 1, {"run_id": "abc"}))
    sink.emit(Event("b", EventSource.AGENT, 2, {"run_id": "other"}))
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["abc.jsonl"]
    assert len((tmp_path / "abc.jsonl").read_text().splitlines()) == 2


def test_metadata_json_cannot_encode_is_written_as_text(tmp_path):
    sink = JsonlEventSink(tmp_path / "log.jsonl")
    sink.emit(Event("a", EventSource.AGENT, 1, {"path": tmp_path}))
    sink.close()
    line = (tmp_path / "log.jsonl").read_text()
    assert TorchEvent.deserialize(line.strip()).metadata["path"] == str(tmp_path)


def test_close_fsyncs_the_file(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(jsonl.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    sink = JsonlEventSink(tmp_path / "log.jsonl")
    sink.emit(Event("a", EventSource.AGENT, 1, {}))
    sink.close()
    assert len(synced) == 1


def test_delivered_events_survive_a_sigkill(tmp_path):
    """No user-space buffer: once the sink has taken an event, only the kernel holds it."""
    log_path = tmp_path / "log.jsonl"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {REPO!r})
        import telemetry
        p = telemetry.configure(event_log={str(log_path)!r}, prometheus=False, log_format="json", env={{}})
        for i in range(200):
            telemetry.emit(telemetry.Event("e", telemetry.EventSource.AGENT, metadata={{"i": i}}))
        deadline = time.monotonic() + 20
        while p.stats()["jsonl"]["delivered"] < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    lines = log_path.read_text().splitlines()
    assert [json.loads(line)["metadata"]["i"] for line in lines] == list(range(200))


def test_an_unwritable_event_log_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(telemetry.ConfigError, match="event log"):
        telemetry.config.resolve_settings(event_log=blocker / "sub" / "log.jsonl", env={})
