"""The console: the agent's log lines through structlog, JSON or colours, with the run's identity."""

from __future__ import annotations

import io
import json
import logging

import telemetry
from telemetry import Event, EventSource, logs
from telemetry_jobs import isolated_telemetry, run_job  # noqa: F401  (fixture)


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_agent_log_lines_of_a_real_job_carry_run_id_role_and_group_rank(isolated_telemetry):
    stream = io.StringIO()
    telemetry.configure(log_format="json", log_stream=stream, prometheus=False, env={})
    run_job(run_id="console-run", role="trainer", max_restarts=0)
    lines = [line for line in json_lines(stream) if line["logger"] == "agent.api"]
    assert lines, stream.getvalue()
    assert all(line["run_id"] == "console-run" and line["role"] == "trainer" for line in lines)
    after_rendezvous = [line for line in lines if "starting worker group" in line["event"]]
    assert after_rendezvous and all(line["group_rank"] == 0 for line in after_rendezvous)
    assert {"timestamp", "level"} <= set(lines[0])


def test_auto_format_writes_json_when_not_on_a_terminal(isolated_telemetry):
    stream = io.StringIO()
    telemetry.configure(log_format="auto", log_stream=stream, prometheus=False, bridge_torch=False, env={})
    logging.getLogger("elastiscope.test").warning("disk %s", "full")
    (line,) = json_lines(stream)
    assert line["event"] == "disk full" and line["level"] == "warning"


def test_auto_format_writes_colours_on_a_terminal(isolated_telemetry):
    stream = TtyStream()
    telemetry.configure(log_format="auto", log_stream=stream, prometheus=False, bridge_torch=False, env={})
    logging.getLogger("agent.test").info("hello")
    out = stream.getvalue()
    assert "hello" in out and "\x1b[" in out


def test_console_format_off_a_terminal_is_readable_without_escape_codes(isolated_telemetry):
    stream = io.StringIO()
    telemetry.configure(log_format="console", log_stream=stream, run_id="r9", prometheus=False,
                        bridge_torch=False, env={})
    logging.getLogger("agent.test").info("hello")
    out = stream.getvalue()
    assert "hello" in out and "run_id=r9" in out and "\x1b[" not in out


def test_log_lines_are_not_printed_twice_through_the_root_logger(isolated_telemetry, caplog):
    stream = io.StringIO()
    telemetry.configure(log_format="json", log_stream=stream, prometheus=False, bridge_torch=False, env={})
    with caplog.at_level(logging.INFO):
        logging.getLogger("agent.test").info("once")
    assert len(json_lines(stream)) == 1
    assert not [r for r in caplog.records if r.getMessage() == "once"]


def test_console_events_prints_every_event_with_its_metadata(isolated_telemetry):
    stream = io.StringIO()
    p = telemetry.configure(log_format="json", log_stream=stream, console_events=True, prometheus=False,
                            bridge_torch=False, env={})
    telemetry.emit(Event("elastiscope.agent.restart", EventSource.AGENT,
                         metadata={"reason": "failure", "role": "trainer", "message": "m"}))
    assert p.flush(timeout=5)
    (line,) = [line for line in json_lines(stream) if line["logger"] == "elastiscope.events"]
    assert line["event"] == "elastiscope.agent.restart"
    assert (line["reason"], line["source"], line["event_message"]) == ("failure", "AGENT", "m")


def test_unconfigure_gives_the_loggers_back_to_the_root_logger(isolated_telemetry):
    telemetry.configure(log_format="json", log_stream=io.StringIO(), prometheus=False, bridge_torch=False, env={})
    logs.unconfigure_logging()
    assert logging.getLogger("agent").propagate is True
    assert not logging.getLogger("agent").handlers
