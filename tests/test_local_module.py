"""agent.local offers the names of torch's local_elastic_agent module that code imports or patches.

Run against torch's module and ours: the environment-variable names, and ``start_processes``,
which a test patches to stand in for the worker processes (the agent then closes whatever it
returned exactly once).
"""

from __future__ import annotations

import importlib
import uuid
from unittest.mock import Mock, patch

import pytest
import torch.distributed.elastic.rendezvous.registry as rdzv_registry
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.utils.distributed import get_free_port

OURS, TORCH = "agent.local", "torch.distributed.elastic.agent.server.local_elastic_agent"
API = {OURS: "agent.api", TORCH: "torch.distributed.elastic.agent.server.api"}


@pytest.fixture(params=[OURS, TORCH], ids=["ours", "torch"])
def local(request):
    return importlib.import_module(request.param)


def happy():
    return None


def test_environment_variable_names(local):
    for name in ("TORCHELASTIC_ENABLE_FILE_TIMER", "TORCHELASTIC_TIMER_FILE",
                 "TORCHELASTIC_HEALTH_CHECK_PORT", "TORCHELASTIC_UNINTERRUPTIBLE_STATE_TIMEOUT"):
        assert getattr(local, name) == name
        assert name in local.__all__


def test_patching_start_processes_replaces_the_workers(local, tmp_path):
    api = importlib.import_module(API[local.__name__])
    params = RendezvousParameters(backend="static", endpoint=f"127.0.0.1:{get_free_port()}",
                                  run_id=str(uuid.uuid4().int), min_nodes=1, max_nodes=1, rank=0)
    spec = api.WorkerSpec(role="r", local_world_size=1, entrypoint=happy,
                          rdzv_handler=rdzv_registry.get_rendezvous_handler(params),
                          max_restarts=0, monitor_interval=0.01)
    processes = Mock()
    processes.pids.return_value = {0: 0}
    with patch(f"{local.__name__}.start_processes", return_value=processes) as start:
        agent = local.LocalElasticAgent(spec, logs_specs=DefaultLogsSpecs(log_dir=str(tmp_path)))
        succeeded = api.RunResult(state=api.WorkerState.SUCCEEDED, return_values={0: 0})
        with patch.object(agent, "_monitor_workers", return_value=succeeded):
            agent.run()
    start.assert_called_once()
    processes.close.assert_called_once()
