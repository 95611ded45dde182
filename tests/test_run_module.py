"""agent.run behaves like torch.distributed.run: torchrun's module API, called from code.

Every test runs against torch's module and ours. Usage errors raise ValueError, a failed
worker raises torch's ChildFailedError, and an exception of the agent reaches the caller.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from unittest.mock import Mock, patch

import pytest
from torch.distributed.elastic.agent.server.api import RunResult, WorkerState
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

OURS, TORCH = "agent.run", "torch.distributed.run"
# Where each module's launcher finds the agent class and the agent class itself.
LAUNCHER = {OURS: "agent.launcher", TORCH: "torch.distributed.launcher.api"}
AGENT = {OURS: "agent.local.LocalElasticAgent",
         TORCH: "torch.distributed.elastic.agent.server.local_elastic_agent.LocalElasticAgent"}


@pytest.fixture(params=[OURS, TORCH], ids=["ours", "torch"])
def launch(request):
    return importlib.import_module(request.param)


@pytest.fixture
def script(tmp_path):
    """A worker that touches a file named after its rank, or exits 3 when asked to fail."""
    path = tmp_path / "worker.py"
    path.write_text(
        "import os, sys\n"
        "if '--fail' in sys.argv: sys.exit(3)\n"
        "open(os.path.join(sys.argv[1], os.environ['RANK']), 'w').close()\n"
    )
    return str(path)


def standalone(nproc=1):
    return ["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.1"]


def test_parse_min_max_nnodes(launch):
    assert launch.parse_min_max_nnodes("1") == (1, 1)
    assert launch.parse_min_max_nnodes("2:20") == (2, 20)
    with pytest.raises(RuntimeError):
        launch.parse_min_max_nnodes("2:20:30")


def test_small_helpers(launch):
    assert launch.determine_local_world_size("3") == 3
    with pytest.raises(ValueError):
        launch.determine_local_world_size("unknown")
    static = argparse.Namespace(rdzv_backend="static", rdzv_endpoint="", master_addr="h",
                                master_port=7)
    assert launch.get_rdzv_endpoint(static) == "h:7"
    assert launch.get_rdzv_endpoint(argparse.Namespace(rdzv_backend="c10d", rdzv_endpoint="e:1")) == "e:1"
    assert launch.get_use_env(argparse.Namespace()) is True
    assert launch.get_use_env(argparse.Namespace(use_env=False)) is False


@pytest.mark.parametrize("bad", [
    ["--no-python", "--module"],
    ["--nproc-per-node=unknown"],
    ["--logs-specs=DOES_NOT_EXIST"],
], ids=["no-python-and-module", "nproc", "logs-specs"])
def test_usage_errors_raise_value_error(launch, script, tmp_path, bad):
    with pytest.raises(ValueError):
        launch.main(["--standalone", *bad, script, str(tmp_path)])


def test_config_from_args(launch, script, tmp_path):
    args = launch.parse_args(["--nnodes=1:2", "--nproc-per-node=2", "--rdzv-backend=c10d",
                              "--rdzv-endpoint=localhost:29555", "--rdzv-conf=timeout=7",
                              "--max-restarts=2", "--role=r", "-m", "pkg.mod", "a"])
    config, cmd, cmd_args = launch.config_from_args(args)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (1, 2, 2)
    assert config.rdzv_endpoint == "localhost:29555" and config.rdzv_configs["timeout"] in ("7", 7)
    assert (config.max_restarts, config.role) == (2, "r")
    assert cmd == sys.executable and cmd_args == ["-u", "-m", "pkg.mod", "a"]


def test_main_runs_every_worker(launch, script, tmp_path):
    launch.main([*standalone(2), script, str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["0", "1", "worker.py"]


def test_a_failed_worker_raises_child_failed_error(launch, script, tmp_path):
    with pytest.raises(ChildFailedError) as failed:
        launch.main([*standalone(1), script, str(tmp_path), "--fail"])
    _, first = failed.value.get_first_failure()
    assert first.exitcode == 3


def test_an_agent_exception_reaches_the_caller(launch, script, tmp_path):
    class Boom(Exception):
        pass

    with patch(f"{AGENT[launch.__name__]}.run", side_effect=Boom), pytest.raises(Boom):
        launch.main([*standalone(1), script, str(tmp_path)])


def test_the_rendezvous_is_shut_down_after_the_run(launch, script, tmp_path):
    agent = Mock()
    agent.run.return_value = RunResult(WorkerState.SUCCEEDED)
    handler = Mock()
    with patch(f"{LAUNCHER[launch.__name__]}.LocalElasticAgent", return_value=agent), \
         patch("torch.distributed.elastic.rendezvous.registry.get_rendezvous_handler",
               return_value=handler):
        launch.main([*standalone(1), script, str(tmp_path)])
    handler.shutdown.assert_called_once()
