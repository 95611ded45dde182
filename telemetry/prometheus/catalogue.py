"""The metric catalogue: every Prometheus series Elastiscope exports, as data.

``CATALOGUE`` is the single list of series (name, type, labels, help, where its values come
from, when it appears, when its children start at 0). docs/reference.md documents the same
list and tests/test_reference.py keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from telemetry import names

__all__ = [
    "Series",
    "CATALOGUE",
    "EVENT_KINDS_AT_ZERO",
    "RUN_OUTCOMES",
    "ROLE_HISTOGRAMS",
    "series_named",
    "restart_reasons",
]

# The documented event kinds with a fixed name, and who publishes each: their
# ``elastiscope_events_total`` series exist at 0 from the moment the Prometheus sink is attached,
# so ``increase()`` sees the first one (docs/reference.md's event table lists the same pairs).
EVENT_KINDS_AT_ZERO = (
    (names.TORCH_RENDEZVOUS, names.AGENT),
    (names.TORCH_ASSIGN_WORKER_RANKS, names.AGENT),
    (names.TORCH_START, names.WORKER),
    (names.TORCH_SUCCEEDED, names.WORKER),
    (names.TORCH_SUCCEEDED, names.AGENT),
    (names.TORCH_FAILED, names.WORKER),
    (names.TORCH_FAILED, names.AGENT),
    (names.TORCH_TERMINATED, names.WORKER),
    (names.RUN_START, names.AGENT),
    (names.RUN_END, names.AGENT),
    (names.STATE_CHANGE, names.AGENT),
    (names.RENDEZVOUS_COMPLETE, names.AGENT),
    (names.RESTART, names.AGENT),
    (names.WORKER_FAILED, names.WORKER),
    # goodput (agent/goodput.py)
    (names.FIRST_STEP, names.AGENT),
    (names.ATTEMPT_GOODPUT, names.AGENT),
    (names.WORKER_STALLED, names.AGENT),
    (names.WORKER_STALL_ENDED, names.AGENT),
    (names.WORKER_STRAGGLER, names.WORKER),
    (names.WORKER_STRAGGLER_RECOVERED, names.WORKER),
)

# (outcome, retried) label values of elastiscope_runs_total: every way a run can finish.
RUN_OUTCOMES = (("succeeded", "true"), ("succeeded", "false"), ("failed", "true"), ("failed", "false"))

# Bucket bounds in seconds, chosen per step: rank assignment is a store round-trip (ms), a
# rendezvous waits for peers (up to minutes), a restart includes both plus worker start.
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# A training step: from a millisecond (a tiny model) to minutes; the same bounds as the worker's
# progress record counts in (elastiscope/progress_layout.py DURATION_BOUNDS; a test keeps them equal).
TRAINING_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                         10.0, 30.0, 60.0, 300.0)
_RESTART_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass(frozen=True)
class Series:
    """One exported series family, as documented in docs/reference.md.

    ``when`` is None for series present in every run, or says what makes them appear (the
    reference test allows a conditional series to be absent from a run). ``zero`` says when
    the family's children are created at 0, before anything is counted or reported, so that
    ``increase()`` and ``rate()`` see the first increment and panels are never blank (None:
    each child appears with its first update, because its label values are not known before,
    or, for most gauges, because no value is meaningful before the first one).
    """

    name: str
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str
    source: str
    when: str | None = None
    buckets: tuple[float, ...] = ()
    zero: str | None = None


_AT_RUN_START_BY_REASON = (
    "at run start: reason failure unless max_restarts is 0, membership unless the rendezvous is static"
)

CATALOGUE: tuple[Series, ...] = (
    Series("elastiscope_agent_info", "gauge", ("run_id", "role", "rdzv_backend", "hostname", "version"),
           "Always 1; identifies the agent's current run.", names.RUN_START),
    Series("elastiscope_runs_total", "counter", ("role", "outcome", "retried"),
           "Finished runs by outcome (succeeded, failed) and whether restarts were spent (true, false).",
           "put_metric workers.<role>.run_{success,failed}_{with,no}_retries (run_total is their sum)",
           zero="at run start: all four outcome and retried pairs"),
    Series("elastiscope_flakiness_percent", "gauge", ("role",),
           "0 when the last run needed no restart, rising with restarts spent, 100 when it failed.",
           "put_metric workers.<role>.flakiness",
           # A run that has spent no restart yet is 0 flaky; torch reports the value only at
           # the run's end, which the last scrape before the agent exits can miss.
           zero="at run start"),
    Series("elastiscope_remaining_restarts", "gauge", ("role",),
           "Restarts the agent may still spend on failures.",
           "put_metric workers.<role>.remaining_restarts; elastiscope.agent.run_start/restart"),
    Series("elastiscope_max_restarts", "gauge", ("role",),
           "The restart budget the run started with.", names.RUN_START),
    Series("elastiscope_worker_group_state", "gauge", ("role", "state"),
           "1 for the worker group's current state, 0 for the six others.",
           "elastiscope.agent.state_change; put_metric workers.<role>.<state>"),
    Series("elastiscope_restarts_total", "counter", ("role", "reason"),
           "Worker group restarts by reason (failure, membership, stall).", names.RESTART,
           zero=_AT_RUN_START_BY_REASON),
    Series("elastiscope_worker_failures_total", "counter", ("role", "local_rank", "exit_code", "signal"),
           "Worker process failures seen live by the monitor, by exit code or signal name "
           "(the other label is empty).", names.WORKER_FAILED,
           when="after a worker failure (local agent)",
           zero=None),  # exit_code and signal are known only when a worker has failed
    Series("elastiscope_failure_detection_seconds", "histogram", ("role",),
           "Time from a worker's exit to the agent noticing it (observed by the local agent).",
           names.WORKER_FAILED, buckets=_FAST_BUCKETS, zero="at run start"),
    Series("elastiscope_rendezvous_duration_seconds", "histogram", ("role",),
           "Time spent in each rendezvous round.", names.TORCH_RENDEZVOUS,
           buckets=_STEP_BUCKETS, zero="at run start"),
    Series("elastiscope_rank_assignment_duration_seconds", "histogram", ("role",),
           "Time spent assigning global and role ranks after a rendezvous.",
           names.TORCH_ASSIGN_WORKER_RANKS, buckets=_FAST_BUCKETS, zero="at run start"),
    Series("elastiscope_restart_duration_seconds", "histogram", ("role", "reason"),
           "From a restart decision to the worker group being HEALTHY again.",
           f"{names.RESTART} -> {names.STATE_CHANGE} HEALTHY",
           buckets=_RESTART_BUCKETS, zero=_AT_RUN_START_BY_REASON),
    Series("elastiscope_worker_start_duration_seconds", "histogram", ("role",),
           "Time the agent's _start_workers took (observed for agents with @prof on it: the "
           "local agent, torch's).", "torch prof metric <Agent>._start_workers.duration.ms",
           buckets=_STEP_BUCKETS, zero="at run start"),
    Series("elastiscope_worker_stop_duration_seconds", "histogram", ("role",),
           "Time the agent's _stop_workers took, before a restart or at the end (observed for "
           "agents with @prof on it).", "torch prof metric <Agent>._stop_workers.duration.ms",
           buckets=_STEP_BUCKETS, zero="at run start"),
    Series("elastiscope_world_size", "gauge", ("role",),
           "Total number of workers (all nodes) after the last rendezvous.", names.RENDEZVOUS_COMPLETE),
    Series("elastiscope_group_rank", "gauge", ("role",),
           "This node's rank among the agents after the last rendezvous.", names.RENDEZVOUS_COMPLETE),
    Series("elastiscope_group_world_size", "gauge", ("role",),
           "Number of agents (nodes) after the last rendezvous.", names.RENDEZVOUS_COMPLETE),
    Series("elastiscope_worker_cpu_seconds_total", "counter", ("role", "local_rank"),
           "CPU time (user+system) used by a worker process; resets when the worker restarts.",
           "put_metric workers.<role>.worker.<local_rank>.cpu_seconds",
           when="agents that sample worker resources (local agent)",
           # Not pre-created: only the agent that samples knows a rank is sampled (a 0 for an
           # agent that never samples would claim no CPU was used). Its first sample comes one
           # monitor interval after the worker starts, with the little CPU used by then.
           zero=None),
    Series("elastiscope_worker_resident_memory_bytes", "gauge", ("role", "local_rank"),
           "Resident memory of a worker process.", "put_metric workers.<role>.worker.<local_rank>.rss_bytes",
           when="agents that sample worker resources (local agent)"),
    Series("elastiscope_worker_reporting_progress", "gauge", ("role", "local_rank"),
           "1 once a worker has reported progress (an optimizer step or an explicit report), 0 "
           "before: a worker that never reports is not reporting progress, not stalled.",
           "put_metric workers.<role>.worker.<local_rank>.progress.reporting",
           when="agents that read progress (local agent)"),
    Series("elastiscope_worker_steps_total", "counter", ("role", "local_rank"),
           "Training steps a worker reported (each optimizer.step(), or each explicit "
           "progress.step()), over every attempt of the run.",
           "put_metric workers.<role>.worker.<local_rank>.progress.steps",
           when="after a worker's first step (local agent)"),
    Series("elastiscope_worker_last_step_timestamp_seconds", "gauge", ("role", "local_rank"),
           "When a worker's last step ended, in seconds since the epoch.",
           "put_metric workers.<role>.worker.<local_rank>.progress.last_step_time",
           when="after a worker's first step (local agent)"),
    Series("elastiscope_worker_step_duration_seconds", "histogram", ("role", "local_rank"),
           "Time between a worker's consecutive step ends (every step counted, however rarely "
           "the agent reads).",
           "put_metric workers.<role>.worker.<local_rank>.progress.step_duration_{bucket.<i>,sum}",
           when="after a worker's second step (local agent)", buckets=TRAINING_STEP_BUCKETS),
    Series("elastiscope_worker_global_step", "gauge", ("role", "local_rank"),
           "The training's global step on a worker: set by the script, or counted by the "
           "optimizer hook and carried in the optimizer's state dict across a resume.",
           "put_metric workers.<role>.worker.<local_rank>.progress.global_step",
           when="after a worker's first step (local agent)"),
    Series("elastiscope_worker_checkpoint_step", "gauge", ("role", "local_rank", "kind"),
           "Global step of the last checkpoint a worker reported saved or loaded (kind).",
           "put_metric workers.<role>.worker.<local_rank>.progress.checkpoint_step.<kind>",
           when="scripts that report checkpoints (elastiscope.progress)"),
    Series("elastiscope_worker_progress_scalar", "gauge", ("role", "local_rank", "name"),
           "A named value a worker reported (at most four names per worker, e.g. loss, "
           "samples_per_second, tokens_per_second).",
           "put_metric workers.<role>.worker.<local_rank>.progress.scalar.<name>",
           when="scripts that report scalars (elastiscope.progress)"),
    Series("elastiscope_node_steps_per_second", "gauge", ("role",),
           "Mean steps per second of this node's reporting workers over the last 10 seconds.",
           "put_metric workers.<role>.progress.steps_per_second",
           when="after a worker's first step (local agent)"),
    # Goodput (agent/goodput.py; docs/operations.md defines each reason).
    Series("elastiscope_productive_seconds_total", "counter", ("role",),
           "Seconds of the agent's run spent in productive training (first step to last step of "
           "each attempt, less stalls and redone steps); counted once a worker has reported a step.",
           "put_metric workers.<role>.goodput.productive_seconds",
           zero="at run start"),
    Series("elastiscope_badput_seconds_total", "counter", ("role", "reason"),
           "Seconds of the agent's run not spent in productive training, by reason (startup, "
           "rendezvous, restart, stall, lost_progress, shutdown); with the productive seconds they "
           "add up to the run's wall time. Counted once a worker has reported a step.",
           "put_metric workers.<role>.goodput.badput_seconds.<reason>",
           zero="at run start: each reason"),
    Series("elastiscope_goodput_ratio", "gauge", ("role",),
           "Productive seconds over the run's wall time accounted so far (0..1); absent while no "
           "worker has reported a step (no progress reported is not 0 % goodput).",
           "put_metric workers.<role>.goodput.ratio",
           when="after a worker's first step (local agent)"),
    # ---- stalls (issue 14) ----
    Series("elastiscope_worker_stalled", "gauge", ("role", "local_rank"),
           "1 while a worker is stalled (no progress for its stall timeout), 0 otherwise.",
           "put_metric workers.<role>.worker.<local_rank>.progress.stalled",
           when="agents that read progress (local agent)"),
    Series("elastiscope_worker_seconds_since_progress", "gauge", ("role", "local_rank"),
           "Seconds since a worker's last progress (step end, checkpoint saved or loaded), as "
           "of the agent's last read of its record (about once a second).",
           "put_metric workers.<role>.worker.<local_rank>.progress.seconds_since_progress",
           when="after a worker's first step (local agent)"),
    Series("elastiscope_stalls_total", "counter", ("role",),
           "Stalls found (each elastiscope.worker.stalled event; workers due within a second of "
           "each other are found together).",
           names.WORKER_STALLED, zero="at run start"),
    # Stragglers (agent/stragglers.py): each worker's forward time against its local peers'.
    Series("elastiscope_worker_forward_seconds", "gauge", ("role", "local_rank"),
           "Mean time of a worker's DDP forward passes per training step, over its latest "
           "steps (at least 5; the agent reads about once a second): the work a rank does on its "
           "own before the step's collectives, which a straggler takes longer over.",
           "put_metric workers.<role>.worker.<local_rank>.progress.forward_seconds",
           when="workers training with DistributedDataParallel (local agent)"),
    Series("elastiscope_worker_straggler_ratio", "gauge", ("role", "local_rank"),
           "A worker's forward seconds over the median of the other local workers' (1: like its "
           "peers; 3: three times slower).",
           "put_metric workers.<role>.worker.<local_rank>.progress.straggler_ratio",
           when="DistributedDataParallel workers with local peers (local agent)"),
    Series("elastiscope_worker_straggler", "gauge", ("role", "local_rank"),
           "1 while a worker is flagged a straggler (its ratio stayed over the threshold for the "
           "configured number of steps), 0 otherwise.",
           "put_metric workers.<role>.worker.<local_rank>.progress.straggler",
           when="DistributedDataParallel workers with local peers (local agent)"),
    Series("elastiscope_events_total", "counter", ("name", "source"),
           "Events published, by event name and source.", "every event",
           zero="at configure: each documented event kind with a fixed name, with its source(s)"),
    Series("elastiscope_telemetry_dropped_total", "counter", ("sink",),
           "Records a sink never received (its queue was full, or exit came first).", "pipeline SinkStats",
           zero="at configure: each configured sink"),
    Series("elastiscope_telemetry_sink_errors_total", "counter", ("sink",),
           "Records whose delivery raised inside a sink.", "pipeline SinkStats",
           zero="at configure: each configured sink"),
    Series("elastiscope_torchelastic_metric", "gauge", ("group", "name"),
           "Last value of any put_metric name not mapped to a series above (torch's prof "
           "metrics such as SimpleElasticAgent._rendezvous.duration.ms, custom names).",
           "any other put_metric name"),
)

_BY_NAME = {s.name: s for s in CATALOGUE}

# Histograms labelled by role alone: created at 0 when the run's role is known.
ROLE_HISTOGRAMS = tuple(s.name for s in CATALOGUE if s.type == "histogram" and s.labels == ("role",))


def series_named(name: str) -> Series:
    return _BY_NAME[name]


def restart_reasons(max_restarts: float | None = None, rdzv_backend: str | None = None) -> tuple[str, ...]:
    """The restart reasons a run can see: no failure restart without a restart budget, no
    membership restart with the static rendezvous (its membership is fixed)."""
    reasons = []
    if max_restarts is None or max_restarts > 0:
        reasons.append(names.RESTART_FAILURE)
    if rdzv_backend != "static":
        reasons.append(names.RESTART_MEMBERSHIP)
    return tuple(reasons)
