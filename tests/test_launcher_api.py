"""agent.launcher behaves like torch.distributed.launcher.api: launching from Python.

Every test runs against torch's module and ours: the workers' return values by global rank,
torch's ChildFailedError for a failed worker, the agent's exception as it is, the rendezvous
shut down after the run, and LaunchConfig's defaults.
"""

from __future__ import annotations

import importlib
import os
from unittest.mock import Mock, patch

import pytest
from torch.distributed.elastic.agent.server.api import RunResult, WorkerState
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.utils.distributed import get_free_port

OURS, TORCH = "agent.launcher", "torch.distributed.launcher.api"


@pytest.fixture(params=[OURS, TORCH], ids=["ours", "torch"])
def api(request):
    return importlib.import_module(request.param)


def rank_times(factor):
    return int(os.environ["RANK"]) * factor


def fail():
    raise RuntimeError("worker failed on purpose")


def config(api, nproc=2, **kw):
    return api.LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="launcher-test",
        rdzv_backend="c10d", rdzv_endpoint=f"localhost:{get_free_port()}", max_restarts=0,
        monitor_interval=0.05, **kw,
    )


def test_launch_config_defaults(api, monkeypatch):
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    c = api.LaunchConfig(min_nodes=1, max_nodes=2, nproc_per_node=1)
    assert (c.role, c.rdzv_backend, c.max_restarts, c.start_method) == ("default_role", "etcd", 3, "spawn")
    assert c.rdzv_configs == {"timeout": 900} and c.shutdown_timeout == 30
    assert c.logs_specs is not None
    assert api.LaunchConfig(1, 1, 1, rdzv_timeout=5).rdzv_configs["timeout"] == 5
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "11")
    assert api.LaunchConfig(1, 1, 1).shutdown_timeout == 11
    with pytest.raises(ValueError):
        api.LaunchConfig(1, 1, 1, shutdown_timeout=-1)


def test_elastic_launch_returns_each_workers_value_by_global_rank(api):
    assert api.elastic_launch(config(api), rank_times)(10) == {0: 0, 1: 10}


def test_a_failed_worker_raises_child_failed_error(api):
    with pytest.raises(ChildFailedError) as failed:
        api.elastic_launch(config(api, nproc=1), fail)()
    assert failed.value.name == "fail"


def test_an_agent_exception_propagates_and_is_recorded(api):
    class Boom(Exception):
        pass

    agent = Mock()
    agent.run.side_effect = Boom
    with patch(f"{api.__name__}.LocalElasticAgent", return_value=agent), \
         patch(f"{api.__name__}.events.record") as record, pytest.raises(Boom):
        api.launch_agent(config(api), rank_times, [1])
    record.assert_called_once_with(agent.get_event_failed.return_value, "null")


def test_the_rendezvous_is_shut_down_after_the_run(api):
    agent = Mock()
    agent.run.return_value = RunResult(WorkerState.SUCCEEDED, return_values={0: "x"})
    handler = Mock()
    with patch(f"{api.__name__}.LocalElasticAgent", return_value=agent), \
         patch("torch.distributed.elastic.rendezvous.registry.get_rendezvous_handler",
               return_value=handler):
        assert api.launch_agent(config(api), rank_times, [1]) == {0: "x"}
    handler.shutdown.assert_called_once()
