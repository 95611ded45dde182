"""The torchelastic-compatible agent core.

A drop-in for ``torch.distributed.elastic.agent.server.api``: the same public names, dataclass
fields, defaults and method signatures, and the same steps in the same order. Where torch's
agent records an event or puts a metric, this one does too, through the module-level names
``record`` and ``put_metric`` (patch ``agent.api.record`` / ``agent.api.put_metric`` to
intercept them). Everything Elastiscope adds lives in modules of its own and is only called
from here: its events (``agent.run_events``: run start/end, restarts and their reasons, state
changes, rendezvous results) travel on ``telemetry.emit``, apart from torch's calls, so a test
that counts torch's calls sees torch's counts; spans are ``agent.run_spans``; metrics
take the path ``agent.torchelastic_metrics`` documents; the exit barrier is
``agent.exit_barrier``; the patches to torch (``agent.torch_patches``) go in when an agent is
constructed.

Rendezvous, stores, ``ProcessFailure`` and ``SignalException`` are torch's own.
"""

from __future__ import annotations

import abc
import functools
import importlib
import inspect
import json
import logging
import os
import signal
import time
import traceback
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

from agent import run_events, run_spans, torch_patches, torchelastic_metrics
from agent.exit_barrier import barrier_between_agents
from agent.hostname import fq_hostname
from telemetry import names
from telemetry.events import Event, EventSource, record

if TYPE_CHECKING:
    import torch.distributed.elastic.rendezvous as rdzv
    from torch.distributed.elastic.multiprocessing import ProcessFailure
    from torch.numa.binding import NumaOptions

# torch is imported when first needed, not with this module: annotations here are strings, and
# torch's classes are only touched once an agent runs (by then its rendezvous handler has
# imported torch anyway). That keeps `import agent.api` — and commands that never run an agent,
# like `elastiscope events` — free of torch's two-second import.
_TORCH_NAMES = {
    "rdzv": ("torch.distributed.elastic.rendezvous", None),
    "store_util": ("torch.distributed.elastic.utils.store", None),
    "ProcessFailure": ("torch.distributed.elastic.multiprocessing", "ProcessFailure"),
    "SignalException": ("torch.distributed.elastic.multiprocessing", "SignalException"),
    "RendezvousGracefulExitError": ("torch.distributed.elastic.rendezvous", "RendezvousGracefulExitError"),
    "NumaOptions": ("torch.numa.binding", "NumaOptions"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _TORCH_NAMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def put_metric(metric_name: str, metric_value: Any, metric_group: str = "torchelastic") -> None:
    """torch's ``put_metric`` as the agent uses it: into Elastiscope's pipeline, and on to any
    handler configured on torch's metric stream (see ``agent.torchelastic_metrics``)."""
    torchelastic_metrics.publish(metric_name, metric_value, metric_group)


def prof(fn: Callable) -> Callable:
    """torch's ``@prof``: ``<Class>.<method>.success`` / ``.failure`` / ``.duration.ms``.

    Published as torch's decorator does, on the path of ``agent.torchelastic_metrics``: the
    handler configured on torch's stream sees torch's names. Not through the patchable
    ``put_metric`` of this module: torch's agent does not count these there either.
    """
    key = fn.__qualname__
    success, failure, duration = f"{key}.success", f"{key}.failure", f"{key}.duration.ms"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.time()
        try:
            value = fn(*args, **kwargs)
            torchelastic_metrics.publish(success, 1)
        except Exception:
            torchelastic_metrics.publish(failure, 1)
            raise
        finally:
            torchelastic_metrics.publish(duration, int((time.time() - started) * 1000))
        return value

    return wrapper

__all__ = [
    "WorkerSpec",
    "Worker",
    "WorkerState",
    "WorkerGroup",
    "RunResult",
    "ElasticAgent",
    "SimpleElasticAgent",
]

DEFAULT_ROLE = "default"
# Store key prefix of the barrier agents pass through once their workers are done.
_TERMINAL_STATE_SYNC_ID = "torchelastic/agent/terminal_state"
# Store key prefixes of the rank assignment exchange (shared with torch's agent).
_ROLE_INFO_PREFIX = "torchelastic/role_info/"
_ASSIGNED_RANKS_PREFIX = "torchelastic/assigned_ranks/"

logger = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """What to run on each node for one role: how many workers, what entry point, which rendezvous.

    ``entrypoint`` is a Python callable or a program path; ``fn`` is its deprecated old name.
    The spec is the same on every node. ``redirects``/``tee`` and the other process options
    belong to the concrete agent (see ``agent.local``), not to the spec.
    """

    role: str
    local_world_size: int
    rdzv_handler: rdzv.RendezvousHandler
    fn: Callable | None = None
    entrypoint: Callable | str | None = None
    args: tuple = ()
    max_restarts: int = 3
    monitor_interval: float = 0.1
    master_port: int | None = None
    master_addr: str | None = None
    local_addr: str | None = None
    event_log_handler: str = "null"
    numa_options: NumaOptions | None = None
    duplicate_stdout_filters: list[str] | None = None
    duplicate_stderr_filters: list[str] | None = None
    virtual_local_rank: bool = False

    def __post_init__(self):
        # torch signals a bad spec with a bare AssertionError; callers catch exactly that.
        if self.local_world_size <= 0:
            raise AssertionError
        if self.monitor_interval <= 0:
            raise AssertionError
        if self.fn:
            warnings.warn(
                "WorkerSpec.fn will be deprecated, please use WorkerSpec.entrypoint instead",
                stacklevel=2,
                category=DeprecationWarning,
            )
            self.entrypoint = self.fn
        if not self.entrypoint:
            raise AssertionError

    def get_entrypoint_name(self):
        """The program's file name, or the callable's qualified name."""
        if isinstance(self.entrypoint, str):
            return os.path.basename(self.entrypoint)
        if self.entrypoint is None:
            raise AssertionError
        return self.entrypoint.__qualname__


class Worker:
    """One worker process as the agent sees it.

    Ranks and world sizes are -1 until a rendezvous assigns them, and may change at every
    re-rendezvous. ``id`` is whatever the concrete agent uses to find the worker (a pid for the
    local agent) and is None until the worker starts.
    """

    __slots__ = ["id", "local_rank", "global_rank", "role_rank", "world_size", "role_world_size"]

    def __init__(
        self,
        local_rank: int,
        global_rank: int = -1,
        role_rank: int = -1,
        world_size: int = -1,
        role_world_size: int = -1,
    ):
        self.id: Any = None
        self.local_rank: int = local_rank
        self.global_rank: int = global_rank
        self.role_rank: int = role_rank
        self.world_size: int = world_size
        self.role_world_size: int = role_world_size

    def __str__(self):
        return (
            f"local_rank={self.local_rank},global_rank={self.global_rank}"
            f",role_rank={self.role_rank},world_size={self.world_size}"
            f",role_world_size={self.role_world_size}"
        )

    def __repr__(self):
        return str(self)


class WorkerState(str, Enum):
    """The state of a worker group; its workers change state together.

    INIT → HEALTHY/UNHEALTHY while running → SUCCEEDED or FAILED at the end. STOPPED marks a
    group the agent interrupted and is about to restart (failure or membership change).
    UNKNOWN means an action failed half-way; the agent does not try to recover from it.
    """

    UNKNOWN = names.UNKNOWN
    INIT = names.INIT
    HEALTHY = names.HEALTHY
    UNHEALTHY = names.UNHEALTHY
    STOPPED = names.STOPPED
    SUCCEEDED = names.SUCCEEDED
    FAILED = names.FAILED

    @staticmethod
    def is_running(state: "WorkerState") -> bool:
        """True while the worker processes exist, healthy or not."""
        return state in (WorkerState.HEALTHY, WorkerState.UNHEALTHY)


class WorkerGroup:
    """The workers of one spec on this node, plus what the last rendezvous told us.

    Assigning ``state`` publishes an ``elastiscope.agent.state_change`` event when the value
    actually changes, whoever assigns it (the run loop, a subclass, a test).
    """

    __slots__ = [
        "spec",
        "workers",
        "store",
        "group_rank",
        "group_world_size",
        "_state",
        "master_addr",
        "master_port",
    ]

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.workers = [Worker(local_rank=i) for i in range(self.spec.local_world_size)]
        # Filled in by rendezvous.
        self.store = None
        self.group_rank = None
        self.group_world_size = None
        self.master_addr = None
        self.master_port = None
        self._state = WorkerState.INIT

    @property
    def state(self) -> WorkerState:
        return self._state

    @state.setter
    def state(self, new: WorkerState) -> None:
        old = self._state
        self._state = new
        if old != new:
            run_events.state_change(self, old, new)


class _RoleInstanceInfo:
    """What one agent tells the others about itself so that ranks can be assigned.

    Agents may run different numbers of workers (and different roles); each publishes its
    role, group rank and local world size, and group rank 0 turns those into rank ranges.
    """

    __slots__ = ["role", "rank", "local_world_size"]

    def __init__(self, role: str, rank: int, local_world_size: int):
        self.role = role
        self.rank = rank
        self.local_world_size = local_world_size

    def serialize(self) -> bytes:
        payload = {"role": self.role, "rank": self.rank, "local_world_size": self.local_world_size}
        return json.dumps(payload).encode("UTF-8")

    @staticmethod
    def deserialize(data: bytes):
        payload = json.loads(data.decode("UTF-8"))
        return _RoleInstanceInfo(payload["role"], payload["rank"], payload["local_world_size"])

    @staticmethod
    def compare(obj1, obj2) -> int:
        """Order by role name, then by agent rank within a role (negative, zero, positive)."""
        if obj1.role != obj2.role:
            return 1 if obj1.role > obj2.role else -1
        return obj1.rank - obj2.rank

    @staticmethod
    def find_role_boundaries(roles_infos: list, role: str) -> tuple[int, int]:
        """First and last index of ``role`` in a role-sorted list; (-1, -1) if absent."""
        indices = [i for i, info in enumerate(roles_infos) if info.role == role]
        if not indices:
            return (-1, -1)
        return (indices[0], indices[-1])


@dataclass
class RunResult:
    """The outcome of a run, all or nothing for this agent's workers.

    On success ``return_values`` maps each worker's GLOBAL rank to its return value (callable
    entry points only). On failure ``failures`` maps global ranks to ``ProcessFailure``. Workers
    the agent stopped itself appear in neither.
    """

    state: WorkerState
    return_values: dict[int, Any] = field(default_factory=dict)
    failures: dict[int, ProcessFailure] = field(default_factory=dict)

    def is_failed(self) -> bool:
        return self.state == WorkerState.FAILED


def _parameters(method: Callable) -> list[inspect.Parameter] | None:
    """A bound method's parameters, or None when it has no signature to read (a builtin)."""
    try:
        return list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return None


def _takes_keyword(parameters: list[inspect.Parameter] | None, name: str) -> bool:
    """Whether ``name=`` can be passed (a parameter of that name, or ``**kwargs``)."""
    if parameters is None:  # unknown: do not guess
        return False
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in parameters
    )


def _takes_positional(parameters: list[inspect.Parameter] | None) -> bool:
    """Whether one positional argument can be passed (unknown signatures are assumed to)."""
    if parameters is None:
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in parameters)


def _get_fq_hostname() -> str:
    return fq_hostname()


class ElasticAgent(abc.ABC):
    """Manages the worker processes of one node for a distributed job.

    An agent starts its workers, watches them, restarts the group on failure or membership
    change, and reports the outcome. How workers map to processes and hosts is up to the
    implementation; ``SimpleElasticAgent`` supplies the state machine, ``LocalElasticAgent``
    (``agent.local``) runs host-local processes.
    """

    @abc.abstractmethod
    def run(self, role: str = DEFAULT_ROLE) -> RunResult:
        """Run the job, restarting up to ``max_restarts`` times; return the final result.

        Raises only for agent-side problems, never because a worker failed.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def get_worker_group(self, role: str = DEFAULT_ROLE) -> WorkerGroup:
        """The (mutable, live) worker group of ``role``."""
        raise NotImplementedError


class SimpleElasticAgent(ElasticAgent):
    """The elastic state machine for a single role.

    Subclasses supply the process layer (``_start_workers``, ``_stop_workers``,
    ``_monitor_workers``, ``_shutdown``); this class does rendezvous, rank assignment,
    restarts, the exit barrier, and the events and metrics at every step.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        exit_barrier_timeout: float = 300,
        shutdown_timeout: int = 30,
    ):
        self._worker_group = WorkerGroup(spec)
        self._remaining_restarts = self._worker_group.spec.max_restarts
        self._store = None
        self._exit_barrier_timeout = exit_barrier_timeout
        self._shutdown_timeout = shutdown_timeout
        self._total_execution_time = 0
        self._in_exit_barrier: bool = False
        torch_patches.apply()

    def get_worker_group(self, role: str = DEFAULT_ROLE) -> WorkerGroup:
        return self._worker_group

    # ---- the process layer, supplied by subclasses ------------------------------------

    @abc.abstractmethod
    def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
        """Start ``local_world_size`` workers; return {local_rank: worker id}."""
        raise NotImplementedError

    @abc.abstractmethod
    def _stop_workers(self, worker_group: WorkerGroup) -> None:
        """Stop every worker of the group, whatever state each is in (gone, stuck, running)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        """Look at the workers and return the group's current state and results."""
        raise NotImplementedError

    @abc.abstractmethod
    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
        """Release everything the agent holds: stop workers with ``death_sig``, SIGKILL after ``timeout``.

        ``run()`` passes the signal (after one) positionally and, when the method takes a
        ``timeout`` parameter (torch 2.13's signature), ``timeout=self._shutdown_timeout`` as
        torch's agent does; subclasses written as ``_shutdown(self)`` or
        ``_shutdown(self, death_sig)`` get no ``timeout`` and keep working
        (see ``_call_shutdown``).
        """
        raise NotImplementedError

    # ---- rendezvous and rank assignment ------------------------------------------------

    @prof
    def _rendezvous(self, worker_group: WorkerGroup) -> None:
        """Join the next rendezvous round and take this node's group rank, store and ranks."""
        spec = worker_group.spec
        previous_world_size = worker_group.workers[0].world_size if worker_group.workers else -1

        with run_spans.step(run_spans.RENDEZVOUS, spec.role), self.record_duration("RENDEZVOUS"):
            rdzv_info = spec.rdzv_handler.next_rendezvous()
        store = rdzv_info.store
        group_rank = rdzv_info.rank
        group_world_size = rdzv_info.world_size

        # Explicit master address/port in the spec override what the rendezvous suggests
        # (the static backend relies on this).
        bootstrap = rdzv_info.bootstrap_store_info
        master_addr = spec.master_addr or bootstrap.master_addr
        master_port = spec.master_port or bootstrap.master_port

        self._store = store

        with run_spans.step(run_spans.ASSIGN_WORKER_RANKS, spec.role), self.record_duration(
            "ASSIGN_WORKER_RANKS"
        ):
            workers = self._assign_worker_ranks(store, group_rank, group_world_size, spec)

        worker_group.workers = workers
        worker_group.store = store
        worker_group.group_rank = group_rank
        worker_group.group_world_size = group_world_size
        worker_group.master_addr = master_addr
        worker_group.master_port = master_port

        restart_count = spec.max_restarts - self._remaining_restarts
        logger.info(
            "[%s] rendezvous complete: restart_count=%s master=%s:%s group_rank=%s "
            "group_world_size=%s global_ranks=%s role_ranks=%s world_size=%s",
            spec.role, restart_count, master_addr, master_port, group_rank, group_world_size,
            [w.global_rank for w in workers], [w.role_rank for w in workers],
            workers[0].world_size if workers else None,
        )
        run_events.rendezvous_complete(worker_group, previous_world_size, restart_count)

    @prof
    def _assign_worker_ranks(
        self, store, group_rank: int, group_world_size: int, spec: WorkerSpec
    ) -> list[Worker]:
        """Give this node's workers their global and role ranks.

        With ``TORCH_ELASTIC_WORKER_IDENTICAL=1`` every node is assumed to run the same role
        with the same number of workers, and ranks follow from the group rank alone. Otherwise
        the agents meet in the store: each writes its ``_RoleInstanceInfo``, group rank 0 (which
        sits next to the TCPStore) computes every node's rank ranges in one pass and writes them
        back, and each agent reads its own. Ranks run in group-rank order; role ranks count
        within a role.
        """
        if os.environ.get("TORCH_ELASTIC_WORKER_IDENTICAL", "0") == "1":
            world_size = group_world_size * spec.local_world_size
            first_global_rank = group_rank * spec.local_world_size
            first_role_rank = first_global_rank
            role_world_size = world_size
        else:
            me = _RoleInstanceInfo(spec.role, group_rank, spec.local_world_size)
            store.set(f"{_ROLE_INFO_PREFIX}{group_rank}", me.serialize())
            if group_rank == 0:
                self._publish_rank_assignments(store, group_world_size)
            # Blocks until group rank 0 has published.
            first_global_rank, world_size, first_role_rank, role_world_size = json.loads(
                store.get(f"{_ASSIGNED_RANKS_PREFIX}{group_rank}")
            )

        return [
            Worker(
                local_rank=local_rank,
                global_rank=first_global_rank + local_rank,
                role_rank=first_role_rank + local_rank,
                world_size=world_size,
                role_world_size=role_world_size,
            )
            for local_rank in range(spec.local_world_size)
        ]

    @staticmethod
    def _publish_rank_assignments(store, group_world_size: int) -> None:
        """Group rank 0's half of the exchange: read every node's info, write every node's ranks."""
        infos = [
            _RoleInstanceInfo.deserialize(raw)
            for raw in store.multi_get([f"{_ROLE_INFO_PREFIX}{i}" for i in range(group_world_size)])
        ]
        role_sizes: dict[str, int] = defaultdict(int)
        for info in infos:
            role_sizes[info.role] += info.local_world_size
        world_size = sum(role_sizes.values())

        next_global_rank = 0
        next_role_rank: dict[str, int] = defaultdict(int)
        keys, values = [], []
        for i, info in enumerate(infos):
            keys.append(f"{_ASSIGNED_RANKS_PREFIX}{i}")
            values.append(
                json.dumps(
                    [next_global_rank, world_size, next_role_rank[info.role], role_sizes[info.role]]
                )
            )
            next_global_rank += info.local_world_size
            next_role_rank[info.role] += info.local_world_size
        store.multi_set(keys, values)

    # ---- starting and restarting -------------------------------------------------------

    @prof
    def _initialize_workers(self, worker_group: WorkerGroup) -> None:
        """Rendezvous, then start a fresh set of workers and mark the group HEALTHY.

        Running workers must have been stopped first. HEALTHY is optimistic: the monitor
        decides the real state on its next pass.
        """
        spec = worker_group.spec
        logger.info("[%s] rendezvous'ing worker group", spec.role)
        self._rendezvous(worker_group)

        logger.info("[%s] starting worker group", spec.role)
        with run_spans.step(run_spans.START_WORKERS, spec.role):
            worker_ids = self._start_workers(worker_group)
        for local_rank, worker_id in worker_ids.items():
            worker = worker_group.workers[local_rank]
            worker.id = worker_id
            record(self._construct_event("START", EventSource.WORKER, worker), spec.event_log_handler)
        worker_group.state = WorkerState.HEALTHY

    @prof
    def _restart_workers(self, worker_group: WorkerGroup) -> None:
        """Stop every local worker, then rendezvous and start them again."""
        logger.info("[%s] stopping worker group", worker_group.spec.role)
        with run_spans.step(run_spans.STOP_WORKERS, worker_group.spec.role):
            self._stop_workers(worker_group)
        worker_group.state = WorkerState.STOPPED
        self._initialize_workers(worker_group)

    # ---- the run -----------------------------------------------------------------------

    @prof
    def run(self, role: str = DEFAULT_ROLE) -> RunResult:
        from torch.distributed.elastic.multiprocessing import SignalException
        from torch.distributed.elastic.rendezvous import RendezvousGracefulExitError

        started = time.monotonic()
        outcome = run_events.OUTCOME_ERROR
        shutdown_done = False
        run_events.run_start(self._worker_group)
        try:
            with run_spans.step(run_spans.RUN, self._worker_group.spec.role):
                result = self._invoke_run(role)
            self._total_execution_time = int(time.monotonic() - started)
            self._record_metrics(result)
            self._record_worker_events(result)
            outcome = result.state.value
            return result
        except RendezvousGracefulExitError as e:
            outcome = run_events.OUTCOME_GRACEFUL_EXIT
            logger.info("rendezvous closed gracefully: %s", e)
        except SignalException as e:
            outcome = run_events.OUTCOME_SIGNALED
            logger.warning("received %s, shutting down workers", e.sigval.name)
            self._call_shutdown(e.sigval)
            shutdown_done = True
            raise
        finally:
            if not shutdown_done:
                self._call_shutdown()
            # Also set on errors, so the final events carry the real duration.
            self._total_execution_time = int(time.monotonic() - started)
            run_events.run_end(
                self._worker_group, outcome, self._total_execution_time, self._remaining_restarts,
                attribution=self._failure_attribution(), summary=self._run_end_summary(),
            )

    def _call_shutdown(self, death_sig: signal.Signals | None = None) -> None:
        """``self._shutdown`` as its signature allows: the signal (after one) positionally,
        and the agent's ``shutdown_timeout`` as ``timeout=`` when the method takes it.

        torch 2.13 always passes ``timeout=``, which a subclass written for an older torch
        (``_shutdown(self)``, ``_shutdown(self, death_sig)``) cannot take; a ``_shutdown(self)``
        cannot take the signal either, and stops its workers its own way.
        """
        shutdown = self._shutdown
        parameters = _parameters(shutdown)
        kwargs = {"timeout": self._shutdown_timeout} if _takes_keyword(parameters, "timeout") else {}
        if death_sig is not None and _takes_positional(parameters):
            shutdown(death_sig, **kwargs)
        else:
            shutdown(**kwargs)

    def get_event_failed(self) -> Event:
        return self._construct_event(
            state=names.FAILED, source=EventSource.AGENT, raw_error=traceback.format_exc()
        )

    def get_event_succeeded(self) -> Event:
        return self._construct_event(state=names.SUCCEEDED, source=EventSource.AGENT)

    def _invoke_run(self, role: str = DEFAULT_ROLE) -> RunResult:
        # One role per agent: the ``role`` argument is accepted for the interface, the spec decides.
        spec = self._worker_group.spec
        role = spec.role
        logger.info("[%s] starting workers for entrypoint: %s", role, spec.get_entrypoint_name())

        self._initialize_workers(self._worker_group)
        rdzv_handler = spec.rdzv_handler
        # The two metric names of every pass, formatted once rather than ten times a second.
        remaining_restarts_name = f"workers.{role}.remaining_restarts"
        state_names = {s: f"workers.{role}.{s.name.lower()}" for s in WorkerState}

        while True:
            if self._worker_group.state == WorkerState.INIT:
                raise AssertionError
            self._wait_for_change(spec.monitor_interval)
            run_result = self._monitor_workers(self._worker_group)
            state = run_result.state
            self._worker_group.state = state

            put_metric(remaining_restarts_name, self._remaining_restarts)
            put_metric(state_names[state], 1)

            if state == WorkerState.SUCCEEDED:
                logger.info("[%s] worker group finished", role)
                self._exit_barrier()
                return run_result

            if state in (WorkerState.UNHEALTHY, WorkerState.FAILED):
                reason = self._restart_reason(run_result)
                if self._remaining_restarts > 0 and reason is not None:
                    logger.info(
                        "[%s] worker group %s; %s/%s restarts left, restarting",
                        role, state.name, self._remaining_restarts, spec.max_restarts,
                    )
                    self._remaining_restarts -= 1
                    run_events.restart(
                        self._worker_group, reason, self._remaining_restarts,
                        failed_ranks=run_result.failures.keys(),
                        attribution=self._failure_attribution(),
                    )
                    with run_spans.step(run_spans.RESTART, role, reason=reason):
                        self._restart_workers(self._worker_group)
                else:
                    with run_spans.step(run_spans.STOP_WORKERS, role):
                        self._stop_workers(self._worker_group)
                    self._worker_group.state = WorkerState.FAILED
                    return run_result
            elif state == WorkerState.HEALTHY:
                # Nodes waiting at the rendezvous: re-form the group to let them in. A
                # membership change is not a failure, so it spends no restart.
                waiting = rdzv_handler.num_nodes_waiting()
                if waiting > 0:
                    logger.info(
                        "[%s] %s node(s) waiting to join (group_rank=%s); restarting worker group",
                        role, waiting, self._worker_group.group_rank,
                    )
                    run_events.restart(
                        self._worker_group, names.RESTART_MEMBERSHIP, self._remaining_restarts,
                        nodes_waiting=waiting,
                    )
                    with run_spans.step(run_spans.RESTART, role, reason=names.RESTART_MEMBERSHIP):
                        self._restart_workers(self._worker_group)
            else:
                raise Exception(f"[{role}] Worker group in {state.name} state")  # noqa: TRY002

    def _restart_reason(self, run_result: RunResult) -> str | None:
        """Why an UNHEALTHY or FAILED group would be restarted (``names.RESTART_*``), or None
        when it must not be, whatever restarts are left. torch restarts every such group for
        a failure; a subclass that stops a group for another cause (a stall) says so here."""
        return names.RESTART_FAILURE

    def _failure_attribution(self) -> dict[str, Any]:
        """The job's root cause for restart and run-end events; torch's agent knows none.
        Subclasses that attribute failures across agents override this."""
        return {}

    def _run_end_summary(self) -> dict[str, Any]:
        """More fields for the run-end event, asked for once the run is over (the local agent's
        goodput); torch's agent has none."""
        return {}

    def _wait_for_change(self, interval: float) -> None:
        """Pause between monitor passes.

        torch sleeps the whole interval. Subclasses that learn of worker exits as they happen
        override this to return as soon as something changed.
        """
        time.sleep(interval)

    def _exit_barrier(self):
        """Keep this agent alive until every agent's workers are done, or the barrier times out.

        Protects jobs whose nodes finish at different times: an agent that exited early would
        take the store (or its membership) away from nodes still running. A timeout is logged,
        not raised; a termination signal is re-raised.
        """
        other_agents = self._worker_group.group_world_size - 1
        if other_agents > 0:  # alone, there is nobody to wait for: say nothing about waiting
            logger.info(
                "local worker group finished (%s); waiting up to %ss for %s other agent(s)",
                self._worker_group.state, self._exit_barrier_timeout, other_agents,
            )
        from torch.distributed.elastic.multiprocessing import SignalException

        started = time.time()
        self._in_exit_barrier = True
        try:
            with run_spans.step(run_spans.EXIT_BARRIER, self._worker_group.spec.role):
                barrier_between_agents(
                    store=self._store,
                    world_size=self._worker_group.group_world_size,
                    key_prefix=_TERMINAL_STATE_SYNC_ID,
                    barrier_timeout=self._exit_barrier_timeout,
                )
            if other_agents > 0:
                logger.info("all agents done; waited %.3fs", time.time() - started)
        except SignalException as e:
            logger.warning("termination signal %s during the exit barrier", e.sigval)
            raise
        except Exception:
            logger.exception("exit barrier failed after %.3fs", time.time() - started)
        finally:
            self._in_exit_barrier = False

    # ---- torch's events and metrics ----------------------------------------------------

    def _record_worker_events(self, result: RunResult) -> None:
        spec = self._worker_group.spec
        for worker in self._worker_group.workers:
            failure = result.failures.get(worker.global_rank)
            record(
                self._construct_event(
                    state=self._get_worker_state(worker, result),
                    source=EventSource.WORKER,
                    worker=worker,
                    raw_error=json.dumps(failure.error_file_data) if failure else None,
                    exit_code=failure.exitcode if failure else None,
                    worker_pid=failure.pid if failure else None,
                ),
                spec.event_log_handler,
            )

    def _get_worker_state(self, worker: Worker, result: RunResult) -> str:
        failure = result.failures.get(worker.global_rank)
        if result.state in (WorkerState.UNHEALTHY, WorkerState.FAILED) and not failure:
            # Healthy ranks of a failed group were stopped by the agent.
            return names.TERMINATED
        if failure or worker.global_rank in result.return_values:
            return result.state.value
        raise ValueError(f"Unknown worker: {worker.global_rank}")

    @contextmanager
    def record_duration(self, state: str):
        """Record an AGENT event named after ``state`` carrying the block's duration_ms."""
        started = time.perf_counter()
        try:
            yield
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            record(
                self._construct_event(state=state, source=EventSource.AGENT, duration_ms=duration_ms),
                self._worker_group.spec.event_log_handler,
            )

    def _construct_event(
        self,
        state: str,
        source: EventSource,
        worker: Worker | None = None,
        raw_error: str | None = None,
        duration_ms: float | None = None,
        exit_code: int | None = None,
        worker_pid: int | None = None,
    ) -> Event:
        group = self._worker_group
        spec = group.spec
        # Per-worker details travel as one JSON string, with one-element lists as torch has them.
        details: dict[str, Any] = {
            "group_world_size": group.group_world_size,
            "entry_point": spec.get_entrypoint_name(),
        }
        global_rank = worker_id = None
        if worker:
            details.update(
                local_rank=(worker.local_rank,),
                role_rank=(worker.role_rank,),
                role_world_size=(worker.role_world_size,),
                exit_code=(exit_code,),
                worker_pid=(worker_pid,),
            )
            global_rank = worker.global_rank
            worker_id = str(worker.id)
        metadata = {
            "run_id": spec.rdzv_handler.get_run_id(),
            "global_rank": global_rank,
            "group_rank": group.group_rank,
            "worker_id": worker_id,
            "role": spec.role,
            "hostname": _get_fq_hostname(),
            "state": state,
            "total_run_time": self._total_execution_time,
            "rdzv_backend": spec.rdzv_handler.get_backend(),
            "raw_error": raw_error,
            "metadata": json.dumps(details),
            "agent_restarts": spec.max_restarts - self._remaining_restarts,
            "duration_ms": duration_ms,
        }
        return Event(names.torch_status(state), source=source, metadata=metadata)

    def _record_metrics(self, group_results: RunResult):
        is_failed = group_results.is_failed()
        self._record_flakiness_metric(is_failed)
        spec = self._worker_group.spec
        retried = self._remaining_restarts != spec.max_restarts
        put_metric(f"workers.{spec.role}.run_total", 1)
        self._record_metric_with_condition("run_success_with_retries", not is_failed and retried)
        self._record_metric_with_condition("run_success_no_retries", not is_failed and not retried)
        self._record_metric_with_condition("run_failed_with_retries", is_failed and retried)
        self._record_metric_with_condition("run_failed_no_retries", is_failed and not retried)

    def _record_metric_with_condition(self, metric_name, condition):
        spec = self._worker_group.spec
        put_metric(f"workers.{spec.role}.{metric_name}", 1 if condition else 0)

    def _record_flakiness_metric(self, is_failed: bool = False):
        # 0 for a run that needed no restart, rising with every restart spent, 100 for a failure.
        spec = self._worker_group.spec
        if is_failed:
            flakiness = 100.0
        else:
            flakiness = 100.0 - 100.0 * (self._remaining_restarts + 1) / (spec.max_restarts + 1)
        put_metric(f"workers.{spec.role}.flakiness", int(flakiness))
