"""Console outputs: the structlog event printer (``console_events``) and the ``console`` and
``framework_logger`` destinations of ``record``."""

from __future__ import annotations

import io
import json
import logging

import telemetry
from telemetry import Event, EventSource, get_pipeline, record


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_console_events_prints_every_event_with_its_metadata():
    stream = io.StringIO()
    p = telemetry.configure(log_format="json", log_stream=stream, console_events=True, prometheus=False, env={})
    telemetry.emit(Event("elastiscope.agent.restart", EventSource.AGENT,
                         metadata={"reason": "failure", "role": "trainer", "message": "m"}))
    assert p.flush(timeout=5)
    (line,) = [line for line in json_lines(stream) if line["logger"] == "elastiscope.events"]
    assert line["event"] == "elastiscope.agent.restart"
    assert (line["reason"], line["source"], line["event_message"]) == ("failure", "AGENT", "m")


def test_console_destination_writes_torchs_json_to_stderr(capsys):
    record(Event("to.console", EventSource.AGENT, 1, {"k": "v"}), "console")
    assert get_pipeline().flush(5)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line) == {"name": "to.console", "source": "AGENT", "timestamp": 1, "metadata": {"k": "v"}}


def test_framework_logger_destination_logs_through_torchelastic_events(caplog):
    with caplog.at_level(logging.INFO, logger="torchelastic.events"):
        record(Event("to.logger", EventSource.AGENT, 1), "framework_logger")
        assert get_pipeline().flush(5)
    (logged,) = [r for r in caplog.records if r.name == "torchelastic.events"]
    assert json.loads(logged.getMessage())["name"] == "to.logger"
