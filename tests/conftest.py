"""Every test starts with telemetry as a fresh process has it: one reset after each test undoes
whatever the test configured (pipeline, tracer, log handler, exit handlers, /metrics registry)."""

from __future__ import annotations

import pytest

from telemetry import state


@pytest.fixture(autouse=True)
def fresh_telemetry():
    yield
    state.reset()
