"""Launching from Python: the drop-in for ``torch.distributed.launcher.api``.

``LaunchConfig`` (torch 2.13's fields and defaults), ``elastic_launch(config, entrypoint)(*args)``
and ``launch_agent(config, entrypoint, args)``, run by this package's ``LocalElasticAgent``.
Frameworks that launch from code get torch's contract: the workers' return values by global
rank; torch's ``ChildFailedError`` when a worker failed; any exception of the agent propagated
as it is (a ``SignalException`` leaves the rendezvous open, so the job can scale back in). The
names a test patches are looked up here at call time, as in torch's module:
``LocalElasticAgent``, ``rdzv_registry.get_rendezvous_handler`` and ``events.record``
(``telemetry.events.record``, where the agent's success or failure event goes).

Telemetry is whatever this process has configured (``telemetry.configure``); launching from
code configures none of its own. ``elastiscope run`` is the command that sets up the event
log, the endpoint and the exporters around a launch.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, LogsSpecs
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import registry as rdzv_registry

from agent.api import WorkerSpec
from agent.local import LocalElasticAgent
from agent.python_cmdline import parse_python_args
from telemetry import events

__all__ = ["LaunchConfig", "elastic_launch", "launch_agent"]

logger = logging.getLogger(__name__)

DEFAULT_RENDEZVOUS_TIMEOUT = 900  # seconds, torch's default when neither field sets one
DEFAULT_SHUTDOWN_TIMEOUT = "30"  # seconds, when neither the field nor the variable says


@dataclass
class LaunchConfig:
    """One node's launch, field for field torch 2.13's (see its documentation for each).

    ``rdzv_timeout`` (legacy) lands in ``rdzv_configs["timeout"]``, which defaults to 900 s;
    ``logs_specs`` defaults to torch's ``DefaultLogsSpecs``; ``shutdown_timeout`` to
    ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` or 30 s (negative: ValueError).
    """

    min_nodes: int
    max_nodes: int
    nproc_per_node: int
    logs_specs: LogsSpecs | None = None
    run_id: str = ""
    role: str = "default_role"
    rdzv_endpoint: str = ""
    rdzv_backend: str = "etcd"
    rdzv_configs: dict[str, Any] = field(default_factory=dict)
    rdzv_timeout: int = -1
    max_restarts: int = 3
    monitor_interval: float = 0.1
    start_method: str = "spawn"
    log_line_prefix_template: str | None = None
    metrics_cfg: dict[str, str] = field(default_factory=dict)
    local_addr: str | None = None
    event_log_handler: str = "null"
    numa_options: Any = None
    signals_to_handle: str = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
    duplicate_stdout_filters: list[str] | None = None
    duplicate_stderr_filters: list[str] | None = None
    virtual_local_rank: bool = False
    shutdown_timeout: int | None = None

    def __post_init__(self) -> None:
        if self.rdzv_timeout != -1:
            self.rdzv_configs["timeout"] = self.rdzv_timeout
        else:
            self.rdzv_configs.setdefault("timeout", DEFAULT_RENDEZVOUS_TIMEOUT)
        if self.logs_specs is None:
            self.logs_specs = DefaultLogsSpecs()
        if (self.numa_options is None and torch.cuda.is_available()
                and torch.cuda.device_count() == self.nproc_per_node):
            # One worker per GPU: bind each near its GPU, as torch does by default.
            from torch._utils_internal import get_default_numa_options

            self.numa_options = get_default_numa_options()
        if self.shutdown_timeout is None:
            self.shutdown_timeout = int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT",
                                                       DEFAULT_SHUTDOWN_TIMEOUT))
        elif self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, not {self.shutdown_timeout}")


class elastic_launch:  # noqa: N801 - torch's name
    """``elastic_launch(config, entrypoint)(*args)``: launch ``entrypoint`` (a function or a
    program) on this node with ``args`` and return the workers' results by global rank."""

    def __init__(self, config: LaunchConfig, entrypoint: Callable | str | None) -> None:
        self._config = config
        self._entrypoint = entrypoint

    def __call__(self, *args: Any) -> dict[int, Any]:
        return launch_agent(self._config, self._entrypoint, list(args))


def entrypoint_name(entrypoint: Callable | str | None, args: list[Any]) -> str:
    """What failure reports call the job: the function, the script or module the interpreter
    runs, or the program."""
    if callable(entrypoint):
        return entrypoint.__name__
    if not isinstance(entrypoint, str):
        return ""
    if entrypoint in (sys.executable, os.getenv("PYTHON_EXEC")):
        command = parse_python_args([str(a) for a in args])
        return command.module or command.script or command.command or ""
    return entrypoint


def static_master(params: RendezvousParameters) -> tuple[str | None, int | None]:
    """The master's address and port, which only a static rendezvous fixes in advance."""
    if params.backend != "static":
        return None, None
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    endpoint = params.endpoint.strip()
    if not endpoint:
        raise ValueError("static rendezvous needs an endpoint: set --master-addr and --master-port")
    host, port = parse_rendezvous_endpoint(endpoint, default_port=-1)
    if port == -1:
        raise ValueError(f"static rendezvous endpoint {endpoint!r} has no port: set --master-port")
    return host, port


def launch_agent(config: LaunchConfig, entrypoint: Callable | str | None,
                 args: list[Any]) -> dict[int, Any]:
    """Run one agent for ``config`` to the end; the workers' return values by global rank."""
    if not config.run_id:
        config.run_id = str(uuid.uuid4().int)
        logger.warning("no run_id given: using %s", config.run_id)
    name = entrypoint_name(entrypoint, args)
    params = RendezvousParameters(
        backend=config.rdzv_backend, endpoint=config.rdzv_endpoint, run_id=config.run_id,
        min_nodes=config.min_nodes, max_nodes=config.max_nodes, local_addr=config.local_addr,
        **config.rdzv_configs,
    )
    master_addr, master_port = static_master(params)
    # The agent reads these from the environment, as under torch's launcher.
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = config.signals_to_handle
    # A fresh store per rendezvous round: workers restarted on torch's shared store connect to
    # the previous attempt's dead peers (pytorch/pytorch#135712); `elastiscope run` does the same.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    spec = WorkerSpec(
        role=config.role, local_world_size=config.nproc_per_node, entrypoint=entrypoint,
        args=tuple(args), rdzv_handler=rdzv_registry.get_rendezvous_handler(params),
        max_restarts=config.max_restarts, monitor_interval=config.monitor_interval,
        master_addr=master_addr, master_port=master_port, local_addr=config.local_addr,
        event_log_handler=config.event_log_handler, numa_options=config.numa_options,
        duplicate_stdout_filters=config.duplicate_stdout_filters,
        duplicate_stderr_filters=config.duplicate_stderr_filters,
        virtual_local_rank=config.virtual_local_rank,
    )
    agent = LocalElasticAgent(
        spec=spec, logs_specs=config.logs_specs, start_method=config.start_method,
        log_line_prefix_template=config.log_line_prefix_template,
        shutdown_timeout=config.shutdown_timeout,
    )
    return _run_to_the_end(agent, spec, config.event_log_handler, name)


def _run_to_the_end(agent: Any, spec: WorkerSpec, event_log_handler: str, name: str) -> dict[int, Any]:
    close_rendezvous = True
    try:
        result = agent.run()
        # The agent ran to its end; whether the workers succeeded is the result's to say.
        events.record(agent.get_event_succeeded(), event_log_handler)
        if result is None:  # the rendezvous was closed gracefully: nothing ran here (torch: an
            return {}       # AttributeError on None)
        if result.is_failed():
            raise ChildFailedError(name=name, failures=result.failures)
        return result.return_values
    except ChildFailedError:
        raise
    except SignalException:
        # Closing the rendezvous would end it for every node; a signalled one may come back.
        close_rendezvous = False
        events.record(agent.get_event_failed(), event_log_handler)
        raise
    except Exception:
        events.record(agent.get_event_failed(), event_log_handler)
        raise
    finally:
        if close_rendezvous:
            spec.rdzv_handler.shutdown()
