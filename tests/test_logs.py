"""The agent's log lines through structlog: JSON or colours, with the run's identity bound on."""

from __future__ import annotations

import io
import json
import logging

import telemetry
from telemetry import logs
from telemetry_jobs import run_job


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_agent_log_lines_of_a_real_job_carry_run_id_role_and_group_rank():
    stream = io.StringIO()
    telemetry.configure(log_format="json", log_stream=stream, prometheus=False, env={})
    run_job(run_id="console-run", role="trainer", max_restarts=0)
    lines = [line for line in json_lines(stream) if line["logger"] == "agent.api"]
    assert lines, stream.getvalue()
    assert all(line["run_id"] == "console-run" and line["role"] == "trainer" for line in lines)
    after_rendezvous = [line for line in lines if "starting worker group" in line["event"]]
    assert after_rendezvous and all(line["group_rank"] == 0 for line in after_rendezvous)
    assert {"timestamp", "level"} <= set(lines[0])


def test_auto_format_writes_json_when_not_on_a_terminal():
    stream = io.StringIO()
    telemetry.configure(log_format="auto", log_stream=stream, prometheus=False, env={})
    logging.getLogger("elastiscope.test").warning("disk %s", "full")
    (line,) = json_lines(stream)
    assert line["event"] == "disk full" and line["level"] == "warning"


def test_auto_format_writes_colours_on_a_terminal():
    stream = TtyStream()
    telemetry.configure(log_format="auto", log_stream=stream, prometheus=False, env={})
    logging.getLogger("agent.test").info("hello")
    out = stream.getvalue()
    assert "hello" in out and "\x1b[" in out


def test_console_format_off_a_terminal_is_readable_without_escape_codes():
    stream = io.StringIO()
    telemetry.configure(log_format="console", log_stream=stream, run_id="r9", prometheus=False, env={})
    logging.getLogger("agent.test").info("hello")
    out = stream.getvalue()
    assert "hello" in out and "run_id=r9" in out and "\x1b[" not in out


def test_log_lines_are_not_printed_twice_through_the_root_logger(caplog):
    stream = io.StringIO()
    telemetry.configure(log_format="json", log_stream=stream, prometheus=False, env={})
    with caplog.at_level(logging.INFO):
        logging.getLogger("agent.test").info("once")
    assert len(json_lines(stream)) == 1
    assert not [r for r in caplog.records if r.getMessage() == "once"]


def test_unconfigure_gives_the_loggers_back_to_the_root_logger():
    telemetry.configure(log_format="json", log_stream=io.StringIO(), prometheus=False, env={})
    logs.unconfigure_logging()
    assert logging.getLogger("agent").propagate is True
    assert not logging.getLogger("agent").handlers


def test_bind_adds_and_none_removes_a_key_on_every_line():
    stream = io.StringIO()
    telemetry.configure(log_format="json", log_stream=stream, prometheus=False, run_id="r1", env={})
    logs.bind(group_rank=3)
    logging.getLogger("agent.test").info("one")
    logs.bind(group_rank=None)
    logging.getLogger("agent.test").info("two")
    one, two = json_lines(stream)
    assert (one["run_id"], one["group_rank"]) == ("r1", 3)
    assert two["run_id"] == "r1" and "group_rank" not in two


def test_resolve_format_rejects_an_unknown_format():
    import pytest

    with pytest.raises(ValueError, match="log format"):
        logs.resolve_format("xml", io.StringIO())


def test_run_start_and_rendezvous_events_keep_the_log_identity_current():
    telemetry.configure(log_format="json", log_stream=io.StringIO(), prometheus=False, env={})
    telemetry.emit(telemetry.Event("elastiscope.agent.run_start", telemetry.EventSource.AGENT,
                                   metadata={"run_id": "r2", "role": "trainer", "group_rank": None}))
    telemetry.emit(telemetry.Event("elastiscope.rendezvous.complete", telemetry.EventSource.AGENT,
                                   metadata={"run_id": "r2", "role": "trainer", "group_rank": 1}))
    assert logs.bound() == {"run_id": "r2", "role": "trainer", "group_rank": 1}
