"""Showing runs to a person (a timeline and a summary per run) or to a program (JSON)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from telemetry.names import (
    ATTEMPT_GOODPUT,
    BADPUT_REASONS,
    ENDPOINT_STARTED,
    FIRST_STEP,
    RESTART_FAILURE,
    RENDEZVOUS_COMPLETE,
    RESTART,
    RUN_END,
    RUN_START,
    TORCH_FAILED,
    WORKER,
    WORKER_FAILED,
    WORKER_STALL_ENDED,
    WORKER_STALLED,
)
from telemetry.timeline.model import Failure, JobTimeline, LogEvent, RunSummary, Stall
from telemetry.timeline.summary import ATTEMPT_KEYS, failure_of, goodput_of, json_list

__all__ = ["render", "summaries_as_json", "render_jobs", "jobs_as_json"]

# The metadata worth a glance on the lines --all adds for events without a line of their own.
_ALL_EVENTS_KEYS = ("state", "global_rank", "duration_ms", "reason")


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _ms(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return f"{value * 1000:.0f} ms" if value < 0.1 else f"{value:.1f} s"


def _badput(goodput: dict[str, Any]) -> str:
    """``lost 3.5 s: restart 2.6 s, lost progress 0.9 s (6 steps redone)``, largest first."""
    parts = []
    for reason in BADPUT_REASONS:
        seconds = goodput.get(f"badput_{reason}_seconds")
        if isinstance(seconds, (int, float)) and seconds > 0:
            parts.append((seconds, reason))
    if not parts:
        return "nothing lost"
    redone = goodput.get("redone_steps")
    words = []
    for seconds, reason in sorted(parts, reverse=True):
        note = f" ({redone} steps redone)" if reason == "lost_progress" and redone else ""
        words.append(f"{reason.replace('_', ' ')} {_seconds(seconds)}{note}")
    return f"lost {_seconds(sum(s for s, _ in parts))}: " + ", ".join(words)


def _goodput_text(goodput: dict[str, Any]) -> str:
    """The goodput in a few words: ratio, productive of wall, and what was lost."""
    if not goodput.get("progress_reported") or goodput.get("goodput_ratio") is None:
        return f"no progress reported ({_seconds(goodput.get('wall_seconds'))})"
    return (f"{100 * goodput['goodput_ratio']:.1f} % ({_seconds(goodput.get('productive_seconds'))} "
            f"productive of {_seconds(goodput.get('wall_seconds'))}); {_badput(goodput)}")


def _attempt_goodput_line(goodput: dict[str, Any]) -> str:
    """``attempt 0 (ended by failure): 46 steps, 70.9 steps/s; 15.3 % (...); lost ...``"""
    rate = goodput.get("steps_per_second")
    rate_text = f", {rate:.1f} steps/s" if isinstance(rate, (int, float)) else ""
    return (f"attempt {goodput.get('attempt')} (ended by {goodput.get('ended_by')}): "
            f"{goodput.get('steps')} steps{rate_text}; {_goodput_text(goodput)}")


def _first_step_line(md: dict[str, Any]) -> str:
    after = md.get("interruption_to_first_step_s")
    reason = md.get("interruption_reason")
    if reason is None or after is None:
        return (f"attempt {md.get('attempt')}: first training step "
                f"{_seconds(md.get('launch_to_first_step_s'))} after launch")
    what = "the restart" if reason == RESTART_FAILURE else f"the {reason} restart"
    return (f"attempt {md.get('attempt')}: first training step after {what} after {_seconds(after)} "
            f"(since the failure; {_seconds(md.get('launch_to_first_step_s'))} since launch)")


def _rank(f: Failure) -> str:
    local = f" (local {f.local_rank})" if f.local_rank is not None else ""
    return f"rank {f.global_rank}{local}"


def _exit(f: Failure) -> str:
    if f.signal:
        return f"signal {f.signal}"
    return f"exit code {f.exit_code}" if f.exit_code is not None else "exit code unknown"


def _attribution(f: Failure) -> str:
    if f.root_cause is True:
        return " [root cause]"
    if f.root_cause is False and f.root_cause_rank is not None:
        return f" [collateral: after rank {f.root_cause_rank}]"
    return ""


def _log_note(f: Failure) -> str:
    return f"; stderr log {f.stderr_log}" if f.stderr_log else ""


def _failure_line(event: LogEvent) -> str:
    f = failure_of(event, None)
    latency = f" (seen in {_ms(f.detect_latency_ms)})" if f.detect_latency_ms is not None else ""
    return (f"FAILED {_rank(f)}, {_exit(f)}: {f.error or 'no error message'}{latency}"
            f"{_attribution(f)}{_log_note(f)}")


def _root_cause_line(f: Failure) -> str:
    host = f" on {f.hostname}" if f.hostname else ""
    return f"root cause: {_rank(f)}{host}, attempt {f.attempt}, {_exit(f)}: {f.error or 'no error message'}{_log_note(f)}"


class _TimelineWriter:
    """One line of text per milestone of a run (per event with ``show_all``), in event order."""

    def __init__(self, run: RunSummary, show_all: bool) -> None:
        self.show_all = show_all
        # Attempts and restarts were summarised in event order, so the n-th such event is the
        # n-th of them.
        self.attempts = iter(run.attempts)
        self.restarts = iter(run.restarts)

    def line(self, e: LogEvent) -> str | None:
        md = e.metadata
        if e.name == RUN_START:
            program = md.get("program") or md.get("entry_point")
            return (f"run started: {program}, {md.get('local_world_size')} worker(s) "
                    f"on this node, max {md.get('max_restarts')} restart(s)")
        if e.name == ENDPOINT_STARTED:
            return f"endpoint at {md.get('url')}"
        if e.name == RENDEZVOUS_COMPLETE:
            a = next(self.attempts, None)
            took = f" in {_ms(a.rendezvous_ms)}" if a and a.rendezvous_ms is not None else ""
            return (f"attempt {a.number if a else '?'}: rendezvous complete{took}: "
                    f"{md.get('group_world_size')} node(s), world size {md.get('world_size')}")
        if e.name == WORKER_FAILED or (e.name == TORCH_FAILED and e.source == WORKER
                                       and self.show_all):
            return _failure_line(e)
        if e.name == RESTART:
            r = next(self.restarts, None)
            took = (f", workers running again after {_ms(r.duration_ms)}"
                    if r and r.duration_ms is not None else "")
            ranks = f" of rank(s) {', '.join(map(str, r.failed_ranks))}" if r and r.failed_ranks else ""
            return (f"restart #{r.number if r else '?'} ({md.get('reason')}{ranks}); "
                    f"{md.get('remaining_restarts')} left{took}")
        if e.name == FIRST_STEP:
            return _first_step_line(md)
        if e.name == ATTEMPT_GOODPUT:
            return _attempt_goodput_line(goodput_of(md, ATTEMPT_KEYS) or {})
        if e.name == WORKER_STALLED:
            return (f"STALLED rank(s) {', '.join(map(str, json_list(md.get('stalled_ranks'))))} "
                    f"after {md.get('seconds_since_progress')} s without progress "
                    f"(on stall: {md.get('action')}): {md.get('summary')}")
        if e.name == WORKER_STALL_ENDED:
            return (f"rank(s) {', '.join(map(str, json_list(md.get('ranks'))))} progress again "
                    f"after {md.get('stalled_seconds')} s stalled")
        if e.name == RUN_END:
            goodput = goodput_of(md)
            told = f"; goodput {_goodput_text(goodput)}" if goodput else ""
            return f"run ended: {md.get('state')} after {md.get('total_run_time')} s{told}"
        if self.show_all:
            extras = {k: v for k, v in md.items() if k in _ALL_EVENTS_KEYS and v is not None}
            return f"{e.name} " + " ".join(f"{k}={v}" for k, v in extras.items())
        return None


def _timeline_lines(run: RunSummary, show_all: bool) -> list[tuple[int, str]]:
    """(timestamp, text) for each line of the timeline."""
    writer = _TimelineWriter(run, show_all)
    lines: list[tuple[int, str]] = []
    for e in run.events:
        text = writer.line(e)
        if text is not None:
            lines.append((e.timestamp, text))
    return lines


def render(runs: list[RunSummary], path: str, show_all: bool = False) -> str:
    """The text of ``elastiscope events``: each run's timeline, then its summary."""
    out: list[str] = [f"event log {path}"]
    for run in runs:
        out.append("")
        duration = f" in {run.duration_s:.1f} s" if run.duration_s is not None else ""
        out.append(f"run {run.run_id}  role {run.role}  host {run.hostname}: {run.outcome}{duration}")
        lines = _timeline_lines(run, show_all)
        origin = min((ts for ts, _ in lines if ts), default=0)
        for ts, text in lines:
            offset = f"+{(ts - origin) / 1000:.3f}s" if ts and origin else ""
            out.append(f"  {_clock(ts)} {offset:>10}  {text}")
        out.append("  summary:")
        out.extend("    " + line for line in _summary_lines(run))
    skipped = runs[-1].skipped_lines if runs else 0
    if skipped:
        out.append(f"\n({skipped} line(s) of the log were not events and were skipped)")
    return "\n".join(out)


def _summary_lines(run: RunSummary) -> list[str]:
    reasons: dict[str, int] = {}
    for r in run.restarts:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    lines = [
        f"outcome: {run.outcome}",
        f"attempts: {len(run.attempts)}   restarts: {len(run.restarts)}"
        + (f" ({why})" if why else "")
        + (f"   max restarts: {run.max_restarts}" if run.max_restarts is not None else ""),
    ]
    if run.root_cause:
        rc = run.root_cause
        lines.append(f"root cause: rank {rc.get('rank')} on {rc.get('host')}: {rc.get('error')}")
    if run.failures:
        lines.append(f"failures: {len(run.failures)}")
        for f in run.failures:
            lines.append(f"  attempt {f.attempt}: {_rank(f)}, {_exit(f)}: "
                         f"{f.error or 'no error message'}{_attribution(f)}{_log_note(f)}")
    else:
        lines.append("failures: none")
    lines.extend(_stall_lines(run.stalls))
    if run.rendezvous_ms:
        r = run.rendezvous_ms
        lines.append(f"rendezvous: {len(r)} round(s), mean {_ms(sum(r) / len(r))}, max {_ms(max(r))}")
    timed = [x.duration_ms for x in run.restarts if x.duration_ms is not None]
    if timed:
        lines.append(f"restart to workers running: mean {_ms(sum(timed) / len(timed))}, max {_ms(max(timed))}")
    if run.goodput:
        lines.append(f"goodput: {_goodput_text(run.goodput)}")
        lines.extend(f"  {_attempt_goodput_line(a.goodput)}" for a in run.attempts if a.goodput)
    if run.endpoint_url:
        lines.append(f"endpoint: {run.endpoint_url}")
    return lines


def _stall_lines(stalls: list[Stall]) -> list[str]:
    lines = [f"stalls: {len(stalls)}"] if stalls else []
    for st in stalls:
        suspects = ", ".join(map(str, st.suspect_ranks)) or "none named"
        lines.append(f"  attempt {st.attempt}: suspect rank(s) {suspects} ({st.action}): {st.summary}")
        lines.extend(f"    rank {rank} stacks: {path}" for rank, path in sorted(st.stack_files.items()))
    return lines


def _run_as_json(run: RunSummary) -> dict[str, Any]:
    data = asdict(run)
    data.pop("events")
    data.pop("skipped_lines")  # the log's count, given once at the top
    data["duration_s"] = run.duration_s
    data["restart_count"] = len(run.restarts)
    data["attempt_count"] = len(run.attempts)
    data["failure_count"] = len(run.failures)
    data["event_count"] = len(run.events)
    return data


def summaries_as_json(runs: list[RunSummary], path: str) -> dict[str, Any]:
    """The data of ``elastiscope events --json``."""
    return {
        "path": path,
        "skipped_lines": runs[-1].skipped_lines if runs else 0,
        "runs": [_run_as_json(run) for run in runs],
    }


def _node_label(run: RunSummary) -> str:
    group_rank = next((e.metadata.get("group_rank") for e in run.events
                       if e.metadata.get("group_rank") is not None), "?")
    return f"node {group_rank} {run.hostname}"


def _job_lines(job: JobTimeline, show_all: bool) -> list[tuple[float, int, str]]:
    """Every node's timeline lines, tagged with the node, in the order things happened: a
    failure at the time its worker exited (not when its agent told it), the root cause first.

    A collateral failure is never listed before the root cause of its attempt: it is caused by
    it, and when both workers exit within milliseconds (a peer's connection closes as the root
    cause's process ends) the agents' clocks and wake-ups can stamp them in either order. Its
    own time is still the one shown."""
    lines = []
    root_exits = [f.exited_at for f in job.root_causes]
    for run in job.runs:
        label = _node_label(run)
        writer = _TimelineWriter(run, show_all)
        for e in run.events:
            text = writer.line(e)
            if text is None:
                continue
            at: float = e.timestamp
            order_at, first = at, 1
            if e.name == WORKER_FAILED:
                f = failure_of(e, None)
                at, first = f.exited_at, 0 if f.root_cause else 1
                order_at = at if f.root_cause else _after_its_root_cause(at, root_exits)
            lines.append((order_at, first, at, f"[{label}] {text}"))
    lines.sort(key=lambda line: (line[0], line[1]))
    return [(at, first, text) for _, first, at, text in lines]


def _after_its_root_cause(at: float, root_exits: list[float]) -> float:
    """A collateral failure's place in the order: after a root cause that exited at most a
    second (the times are in ms) after it, which is the jitter of two agents stamping exits."""
    return max([at] + [t for t in root_exits if at <= t <= at + 1000.0])


def render_jobs(jobs: list[JobTimeline], show_all: bool = False) -> str:
    """The text of ``elastiscope events`` over several logs: per job, its root cause, one
    timeline of every node, then each node's summary."""
    out: list[str] = []
    for job in jobs:
        if out:
            out.append("")
        nodes = ", ".join(_node_label(run) for run in job.runs)
        out.append(f"job {job.run_id}: {len(job.runs)} node(s): {nodes}")
        out.extend(f"  event log {path}" for path in job.paths)
        out.extend(f"  {_root_cause_line(f)}" for f in job.root_causes)
        lines = _job_lines(job, show_all)
        origin = min((ts for ts, _, _ in lines if ts), default=0)
        for ts, _, text in lines:
            offset = f"+{(ts - origin) / 1000:.3f}s" if ts and origin else ""
            out.append(f"  {_clock(int(ts))} {offset:>10}  {text}")
        for run in job.runs:
            out.append(f"  summary of {_node_label(run)}: {run.outcome}")
            out.extend("    " + line for line in _summary_lines(run))
    return "\n".join(out)


def jobs_as_json(jobs: list[JobTimeline]) -> dict[str, Any]:
    """The data of ``elastiscope events --json`` over several logs."""
    return {"jobs": [
        {"run_id": job.run_id, "paths": job.paths,
         "root_causes": [asdict(f) for f in job.root_causes],
         "nodes": [_run_as_json(run) for run in job.runs]}
        for job in jobs
    ]}
