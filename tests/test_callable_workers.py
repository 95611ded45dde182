"""Callable workers that share a gloo group leave together, as torch's do.

A rank that returns must not take its end of the group's connections away while a peer is
still inside its last collective: the peer would abort (``terminate called without an active
exception``, SIGABRT). torch keeps each returned worker until every local worker has returned.
"""

from __future__ import annotations

import pytest

from agent.api import WorkerState
from agent.local import LocalElasticAgent
from helpers.local_agent import capture_pipeline, static_spec
from telemetry.state import set_pipeline
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from workers import callables, dist_callables

RUNS = 20
WORKERS = 4


@pytest.fixture
def telemetry():
    pipeline, memory, _ = capture_pipeline()
    previous = set_pipeline(pipeline)
    yield memory
    set_pipeline(previous)


def test_a_returned_callable_worker_stays_until_its_peers_have_returned(telemetry, tmp_path):
    spec = static_spec(callables.return_or_watch_first_rank, args=(str(tmp_path), 1.0), nproc=2)
    logs = DefaultLogsSpecs(log_dir=str(tmp_path / "logs"))
    result = LocalElasticAgent(spec, logs, start_method="spawn").run()
    assert result.state == WorkerState.SUCCEEDED
    assert result.return_values == {0: True, 1: True}, "rank 0 exited while rank 1 still ran"


# The start method torch's tests use. Under fork and forkserver a worker leaves through
# os._exit, skipping the interpreter's finalisation, and the abort does not show. Twenty cold
# runs of four workers take about 100 s on two cores, so CI runs the contract test above.
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gloo_callables_that_return_right_after_a_collective_all_succeed(telemetry, tmp_path):
    expected = {rank: sum(range(1, WORKERS + 1)) for rank in range(WORKERS)}
    outcomes = []
    for run in range(RUNS):
        spec = static_spec(dist_callables.all_reduce_then_return, nproc=WORKERS)
        logs = DefaultLogsSpecs(log_dir=str(tmp_path / f"run{run}"))
        result = LocalElasticAgent(spec, logs, start_method="spawn").run()
        outcomes.append((result.state, result.return_values, result.failures))
    failed = [(i, o) for i, o in enumerate(outcomes) if o[0] != WorkerState.SUCCEEDED]
    assert not failed, f"{len(failed)} of {RUNS} runs failed: {failed[:3]}"
    assert all(values == expected for _, values, _ in outcomes)
