"""agent.api behaves like torch's torch.distributed.elastic.agent.server.api.

Every test takes the ``api`` fixture and runs twice: against ``agent.api`` and against torch's
module. Where torch 2.13 behaves differently on purpose (it calls ``_shutdown(timeout=...)``,
which breaks subclasses written as ``_shutdown(self)``), the torch variant is skipped with the
reason. The agents here are fakes: the subject is torch's contract, not processes.
"""

from __future__ import annotations

import importlib
import json
import signal
import uuid
from multiprocessing.pool import ThreadPool
from unittest.mock import call, patch

import pytest
import torch.distributed as dist
import torch.distributed.elastic.rendezvous.registry as rdzv_registry
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.api import RendezvousGracefulExitError
from torch.distributed.elastic.utils.distributed import get_free_port

OURS = "agent.api"
TORCH = "torch.distributed.elastic.agent.server.api"


@pytest.fixture(params=[OURS, TORCH], ids=["ours", "torch"])
def api(request):
    return importlib.import_module(request.param)


def ours_only(api, why):
    if api.__name__ != OURS:
        pytest.skip(f"torch 2.13 differs: {why}")


def do_nothing():
    pass


_agent_classes: dict[str, type] = {}


def agent_class(api):
    """A fake agent: no processes; worker ids are global ranks; _shutdown takes no parameters."""
    if api.__name__ in _agent_classes:
        return _agent_classes[api.__name__]

    class FakeAgent(api.SimpleElasticAgent):
        def __init__(self, spec):
            super().__init__(spec)
            self.calls: list[str] = []

        def _stop_workers(self, worker_group):
            self.calls.append("stop")
            worker_group.group_rank = None
            worker_group.group_world_size = None

        def _start_workers(self, worker_group):
            self.calls.append("start")
            return {w.local_rank: w.global_rank for w in worker_group.workers}

        def _monitor_workers(self, worker_group):
            raise NotImplementedError("tests patch this")

        def _shutdown(self):
            self.calls.append("shutdown")

    _agent_classes[api.__name__] = FakeAgent
    return FakeAgent


def make_spec(api, max_restarts=1, role="trainer", local_world_size=4, local_addr=None, **kw):
    params = RendezvousParameters(
        backend="static",
        endpoint=f"{local_addr or '127.0.0.1'}:{get_free_port()}",
        run_id=str(uuid.uuid4().int),
        min_nodes=1,
        max_nodes=1,
        rank=0,
    )
    return api.WorkerSpec(
        role=role,
        local_world_size=local_world_size,
        entrypoint=do_nothing,
        rdzv_handler=rdzv_registry.get_rendezvous_handler(params),
        max_restarts=max_restarts,
        monitor_interval=0.01,
        local_addr=local_addr,
        **kw,
    )


def result(api, state, rank=0):
    S = api.WorkerState
    if state == S.SUCCEEDED:
        return api.RunResult(state=state, return_values={r: None for r in range(16)})
    if state in (S.FAILED, S.UNHEALTHY):
        failure = ProcessFailure(local_rank=rank, pid=4242, exitcode=3, error_file="<none>")
        return api.RunResult(state=state, failures={rank: failure})
    return api.RunResult(state=state)


# ---- data types ---------------------------------------------------------------------------


def test_is_running_only_for_healthy_and_unhealthy(api):
    running = {s for s in api.WorkerState if api.WorkerState.is_running(s)}
    assert running == {api.WorkerState.HEALTHY, api.WorkerState.UNHEALTHY}


def test_fresh_worker_group_is_init_with_unassigned_workers(api):
    spec = api.WorkerSpec(role="r", local_world_size=3, entrypoint=do_nothing, rdzv_handler=None)
    group = api.WorkerGroup(spec)
    assert group.state == api.WorkerState.INIT
    assert [w.local_rank for w in group.workers] == [0, 1, 2]
    assert all(w.global_rank == -1 and w.world_size == -1 and w.id is None for w in group.workers)
    assert group.group_rank is None and group.store is None


def test_worker_spec_defaults_match(api):
    spec = api.WorkerSpec(role="r", local_world_size=1, entrypoint="/bin/true", rdzv_handler=None)
    assert (spec.args, spec.max_restarts, spec.monitor_interval, spec.event_log_handler) == ((), 3, 0.1, "null")
    assert spec.master_port is None and spec.master_addr is None and spec.local_addr is None
    assert spec.get_entrypoint_name() == "true"


def test_worker_spec_rejects_bad_sizes_with_assertion_error(api):
    for bad in ({"local_world_size": 0}, {"local_world_size": 1, "monitor_interval": 0}):
        with pytest.raises(AssertionError):
            api.WorkerSpec(role="r", entrypoint=do_nothing, rdzv_handler=None, **bad)


def test_worker_spec_fn_is_deprecated_alias_of_entrypoint(api):
    with pytest.warns(DeprecationWarning):
        spec = api.WorkerSpec(role="r", local_world_size=1, fn=do_nothing, rdzv_handler=None)
    assert spec.entrypoint is do_nothing
    assert spec.get_entrypoint_name() == "do_nothing"


def test_role_info_compares_by_role_then_rank(api):
    Info = api._RoleInstanceInfo
    assert Info.compare(Info("role", 2, 10), Info("role", 1, 10)) == 1
    assert Info.compare(Info("role1", 1, 10), Info("role2", 2, 10)) == -1
    assert Info.compare(Info("role1", 1, 10), Info("role2", 1, 10)) == -1
    assert Info.compare(Info("b", 0, 1), Info("a", 5, 1)) == 1


def test_role_info_round_trips_through_bytes(api):
    info = api._RoleInstanceInfo("trainer", 7, 3)
    back = api._RoleInstanceInfo.deserialize(info.serialize())
    assert (back.role, back.rank, back.local_world_size) == ("trainer", 7, 3)


def test_role_boundaries_on_role_sorted_list(api):
    Info = api._RoleInstanceInfo
    infos = [Info("ps", 0, 4), Info("ps", 4, 5), Info("trainer", 1, 1), Info("trainer", 2, 2)]
    assert Info.find_role_boundaries(infos, "ps") == (0, 1)
    assert Info.find_role_boundaries(infos, "trainer") == (2, 3)
    assert Info.find_role_boundaries(infos, "missing") == (-1, -1)


def test_run_result_is_failed_only_for_failed(api):
    assert api.RunResult(api.WorkerState.FAILED).is_failed()
    assert not api.RunResult(api.WorkerState.SUCCEEDED).is_failed()


# ---- rank assignment ----------------------------------------------------------------------

FIVE_AGENTS = [("ps", 4), ("trainer", 1), ("trainer", 2), ("trainer", 3), ("ps", 5)]


def test_assign_worker_ranks_through_the_store(api):
    store = dist.HashStore()

    def assign(group_rank):
        role, n = FIVE_AGENTS[group_rank]
        agent = agent_class(api)(make_spec(api, role=role, local_world_size=n))
        workers = agent._assign_worker_ranks(store, group_rank, len(FIVE_AGENTS), agent._worker_group.spec)
        return [(w.local_rank, w.role_rank, w.global_rank, w.world_size, w.role_world_size) for w in workers]

    with ThreadPool(len(FIVE_AGENTS)) as pool:
        out = pool.map(assign, range(len(FIVE_AGENTS)))

    assert out == [
        [(0, 0, 0, 15, 9), (1, 1, 1, 15, 9), (2, 2, 2, 15, 9), (3, 3, 3, 15, 9)],
        [(0, 0, 4, 15, 6)],
        [(0, 1, 5, 15, 6), (1, 2, 6, 15, 6)],
        [(0, 3, 7, 15, 6), (1, 4, 8, 15, 6), (2, 5, 9, 15, 6)],
        [(0, 4, 10, 15, 9), (1, 5, 11, 15, 9), (2, 6, 12, 15, 9), (3, 7, 13, 15, 9), (4, 8, 14, 15, 9)],
    ]


def test_identical_workers_assign_ranks_without_the_store(api, monkeypatch):
    monkeypatch.setenv("TORCH_ELASTIC_WORKER_IDENTICAL", "1")
    agent = agent_class(api)(make_spec(api, local_world_size=3))
    workers = agent._assign_worker_ranks(None, 2, 4, agent._worker_group.spec)
    assert [(w.global_rank, w.role_rank, w.world_size, w.role_world_size) for w in workers] == [
        (6, 6, 12, 12),
        (7, 7, 12, 12),
        (8, 8, 12, 12),
    ]


# ---- rendezvous ---------------------------------------------------------------------------


def test_static_rendezvous_assigns_group_and_ranks(api):
    agent = agent_class(api)(make_spec(api, local_world_size=4))
    group = agent.get_worker_group()
    agent._rendezvous(group)
    assert (group.group_rank, group.group_world_size) == (0, 1)
    assert [w.global_rank for w in group.workers] == [0, 1, 2, 3]
    assert all(w.world_size == 4 and w.id is None for w in group.workers)
    assert group.store is not None and group.master_port > 0


def test_rendezvous_master_addr_defaults_to_hostname(api):
    hostname = api._get_fq_hostname()
    agent = agent_class(api)(make_spec(api, local_addr=hostname))
    group = agent.get_worker_group()
    agent._rendezvous(group)
    assert group.master_addr == hostname


def test_rendezvous_local_addr_wins_over_hostname(api):
    agent = agent_class(api)(make_spec(api, local_addr="127.0.0.1"))
    group = agent.get_worker_group()
    agent._rendezvous(group)
    assert group.master_addr == "127.0.0.1"
    assert group.master_addr != api._get_fq_hostname()


def test_rendezvous_master_addr_and_port_from_spec_win(api):
    spec = make_spec(api, local_addr="127.0.0.1", master_addr="10.9.8.7", master_port=12345)
    agent = agent_class(api)(spec)
    group = agent.get_worker_group()
    agent._rendezvous(group)
    assert (group.master_addr, group.master_port) == ("10.9.8.7", 12345)


# ---- initialize / restart -----------------------------------------------------------------


def test_initialize_records_durations_then_one_start_per_worker(api):
    spec = make_spec(api, local_world_size=3, event_log_handler="console")
    agent = agent_class(api)(spec)
    group = agent.get_worker_group()
    with patch(f"{api.__name__}.record") as record:
        agent._initialize_workers(group)
    names = [c.args[0].name for c in record.call_args_list]
    assert names == [
        "torchelastic.worker.status.RENDEZVOUS",
        "torchelastic.worker.status.ASSIGN_WORKER_RANKS",
    ] + ["torchelastic.worker.status.START"] * 3
    assert all(c.args[1] == "console" for c in record.call_args_list)
    for c in record.call_args_list[:2]:
        assert c.args[0].metadata["duration_ms"] >= 0
    assert group.state == api.WorkerState.HEALTHY
    assert [w.id for w in group.workers] == [w.global_rank for w in group.workers]


def test_restart_stops_marks_stopped_then_initializes(api):
    agent = agent_class(api)(make_spec(api))
    group = agent.get_worker_group()
    seen = []
    original = agent._initialize_workers

    def initialize(g):
        seen.append(g.state)
        original(g)

    agent._initialize_workers = initialize
    for _ in range(3):
        agent._restart_workers(group)
        assert group.state == api.WorkerState.HEALTHY
        assert all(w.id is not None for w in group.workers)
    assert agent.calls == ["stop", "start"] * 3
    assert seen == [api.WorkerState.STOPPED] * 3


# ---- the run loop -------------------------------------------------------------------------


def run_scripted(api, agent, states, nodes_waiting=None):
    S = api.WorkerState
    outcomes = [result(api, getattr(S, s)) for s in states]
    with patch.object(agent, "_monitor_workers", side_effect=outcomes) as monitor:
        if nodes_waiting is None:
            out = agent.run()
        else:
            handler = agent._worker_group.spec.rdzv_handler
            with patch.object(handler, "num_nodes_waiting", side_effect=nodes_waiting):
                out = agent.run()
    return out, monitor


def test_run_succeeds_without_spending_restarts(api):
    ours_only(api, "torch calls _shutdown(timeout=...), which a _shutdown(self) subclass cannot take")
    agent = agent_class(api)(make_spec(api, max_restarts=5))
    out, monitor = run_scripted(api, agent, ["HEALTHY", "HEALTHY", "SUCCEEDED"])
    assert out.state == api.WorkerState.SUCCEEDED
    assert agent._remaining_restarts == 5
    assert monitor.call_count == 3
    assert agent.calls[-1] == "shutdown"


@pytest.mark.parametrize("bad", ["FAILED", "UNHEALTHY"])
def test_run_restarts_until_restarts_run_out_then_fails(api, bad):
    ours_only(api, "torch calls _shutdown(timeout=...), which a _shutdown(self) subclass cannot take")
    agent = agent_class(api)(make_spec(api, max_restarts=3))
    out, monitor = run_scripted(api, agent, [bad] * 4)
    assert agent._worker_group.state == api.WorkerState.FAILED
    assert agent._remaining_restarts == 0
    assert monitor.call_count == 4  # one pass per attempt
    assert agent.calls.count("start") == 4 and agent.calls.count("stop") == 4  # 3 restarts + final stop


def test_run_membership_change_restarts_without_spending_a_restart(api):
    ours_only(api, "torch calls _shutdown(timeout=...), which a _shutdown(self) subclass cannot take")
    agent = agent_class(api)(make_spec(api, max_restarts=1))
    out, _ = run_scripted(api, agent, ["HEALTHY"] * 3 + ["SUCCEEDED"], nodes_waiting=[1, 1, 0])
    assert out.state == api.WorkerState.SUCCEEDED
    assert agent._remaining_restarts == 1
    assert agent.calls.count("start") == 3  # initial + two membership restarts


def test_run_raises_on_unknown_state_without_restarting(api):
    ours_only(api, "torch calls _shutdown(timeout=...), which a _shutdown(self) subclass cannot take")
    agent = agent_class(api)(make_spec(api, max_restarts=100))
    with patch.object(agent, "_monitor_workers", return_value=result(api, api.WorkerState.UNKNOWN)) as m:
        with pytest.raises(Exception, match="UNKNOWN"):
            agent.run()
    assert agent._worker_group.state == api.WorkerState.UNKNOWN
    assert m.call_count == 1 and agent._remaining_restarts == 100


def test_run_initialization_failure_leaves_group_in_init(api):
    ours_only(api, "torch calls _shutdown(timeout=...), which a _shutdown(self) subclass cannot take")
    agent = agent_class(api)(make_spec(api))
    with patch.object(agent, "_initialize_workers", side_effect=RuntimeError("no")):
        with pytest.raises(RuntimeError):
            agent.run()
    assert agent._worker_group.state == api.WorkerState.INIT
    assert agent.calls == ["shutdown"]


def test_run_records_metrics_and_worker_events_once_then_shuts_down(api):
    agent = agent_class(api)(make_spec(api))
    with patch.object(agent, "_invoke_run", return_value=result(api, api.WorkerState.SUCCEEDED)), \
         patch.object(agent, "_record_metrics") as metrics, \
         patch.object(agent, "_record_worker_events") as events, \
         patch.object(agent, "_shutdown") as shutdown:
        agent.run()
    metrics.assert_called_once()
    events.assert_called_once()
    shutdown.assert_called_once()


def test_run_passes_the_shutdown_timeout_to_a_shutdown_that_takes_it(api):
    agent = agent_class(api)(make_spec(api))
    agent._shutdown_timeout = 7
    with patch.object(agent, "_invoke_run", return_value=result(api, api.WorkerState.SUCCEEDED)), \
         patch.object(agent, "_record_worker_events"), patch.object(agent, "_shutdown") as shutdown:
        agent.run()
    assert shutdown.call_args == call(timeout=7)


def test_run_signal_shuts_down_with_the_signal_then_reraises(api):
    agent = agent_class(api)(make_spec(api, max_restarts=0))
    with patch.object(agent, "_invoke_run", side_effect=SignalException("term", sigval=signal.SIGTERM)), \
         patch.object(agent, "_shutdown") as shutdown, patch(f"{api.__name__}.put_metric"):
        with pytest.raises(SignalException):
            agent.run()
    shutdown.assert_called_once()
    assert shutdown.call_args.args[0] == signal.SIGTERM


def test_run_signal_reaches_shutdown_positionally_with_the_timeout_by_name(api):
    agent = agent_class(api)(make_spec(api, max_restarts=0))
    agent._shutdown_timeout = 9
    with patch.object(agent, "_invoke_run", side_effect=SignalException("int", sigval=signal.SIGINT)), \
         patch.object(agent, "_shutdown") as shutdown, patch(f"{api.__name__}.put_metric"):
        with pytest.raises(SignalException):
            agent.run()
    assert shutdown.call_args == call(signal.SIGINT, timeout=9)


@pytest.mark.parametrize("style", ["no parameters", "death_sig only", "torch 2.13"])
def test_each_shutdown_signature_gets_what_it_can_take(api, style):
    if style != "torch 2.13":
        ours_only(api, "torch calls _shutdown(timeout=...), which an older-style subclass cannot take")
    seen: list = []

    class Agent(agent_class(api)):
        if style == "no parameters":
            def _shutdown(self):
                seen.append(())
        elif style == "death_sig only":
            def _shutdown(self, death_sig=signal.SIGTERM):
                seen.append((death_sig,))
        else:
            def _shutdown(self, death_sig=signal.SIGTERM, timeout=30):
                seen.append((death_sig, timeout))

    agent = Agent(make_spec(api, max_restarts=0))
    agent._shutdown_timeout = 4
    with patch.object(agent, "_invoke_run", side_effect=SignalException("term", sigval=signal.SIGTERM)), \
         patch(f"{api.__name__}.put_metric"):
        with pytest.raises(SignalException):
            agent.run()
    expected = {"no parameters": (), "death_sig only": (signal.SIGTERM,),
                "torch 2.13": (signal.SIGTERM, 4)}[style]
    assert seen == [expected]


def test_run_graceful_rendezvous_exit_ends_quietly(api):
    agent = agent_class(api)(make_spec(api, max_restarts=0))
    with patch.object(agent, "_invoke_run", side_effect=RendezvousGracefulExitError()), \
         patch.object(agent, "_shutdown") as shutdown, patch(f"{api.__name__}.put_metric"):
        assert agent.run() is None
    shutdown.assert_called_once()


def test_subclass_with_parameterless_shutdown_and_two_arg_stop_runs(api):
    ours_only(api, "torch calls _shutdown(timeout=...), which a _shutdown(self) subclass cannot take")

    class OldStyle(api.SimpleElasticAgent):
        def _start_workers(self, worker_group):
            return {w.local_rank: w.global_rank for w in worker_group.workers}

        def _stop_workers(self, worker_group):
            pass

        def _monitor_workers(self, worker_group):
            return result(api, api.WorkerState.FAILED if self._remaining_restarts else api.WorkerState.SUCCEEDED)

        def _shutdown(self):
            self.shut = True

    agent = OldStyle(make_spec(api, max_restarts=1))
    out = agent.run()
    assert out.state == api.WorkerState.SUCCEEDED
    assert agent.shut and agent._remaining_restarts == 0


# ---- metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failed,retried,expected",
    [
        (False, False, "run_success_no_retries"),
        (False, True, "run_success_with_retries"),
        (True, False, "run_failed_no_retries"),
        (True, True, "run_failed_with_retries"),
    ],
)
def test_run_outcome_metrics_put_one_for_what_happened(api, failed, retried, expected):
    agent = agent_class(api)(make_spec(api, max_restarts=10))
    if retried:
        agent._remaining_restarts = 2
    state = api.WorkerState.FAILED if failed else api.WorkerState.SUCCEEDED
    with patch(f"{api.__name__}.put_metric") as put:
        agent._record_metrics(api.RunResult(state=state))
    got = {c.args[0]: c.args[1] for c in put.call_args_list}
    assert got["workers.trainer.run_total"] == 1
    for name in ("run_success_with_retries", "run_success_no_retries", "run_failed_with_retries", "run_failed_no_retries"):
        assert got[f"workers.trainer.{name}"] == (1 if name == expected else 0)


@pytest.mark.parametrize(
    "max_restarts,remaining,failed,expected",
    [(1, 1, False, 0), (10, 3, False, 63), (0, 0, False, 0), (1, 1, True, 100), (4, 0, False, 80)],
)
def test_flakiness_metric(api, max_restarts, remaining, failed, expected):
    agent = agent_class(api)(make_spec(api, max_restarts=max_restarts))
    agent._remaining_restarts = remaining
    with patch(f"{api.__name__}.put_metric") as put:
        agent._record_flakiness_metric(failed)
    put.assert_called_once_with("workers.trainer.flakiness", expected)


def test_each_monitor_pass_puts_remaining_restarts_and_state(api):
    ours_only(api, "torch calls _shutdown(timeout=...), which a _shutdown(self) subclass cannot take")
    agent = agent_class(api)(make_spec(api, max_restarts=2))
    with patch(f"{api.__name__}.put_metric") as put:
        run_scripted(api, agent, ["FAILED", "HEALTHY", "SUCCEEDED"])
    names = [(c.args[0], c.args[1]) for c in put.call_args_list]
    assert names[:6] == [
        ("workers.trainer.remaining_restarts", 2),
        ("workers.trainer.failed", 1),
        ("workers.trainer.remaining_restarts", 1),
        ("workers.trainer.healthy", 1),
        ("workers.trainer.remaining_restarts", 1),
        ("workers.trainer.succeeded", 1),
    ]


# ---- events -------------------------------------------------------------------------------

TORCH_METADATA_KEYS = {
    "run_id", "global_rank", "group_rank", "worker_id", "role", "hostname", "state",
    "total_run_time", "rdzv_backend", "raw_error", "metadata", "agent_restarts", "duration_ms",
}


def test_construct_event_for_a_worker(api):
    spec = make_spec(api, max_restarts=4)
    agent = agent_class(api)(spec)
    agent._remaining_restarts = 2
    worker = agent._worker_group.workers[1]
    worker.id = 777
    ev = agent._construct_event("FAILED", "WORKER", worker, raw_error="E", exit_code=9, worker_pid=777)
    assert ev.name == "torchelastic.worker.status.FAILED"
    assert ev.source == "WORKER"
    md = ev.metadata
    assert set(md) == TORCH_METADATA_KEYS
    assert (md["state"], md["role"], md["rdzv_backend"], md["agent_restarts"]) == ("FAILED", "trainer", "static", 2)
    assert md["worker_id"] == "777" and md["raw_error"] == "E" and md["run_id"] == spec.rdzv_handler.get_run_id()
    details = json.loads(md["metadata"])
    assert details == {
        "group_world_size": None,
        "entry_point": "do_nothing",
        "local_rank": [1],
        "role_rank": [-1],
        "role_world_size": [-1],
        "exit_code": [9],
        "worker_pid": [777],
    }


def test_construct_event_for_the_agent(api):
    agent = agent_class(api)(make_spec(api))
    ev = agent.get_event_succeeded()
    assert ev.source == "AGENT"
    assert ev.metadata["global_rank"] is None and ev.metadata["worker_id"] is None
    assert set(json.loads(ev.metadata["metadata"])) == {"group_world_size", "entry_point"}
    failed = agent.get_event_failed()
    assert failed.metadata["state"] == "FAILED"


def test_worker_events_carry_failure_data_and_terminated_for_the_rest(api):
    spec = make_spec(api, local_world_size=3, event_log_handler="null")
    agent = agent_class(api)(spec)
    agent._rendezvous(agent._worker_group)
    failure = ProcessFailure(local_rank=1, pid=4321, exitcode=7, error_file="<none>")
    failure.error_file_data = {"message": "boom"}
    res = api.RunResult(state=api.WorkerState.FAILED, failures={1: failure})
    with patch(f"{api.__name__}.record") as record:
        agent._record_worker_events(res)
    by_rank = {c.args[0].metadata["global_rank"]: c.args[0] for c in record.call_args_list}
    assert by_rank[1].metadata["state"] == "FAILED"
    assert json.loads(by_rank[1].metadata["raw_error"]) == {"message": "boom"}
    details = json.loads(by_rank[1].metadata["metadata"])
    assert details["exit_code"] == [7] and details["worker_pid"] == [4321]
    assert by_rank[0].metadata["state"] == by_rank[2].metadata["state"] == "TERMINATED"
    assert all(c.args[1] == "null" for c in record.call_args_list)


def test_worker_state_of_unknown_worker_raises(api):
    agent = agent_class(api)(make_spec(api))
    worker = agent._worker_group.workers[0]
    worker.global_rank = 5
    with pytest.raises(ValueError):
        agent._get_worker_state(worker, api.RunResult(state=api.WorkerState.SUCCEEDED))


# ---- parity: the same scenario makes the same record/put_metric calls ----------------------


def scripted_calls(api):
    """Run failure → restart → membership change → success; return what record/put_metric saw."""
    cls = agent_class(api)

    class Agent(cls):  # torch's run() passes timeout=: accept it so both modules can run
        def _shutdown(self, death_sig=signal.SIGTERM, timeout=30):
            self.calls.append("shutdown")

    agent = Agent(make_spec(api, max_restarts=2, local_world_size=2))
    S = api.WorkerState
    outcomes = [result(api, S.FAILED), result(api, S.HEALTHY), result(api, S.SUCCEEDED)]
    with patch(f"{api.__name__}.record") as record, patch(f"{api.__name__}.put_metric") as put, \
         patch.object(agent, "_monitor_workers", side_effect=outcomes), \
         patch.object(agent._worker_group.spec.rdzv_handler, "num_nodes_waiting", side_effect=[1]):
        agent.run()
    events = [(c.args[0].name, c.args[0].source, c.args[0].metadata["global_rank"], c.args[1]) for c in record.call_args_list]
    metrics = [c.args for c in put.call_args_list]
    return events, metrics, agent.calls


def test_same_record_and_put_metric_calls_as_torch():
    ours = scripted_calls(importlib.import_module(OURS))
    theirs = scripted_calls(importlib.import_module(TORCH))
    assert ours == theirs
    events, metrics, calls = ours
    assert calls == ["start", "stop", "start", "stop", "start", "shutdown"]
    assert len(events) == 3 * 4 + 2 and len(metrics) == 3 * 2 + 6


def prof_metric_names(api):
    """Names torch's metric stream receives from @prof during one initialize + restart."""
    import torch.distributed.elastic.metrics as torch_metrics

    seen = []

    class Collect(torch_metrics.MetricHandler):
        def emit(self, data):
            seen.append((data.group_name, data.name))

    torch_metrics.configure(Collect(), "torchelastic")
    try:
        agent = agent_class(api)(make_spec(api))
        agent._initialize_workers(agent.get_worker_group())
        agent._restart_workers(agent.get_worker_group())
    finally:
        torch_metrics.configure(torch_metrics.NullMetricHandler(), "torchelastic")
    return seen


def test_prof_metrics_reach_torchs_metric_stream_under_torchs_names():
    ours = prof_metric_names(importlib.import_module(OURS))
    assert ours == prof_metric_names(importlib.import_module(TORCH))
    assert ("torchelastic", "SimpleElasticAgent._rendezvous.duration.ms") in ours


def test_importing_agent_api_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, agent.api; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_torch_names_stay_importable_from_agent_api():
    from agent.api import ProcessFailure as PF, RendezvousGracefulExitError as RGE, SignalException as SE

    assert PF is ProcessFailure and SE is SignalException and RGE is RendezvousGracefulExitError


def test_agent_metrics_reach_a_handler_configured_on_torchs_stream():
    """As with torch's agent, a user's torch metric handler receives workers.* metrics,
    with or without Elastiscope's tap on torch's stream, and our pipeline sees each once."""
    import torch.distributed.elastic.metrics as torch_metrics

    from agent import torch_patches
    from telemetry import Pipeline, Sink, set_pipeline

    class Points(Sink):
        name, synchronous, events = "points", True, False

        def __init__(self):
            self.names = []

        def emit(self, point):
            self.names.append(point.name)

    for tapped in (False, True):
        user = []

        class UserHandler(torch_metrics.MetricHandler):
            def emit(self, data):
                user.append(data.name)

        points = Points()
        previous = set_pipeline(Pipeline([points]))
        torch_metrics.configure(UserHandler(), "torchelastic")
        try:
            api = importlib.import_module(OURS)
            agent = agent_class(api)(make_spec(api))  # applies the patches, tap included
            if not tapped:
                torch_patches.remove()
            agent._record_metrics(api.RunResult(state=api.WorkerState.SUCCEEDED))
        finally:
            torch_patches.remove()
            torch_metrics.configure(torch_metrics.NullMetricHandler(), "torchelastic")
            set_pipeline(previous)
        assert "workers.trainer.run_total" in user and "workers.trainer.flakiness" in user
        assert points.names.count("workers.trainer.run_total") == 1


def test_worker_states_are_spelled_as_telemetry_names_spells_them():
    from telemetry import names

    api = importlib.import_module(OURS)
    assert tuple(s.value for s in api.WorkerState) == names.WORKER_STATES
