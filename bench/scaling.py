"""Scaling curves: how the agents' costs grow with workers, nodes and event rates.

    python bench/scaling.py [--quick] [--only workers,nodes,events] [--reps N] [--json]

* workers (1, 2, 4, 8, 16 on this host): restart latency of the crash-once job (the failing
  worker exits 2 s in, see CRASH_AFTER_S) and the agent side's CPU and memory with sleeping workers, ``elastiscope run`` against ``torchrun``
  (see detection_latency.py and common.steady_state for how each is measured). Static
  rendezvous, so that torch's c10d join delay (a random 0-0.3 s, the same for both) does not
  drown the agents' own costs.
* nodes (1, 2, 4, 8 agents on 127.0.0.1, one worker each): rendezvous + rank assignment on
  torch's c10d handler over one TCPStore, our agent against torch's LocalElasticAgent. Each
  node is a process forked after the imports; all of them build their handler and agent, meet
  at a barrier, then time ``agent._rendezvous(worker_group)`` in-process (and, inside it,
  ``_assign_worker_ranks``). The group time is last node done - first node started. torch's
  random 0-0.3 s pre-join delay is switched off for both, to measure the protocol, not the
  dice; its 1 s polling of the shared state while nodes wait for each other stays, and is what
  dominates the group time from 2 nodes on, for both agents alike.
* events (1k to 100k events/s for a few seconds): through the default sinks of
  ``telemetry.configure`` (memory ring, log context, Prometheus, JSONL event log), paced by a
  producer thread like the agent's: CPU seconds per second of traffic (producer and delivery
  threads together, until everything is written), drops, and how far the event log lags; and
  the same traffic into a pipeline with no sinks, the floor (pacing loop and dispatch).
  Ours only: torchrun has no event pipeline (its events go to a logger at the end of a run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import OURS, THEIRS  # noqa: E402

FULL = {"workers": [1, 2, 4, 8, 16], "nodes": [1, 2, 4, 8], "rates": [1_000, 3_000, 10_000, 30_000, 100_000],
        "reps": 3, "window": 5.0, "event_seconds": 3.0}
QUICK = {"workers": [1, 4], "nodes": [1, 2], "rates": [1_000, 10_000, 100_000],
         "reps": 1, "window": 2.0, "event_seconds": 1.0}
# The failing worker of the workers curve exits this long after its start (plus up to one monitor
# interval): late enough for our standby interpreters, which start 0.2 s after the workers, to be
# up even with 16 workers on 2 cores, as they are when a real job fails minutes in. The 4-worker
# restart bench (detection_latency.py) keeps the harsher 0.5 s.
CRASH_AFTER_S = 2.0
NODE_IMPLS = {OURS: "elastiscope agent", THEIRS: "torch LocalElasticAgent"}


# ---- workers -------------------------------------------------------------------------------


def workers_curve(counts, reps, window, rdzv="static", progress=None) -> dict:
    """Per worker count: restart latency, agent CPU ms/s, agent RSS and PSS, for both launchers."""
    curve = {"counts": list(counts), "rdzv": rdzv, "reps": reps, "window_s": window, "crash_after_s": CRASH_AFTER_S, "failures": {},
             "launchers": {name: {} for name in common.LAUNCHER_NAMES}}
    with tempfile.TemporaryDirectory(prefix="scaling_workers_") as tmp:
        workdir = Path(tmp)

        for n in counts:
            def one(rep: int, name: str, n: int = n) -> dict:
                crash = common.crash_once(name, rdzv, n, workdir, crash_after=CRASH_AFTER_S + 0.1 * (rep % 7) / 7)
                steady = common.steady_state(name, rdzv, n, workdir, window=window)
                return {"restart_latency_s": crash["restart_latency_s"], **steady}

            rows, failures = common.ab_runs(reps, one, progress, label=f"workers={n}")
            curve["failures"][str(n)] = failures
            for name in common.LAUNCHER_NAMES:
                for metric, summary in common.summaries(rows[name]).items():
                    curve["launchers"][name].setdefault(metric, []).append(summary)
    return curve


# ---- nodes ---------------------------------------------------------------------------------


def _build_agent(impl: str, handler, log_dir: str):
    """An agent with one worker on ``handler``, ready to rendezvous (nothing started)."""
    if impl == OURS:
        from agent.api import WorkerSpec
        from agent.local import LocalElasticAgent

        spec = WorkerSpec(role="trainer", local_world_size=1, entrypoint=sys.executable,
                          args=("-c", "pass"), rdzv_handler=handler, local_addr="127.0.0.1")
        return LocalElasticAgent(spec)
    from torch.distributed.elastic.agent.server.api import WorkerSpec
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

    spec = WorkerSpec(role="trainer", local_world_size=1, entrypoint=sys.executable,
                      args=("-c", "pass"), rdzv_handler=handler, local_addr="127.0.0.1")
    return LocalElasticAgent(spec, logs_specs=DefaultLogsSpecs(log_dir=log_dir))


def _node(impl, index, n, run_id, port, ready, barrier, results, tmp) -> None:
    """One node of a nodes-curve repetition (runs in a forked process)."""
    try:
        import torch.distributed.elastic.rendezvous.dynamic_rendezvous as dynamic
        from torch.distributed.elastic.rendezvous import RendezvousParameters
        from torch.distributed.elastic.rendezvous import registry

        keep_polling = dynamic._delay

        def no_jitter(seconds):  # drop the random pre-join delay, keep the 1 s state polling
            if not isinstance(seconds, tuple):
                keep_polling(seconds)

        dynamic._delay = no_jitter
        if impl == OURS:
            import telemetry

            telemetry.configure(event_log=os.path.join(tmp, f"node{index}.jsonl"), run_id=run_id,
                                role="trainer", log_format="json", env={})
        if not ready.wait(60):
            raise TimeoutError("the store did not come up")
        params = RendezvousParameters(backend="c10d", endpoint=f"127.0.0.1:{port.value}", run_id=run_id,
                                      min_nodes=n, max_nodes=n, is_host=False, local_addr="127.0.0.1")
        agent = _build_agent(impl, registry.get_rendezvous_handler(params), os.path.join(tmp, f"logs{index}"))
        assign_s = []
        assign = agent._assign_worker_ranks

        def timed_assign(*args, **kwargs):
            began = time.perf_counter()
            try:
                return assign(*args, **kwargs)
            finally:
                assign_s.append(time.perf_counter() - began)

        agent._assign_worker_ranks = timed_assign
        barrier.wait(60)
        started = time.time()
        agent._rendezvous(agent._worker_group)
        ended = time.time()
        results.put({"index": index, "started": started, "ended": ended, "assign_s": assign_s[0],
                     "group_rank": agent._worker_group.group_rank})
    except BaseException as e:  # reported by the parent in one line
        results.put({"index": index, "error": f"{type(e).__name__}: {e}"})
    finally:
        os._exit(0)  # skip the rendezvous keep-alive threads and interpreter teardown


def nodes_rep(impl: str, n: int) -> dict:
    """One repetition with ``n`` nodes of ``impl``: group and per-node times in seconds."""
    import multiprocessing

    import torch.distributed.elastic.agent.server.local_elastic_agent  # noqa: F401  (import before fork)
    from torch.distributed import TCPStore

    import agent.local  # noqa: F401

    ctx = multiprocessing.get_context("fork")
    ready, barrier, port, results = ctx.Event(), ctx.Barrier(n), ctx.Value("i", 0), ctx.SimpleQueue()
    run_id = f"scaling-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="scaling_nodes_") as tmp:
        nodes = [ctx.Process(target=_node, args=(impl, i, n, run_id, port, ready, barrier, results, tmp))
                 for i in range(n)]
        for p in nodes:
            p.start()
        store = TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True, wait_for_workers=False)
        port.value = store.port
        ready.set()
        rows = []
        deadline = time.monotonic() + 180
        while len(rows) < n and time.monotonic() < deadline:
            if results.empty():
                if not any(p.is_alive() for p in nodes) and results.empty():
                    break
                time.sleep(0.01)
                continue
            rows.append(results.get())
        for p in nodes:
            p.join(10)
            if p.is_alive():
                p.kill()
        del store
    errors = [r["error"] for r in rows if "error" in r]
    if errors or len(rows) != n:
        raise RuntimeError(errors[0] if errors else f"{len(rows)}/{n} nodes reported")
    ranks = sorted(r["group_rank"] for r in rows)
    if ranks != list(range(n)):
        raise RuntimeError(f"group ranks {ranks}, expected 0..{n - 1}")
    per_node = sorted(r["ended"] - r["started"] for r in rows)
    return {
        "group_s": max(r["ended"] for r in rows) - min(r["started"] for r in rows),
        "per_node_median_s": per_node[len(per_node) // 2],
        "assign_max_s": max(r["assign_s"] for r in rows),
    }


def nodes_curve(counts, reps, progress=None) -> dict:
    curve = {"counts": list(counts), "reps": reps, "impls": NODE_IMPLS, "failures": {},
             "launchers": {name: {} for name in common.LAUNCHER_NAMES}}
    for n in counts:
        rows, failures = common.ab_runs(reps, lambda rep, name, n=n: _child("--nodes-rep", name, str(n)),
                                        progress, label=f"nodes={n}")
        curve["failures"][str(n)] = failures
        for name in common.LAUNCHER_NAMES:
            for metric, summary in common.summaries(rows[name]).items():
                curve["launchers"][name].setdefault(metric, []).append(summary)
    return curve


# ---- events --------------------------------------------------------------------------------


def events_rep(rate: int, seconds: float, sinks: str = "default") -> dict:
    """Publish ``rate`` events/s for ``seconds`` through the default sinks (or none); costs and drops."""
    import telemetry
    from telemetry import record
    from telemetry.pipeline import Pipeline
    from telemetry.state import set_pipeline
    from telemetry_hotpath import agent_like_events

    with tempfile.TemporaryDirectory(prefix="scaling_events_") as tmp:
        log_path = os.path.join(tmp, "events.jsonl")
        open(log_path, "w").close()
        if sinks == "none":  # the pacing loop and the pipeline alone: the floor under the default sinks
            pipeline = Pipeline([])
            set_pipeline(pipeline)
        else:
            pipeline = telemetry.configure(event_log=log_path, log_format="json", env={})
        events = agent_like_events(1000)
        total = int(rate * seconds)
        batch = max(1, rate // 1000)  # at most ~1000 wake-ups a second, whatever the rate
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        sent = 0
        while sent < total:
            for _ in range(min(batch, total - sent)):
                event = events[sent % 1000]
                event.timestamp = 0
                record(event, "null")
                sent += 1
            pause = began + sent / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        published = time.perf_counter()
        flushed = pipeline.flush(timeout=120)
        drained = time.perf_counter()
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        stats = pipeline.stats()
        pipeline.close(timeout=10)
        with open(log_path, "rb") as f:
            written = sum(1 for _ in f)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    window = published - began
    return {
        "target_rate": rate, "events": total, "achieved_rate": total / window,
        "cpu_s_per_s": cpu / window, "log_lag_s": drained - published, "flushed": flushed,
        "dropped": sum(s["dropped"] for s in stats.values()), "event_log_lines": written,
    }


def events_curve(rates, reps, seconds, progress=None) -> dict:
    metrics = ("achieved_rate", "cpu_s_per_s", "log_lag_s", "dropped", "event_log_lines", "floor_cpu_s_per_s")
    curve = {"rates": list(rates), "reps": reps, "seconds": seconds, "metrics": {m: [] for m in metrics}}
    for rate in rates:
        samples = {m: [] for m in metrics}
        for rep in range(reps):
            row = _child("--events-rep", str(rate), str(seconds), "default")
            floor = _child("--events-rep", str(rate), str(seconds), "none")
            row["floor_cpu_s_per_s"] = floor["cpu_s_per_s"]
            for m in metrics:
                samples[m].append(row[m])
            if progress:
                progress(f"events {rate}/s rep {rep}: cpu {row['cpu_s_per_s'] * 100:.1f}% of a core "
                         f"(no sinks: {floor['cpu_s_per_s'] * 100:.1f}%), dropped {row['dropped']}, "
                         f"log lag {row['log_lag_s'] * 1000:.0f} ms")
        for m in metrics:
            curve["metrics"][m].append(common.summarize(samples[m]))
    return curve


# ---- plumbing ------------------------------------------------------------------------------


def _child(*args: str, timeout: float = 600.0) -> dict:
    """One repetition in a fresh interpreter (clean pipeline, no threads before fork)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=common.bench_env(),
                          cwd=common.REPO, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise common.RunFailed(f"exit status {proc.returncode}: {detail}")
    return json.loads(lines[-1])


def run(sections=("workers", "nodes", "events"), quick=False, reps=None, progress=None) -> dict:
    plan = dict(QUICK if quick else FULL)
    if reps is not None:
        plan["reps"] = reps
    out = {"plan": plan}
    if "workers" in sections:
        out["workers"] = workers_curve(plan["workers"], plan["reps"], plan["window"], progress=progress)
    if "nodes" in sections:
        out["nodes"] = nodes_curve(plan["nodes"], max(plan["reps"], 3 if not quick else 1), progress=progress)
    if "events" in sections:
        out["events"] = events_curve(plan["rates"], plan["reps"], plan["event_seconds"], progress=progress)
    return out


def main() -> int:
    p = common.OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small curves, one repetition")
    p.add_argument("--only", default="workers,nodes,events", help="comma-separated: workers, nodes, events")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--nodes-rep", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    p.add_argument("--events-rep", nargs=3, metavar=("RATE", "SECONDS", "SINKS"), help=argparse.SUPPRESS)
    args = p.parse_args()

    try:
        if args.nodes_rep:
            print(json.dumps(nodes_rep(args.nodes_rep[0], int(args.nodes_rep[1]))))
            return 0
        if args.events_rep:
            print(json.dumps(events_rep(int(args.events_rep[0]), float(args.events_rep[1]), args.events_rep[2])))
            return 0
        sections = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = set(sections) - {"workers", "nodes", "events"}
        if unknown:
            print(f"error: unknown section(s) {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
        result = run(sections, args.quick, args.reps, progress)
    except Exception as e:  # one line, not a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else json.dumps(
        {k: v for k, v in result.items() if k != "plan"}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
