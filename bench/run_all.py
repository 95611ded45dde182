"""Every benchmark, Elastiscope next to torchrun in the same run, written up as docs/benchmarks.md.

    python bench/run_all.py                 # the full suite (about half an hour on 2 cores)
    python bench/run_all.py --quick         # few repetitions, small curves (a few minutes)
    python bench/run_all.py --only restart,steady --reps 3
    python bench/run_all.py --render-only   # rewrite the page from docs/bench/results.json

Sections: import_cost, launch, restart (restart and failure detection latency, from the same
crash-once runs), recovery (time to recovery of a real DDP job, bench/recovery.py), steady (agent CPU and memory with sleeping workers), hotpath (telemetry
record/put_metric), endpoint (/metrics under concurrent load), scaling (workers, nodes, event
rates), hang (the same hang under both: time until anything reports it; stack capture). Launchers alternate within each section (A/B, several repetitions); the page gives
medians with min-max, the machine, and the load average around every section. Raw results
go to docs/bench/results.json, plots to docs/bench/*.png (tables only without matplotlib).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import detection_latency  # noqa: E402
import hang_detection  # noqa: E402
import recovery  # noqa: E402
import scaling  # noqa: E402
from common import OURS, THEIRS  # noqa: E402

SECTIONS = ("import_cost", "launch", "restart", "recovery", "steady", "hotpath", "endpoint", "scaling", "hang")
# Repetitions per section: (full, quick).
REPS = {"import_cost": (15, 2), "launch": (7, 2), "restart": (9, 3), "recovery": (5, 2), "steady": (5, 2),
        "hang": (3, 1)}
HANG_LIMIT_S = (60.0, 20.0)  # how long torchrun is given to report the hang (full, quick)
STEADY_WINDOW_S = (10.0, 3.0)
CPU_PARTS = ("launcher_main_thread", "launcher_other_threads", "helper_processes")
HOTPATH_CALLS = (100_000, 20_000)


def _reps(section: str, args) -> int:
    return args.reps if args.reps is not None else REPS[section][1 if args.quick else 0]


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- sections ------------------------------------------------------------------------------


def measure_import_cost(args) -> dict:
    reps = _reps("import_cost", args)
    return dict(common.run_json("import_cost.py", "--reps", str(reps)), reps=reps)


def measure_launch(args) -> dict:
    """The no-op job: wall time from unsampled runs, memory from separate sampled runs."""
    reps = _reps("launch", args)
    with tempfile.TemporaryDirectory(prefix="run_all_launch_") as tmp:
        for name in common.LAUNCHER_NAMES:  # warm-up: page cache, .pyc files
            common.launch_noop(name, "c10d", 4, Path(tmp), interval=None)

        def one(rep: int, name: str) -> dict:
            return {**common.launch_noop(name, "c10d", 4, Path(tmp), interval=0.01),
                    **common.launch_noop(name, "c10d", 4, Path(tmp), interval=None)}

        rows, failures = common.ab_runs(reps, one, say, label="launch")
    return {"reps": reps, "nproc": 4, "rdzv": "c10d", "failures": failures,
            "launchers": {name: common.summaries(r) for name, r in rows.items()}}


def measure_restart(args) -> dict:
    reps = _reps("restart", args)
    return {rdzv: detection_latency.measure(reps, 4, rdzv, progress=say) for rdzv in ("c10d", "static")}


def measure_recovery(args) -> dict:
    reps = _reps("recovery", args)
    return common.run_json("recovery.py", "--reps", str(reps), "--nproc", "2,4", timeout=7200.0)


def measure_steady(args) -> dict:
    reps, window = _reps("steady", args), STEADY_WINDOW_S[1 if args.quick else 0]
    with tempfile.TemporaryDirectory(prefix="run_all_steady_") as tmp:
        rows, failures = common.ab_runs(
            reps, lambda rep, name: common.steady_state(name, "c10d", 4, Path(tmp), window=window), say, "steady")
    return {"reps": reps, "window_s": window, "nproc": 4, "rdzv": "c10d", "failures": failures,
            "launchers": {name: common.summaries(r) for name, r in rows.items()}}


def measure_hotpath(args) -> dict:
    return common.run_json("telemetry_hotpath.py", "--n", str(HOTPATH_CALLS[1 if args.quick else 0]))


def measure_endpoint(args) -> dict:
    if not (common.BENCH / "endpoint_load.py").exists():
        raise RuntimeError("bench/endpoint_load.py is not in the tree yet")
    data = common.run_json("endpoint_load.py", *(["--quick"] if args.quick else []))
    if "error" in data:
        raise RuntimeError(f"endpoint_load.py: {data['error']}")
    return data


def measure_scaling(args) -> dict:
    return scaling.run(quick=args.quick, reps=args.reps, progress=say)


def measure_hang(args) -> dict:
    reps, limit = _reps("hang", args), HANG_LIMIT_S[1 if args.quick else 0]
    return {"hang": hang_detection.measure_hang(reps, limit, 5.0, progress=say),
            "capture": hang_detection.measure_capture()}


MEASURE = {
    "import_cost": measure_import_cost, "launch": measure_launch, "restart": measure_restart,
    "recovery": measure_recovery,
    "steady": measure_steady, "hotpath": measure_hotpath, "endpoint": measure_endpoint,
    "scaling": measure_scaling, "hang": lambda args: measure_hang(args),
}


def run_sections(sections, args) -> dict:
    """Each section with the load average around it; a failing section is reported, not fatal."""
    out = {}
    for section in sections:
        say(f"== {section} (load average {common.load_average()})")
        began = time.monotonic()
        entry = {"date": time.strftime("%H:%M:%S"), "load_average_before": common.load_average()}
        try:
            entry["result"] = MEASURE[section](args)
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            say(f"{section} failed: {entry['error']}")
            if args.verbose:
                traceback.print_exc()
        entry["load_average_after"] = common.load_average()
        entry["seconds"] = round(time.monotonic() - began, 1)
        out[section] = entry
    return out


def wait_for_quiet(limit_s: float, threshold: float) -> list[float]:
    """Wait (up to ``limit_s``) for the 1-minute load average to fall below ``threshold``."""
    deadline = time.monotonic() + limit_s
    while os.getloadavg()[0] > threshold and time.monotonic() < deadline:
        say(f"waiting for a quieter machine: load {common.load_average()} > {threshold:.1f}")
        time.sleep(15)
    return common.load_average()


# ---- the page ------------------------------------------------------------------------------

GOAL_RESTART_RATIO, GOAL_LAUNCH_WALL, GOAL_STEADY_CPU, GOAL_PEAK_RSS = 0.25, 1.0, 1.0, 1.1
GOAL_DETECTION_MS, GOAL_RECORD_P99_US = 5.0, 50.0
MIB = 2**20


def _get(data, *path):
    """data[path[0]][path[1]]... or None when any step is missing."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _result(results: dict, section: str):
    return _get(results, "sections", section, "result")


def _spread(summary: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    """'median (min–max)' of a summarize() dict, times ``scale``."""
    if not summary or summary.get("median") is None:
        return "–"
    f = f"{{:.{digits}f}}"
    med, lo, hi = (f.format(summary[k] * scale) for k in ("median", "min", "max"))
    return f"{med} ({lo}–{hi})" if summary.get("n", 2) > 1 else med


def _med(summary: dict | None, scale: float, unit: str, digits: int = 1) -> str:
    if not summary or summary.get("median") is None:
        return "–"
    return f"{summary['median'] * scale:.{digits}f} {unit}"


def _range(low: float, high: float, unit: str, digits: int) -> str:
    a, b = f"{low:.{digits}f}", f"{high:.{digits}f}"
    return f"{a} {unit}" if a == b else f"{a}–{b} {unit}"


def _x(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}×"


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "**missed**")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def goals(results: dict) -> list[dict]:
    """Each acceptance goal: what was measured, whether it holds, and why not when it does not."""
    rows = []
    restart = _result(results, "restart") or {}
    for rdzv, label in (("c10d", "`--standalone` (c10d)"), ("static", "static rendezvous")):
        r = restart.get(rdzv)
        value = r and r.get("restart_ratio")
        note = ""
        if value is not None and value > GOAL_RESTART_RATIO:
            ours = _get(r, "launchers", OURS) or {}
            ours_ms = _get(ours, "restart_latency_s", "median")
            rdzv_ms = _get(ours, "restart_rendezvous_s", "median")
            goal_ms = _get(r, "launchers", THEIRS, "restart_latency_s", "median")
            note = "see the restart section"
            if ours_ms and goal_ms:
                note = (f"ours took {ours_ms * 1000:.0f} ms where the goal is "
                        f"{GOAL_RESTART_RATIO * goal_ms * 1000:.0f} ms"
                        + (f"; its rendezvous alone {rdzv_ms * 1000:.0f} ms" if rdzv_ms else "")
                        + "; see the restart section")
        rows.append({"goal": f"restart latency, {label}", "target": f"≤ {GOAL_RESTART_RATIO}× torchrun",
                     "ours": _med(_get(r, "launchers", OURS, "restart_latency_s"), 1000, "ms"),
                     "theirs": _med(_get(r, "launchers", THEIRS, "restart_latency_s"), 1000, "ms"),
                     "measured": _x(value), "met": None if value is None else value <= GOAL_RESTART_RATIO,
                     "note": note})

    launch = _get(_result(results, "launch"), "launchers") or {}
    ours, theirs = launch.get(OURS, {}), launch.get(THEIRS, {})
    wall = common.ratio(ours.get("wall_s"), theirs.get("wall_s"))
    rss = common.ratio(ours.get("agent_rss_bytes"), theirs.get("agent_rss_bytes"))
    rows.append({"goal": "launch wall time, no-op job, 4 workers", "target": f"≤ {GOAL_LAUNCH_WALL}× torchrun",
                 "ours": _med(ours.get("wall_s"), 1, "s", 2), "theirs": _med(theirs.get("wall_s"), 1, "s", 2),
                 "measured": _x(wall), "met": None if wall is None else wall <= GOAL_LAUNCH_WALL,
                 "note": "`elastiscope run` does more around the workers than torchrun: it configures telemetry "
                 "(Prometheus registry, JSONL event log, structlog), starts the HTTP endpoint (FastAPI and "
                 "uvicorn, imported on the endpoint's thread while the main thread rendezvouses), a worker "
                 "spawner process and standby interpreters, and flushes the event log at the end."})
    launcher_ratio = common.ratio(ours.get("launcher_rss_bytes"), theirs.get("launcher_rss_bytes"))
    helpers = _get(ours, "helpers_rss_bytes", "median")
    helper_count = _get(ours, "helper_processes", "median")
    rows.append({"goal": "peak RSS at launch (launcher + helper processes)", "target": f"≤ {GOAL_PEAK_RSS}× torchrun",
                 "ours": _med(ours.get("agent_rss_bytes"), 1 / MIB, "MiB", 0),
                 "theirs": _med(theirs.get("agent_rss_bytes"), 1 / MIB, "MiB", 0),
                 "measured": _x(rss), "met": None if rss is None else rss <= GOAL_PEAK_RSS,
                 "note": "" if helpers is None or launcher_ratio is None else
                 f"the launcher process alone is {launcher_ratio:.2f}× torchrun's (it imports structlog and "
                 f"prometheus-client next to torch); on top of it come {_helpers_text(helper_count)} "
                 f"with {helpers / MIB:.0f} MiB RSS (peak, shared library pages counted in each process)."})

    rows += recovery.goal_rows(_result(results, "recovery"))

    steady = _get(_result(results, "steady"), "launchers") or {}
    cpu = common.ratio(_get(steady, OURS, "cpu_ms_per_s"), _get(steady, THEIRS, "cpu_ms_per_s"))
    rows.append({"goal": "steady agent CPU, 4 sleeping workers", "target": f"≤ {GOAL_STEADY_CPU}× torchrun",
                 "ours": _med(_get(steady, OURS, "cpu_ms_per_s"), 1, "ms/s", 2),
                 "theirs": _med(_get(steady, THEIRS, "cpu_ms_per_s"), 1, "ms/s", 2),
                 "measured": _x(cpu), "met": None if cpu is None else cpu <= GOAL_STEADY_CPU,
                 "note": _steady_note(steady)})

    live = [_get(r, "live_detection_median_s") for r in restart.values()]
    live = [v for v in live if v is not None]
    detect_ms = min(live) * 1000 if live else None
    worst_ms = max(live) * 1000 if live else None
    notices = [_get(r, "launchers", THEIRS, "notice_latency_s", "median") for r in restart.values()]
    notices = [v * 1000 for v in notices if v is not None]
    measured = "–" if detect_ms is None else _range(detect_ms, worst_ms, "ms", 1)
    rows.append({"goal": "failure detection (worker exit → live event), median", "target": f"≤ {GOAL_DETECTION_MS:g} ms",
                 "ours": measured,
                 "theirs": "no live event; its agent notices after " + _range(min(notices), max(notices), "ms", 0)
                 if notices else "–",
                 "measured": measured,
                 "met": None if worst_ms is None else worst_ms <= GOAL_DETECTION_MS, "note": ""})

    cases = _get(_result(results, "hotpath"), "cases") or {}
    p99 = [(case, t["record"]["p99_us"]) for case, t in cases.items() if _get(t, "record", "p99_us") is not None]
    worst = max(p99, key=lambda c: c[1]) if p99 else None
    rows.append({"goal": "`record()` p99, default sinks and a blocked sink", "target": f"≤ {GOAL_RECORD_P99_US:g} µs",
                 "ours": "–" if worst is None else f"{worst[1]:.1f} µs", "theirs": "n/a (no telemetry pipeline)",
                 "measured": "–" if worst is None else f"{worst[1]:.1f} µs (worst case: {worst[0]})",
                 "met": None if worst is None else worst[1] <= GOAL_RECORD_P99_US, "note": ""})
    return rows


def _helpers_text(count: float) -> str:
    if count <= 1:
        return ("our worker spawner process (the standby interpreters, one per worker, start 0.2 s after "
                "the workers and this job is over before then)")
    return (f"{count:.0f} helper processes: our worker spawner and warm standby interpreters, one per worker, "
            "kept because on c10d a membership change can restart the group even with `--max-restarts 0`")


def _steady_note(steady: dict) -> str:
    def part(name, key):
        value = _get(steady, name, f"cpu_ms_per_s_{key}", "median")
        return "–" if value is None else f"{value:.2f}"

    if not steady.get(OURS) or not steady.get(THEIRS):
        return ""
    return (f"CPU ms/s, ours vs torchrun: launcher main thread {part(OURS, 'launcher_main_thread')} vs "
            f"{part(THEIRS, 'launcher_main_thread')} (both wake every 0.1 s; ours also publishes its state "
            f"metrics and samples every worker's CPU and memory every 5 s), the launcher's other threads "
            f"{part(OURS, 'launcher_other_threads')} vs {part(THEIRS, 'launcher_other_threads')} (ours adds "
            f"the HTTP endpoint's event loop, asleep until a request, and the telemetry delivery threads), "
            f"helper processes {part(OURS, 'helper_processes')} vs {part(THEIRS, 'helper_processes')}.")


def render_goals(results) -> list[str]:
    rows = goals(results)
    lines = ["## Goals", "", "Ratios are ours / torchrun on medians of alternating runs in the same session.", ""]
    lines += _table(["goal", "target", "ours", "torchrun", "measured", "verdict"],
                    [[g["goal"], g["target"], g.get("ours", "–"), g.get("theirs", "–"), g["measured"], _verdict(g["met"])]
                     for g in rows])
    misses = [g for g in rows if g["met"] is False]
    if misses:
        lines += ["Where a goal is missed, why (as far as we know):", ""]
        lines += [f"- **{g['goal']}**: {g['note'] or 'no explanation yet.'}" for g in misses]
        lines.append("")
    return lines


def render_machine(results) -> list[str]:
    m = results.get("machine", {})
    load = f"{m.get('load_average_start')} at the start, {m.get('load_average_end')} at the end"
    rows = [["CPU", f"{m.get('cpu_model')} ({m.get('logical_cpus')} logical, {m.get('physical_cpus')} physical)"],
            ["memory", f"{m.get('memory_gib')} GiB"], ["OS", m.get("os")],
            ["Python / torch", f"{m.get('python')} / {m.get('torch')}"],
            ["commit", m.get("commit")], ["date", m.get("date")],
            ["load average (1, 5, 15 min)", load],
            ["mode", ("quick" if results.get("quick") else "full")
             + (f", {results['reps_override']} repetition(s) per section" if results.get("reps_override") else "")
             + f", {results.get('seconds')} s in all"],
            ["command", f"`{results.get('command')}`"]]
    lines = ["## Machine", ""] + _table(["", ""], rows)
    lines += ["Absolute times hold for this machine only; the ratios are what carries over. The machine "
              "was shared with other work while this ran: each section's load average is in the last table.", ""]
    return lines


def render_launch(results) -> list[str]:
    r = _result(results, "launch")
    lines = ["## Launch overhead", "",
             "A no-op script with 4 workers, `--standalone` for both (one node on an embedded c10d store; "
             "torchrun's own default for one node is a static store on port 29500, which collides on a "
             "shared machine). Wall time is exec to exit, from runs that nothing samples. Memory comes "
             "from separate runs: the launcher's own peak is its `ru_maxrss` from `wait4`; helper processes "
             "(our spawner and standby interpreters; torchrun has none) are sampled every 10 ms once they "
             "have exec'd, and their peaks added. Workers are not counted. `elastiscope run` keeps its "
             "endpoint and event log on, with `--metrics-linger 0` (the grace period for a last scrape "
             "after the job, 5 s by default, would otherwise count as launch time).", ""]
    if not r:
        return lines + [_missing(results, "launch"), ""]
    rows = []
    for name in common.LAUNCHER_NAMES:
        row = r["launchers"][name]
        helpers = row.get("helper_processes")
        rows.append([name, _spread(row.get("wall_s"), 1, 2), _spread(row.get("launcher_rss_bytes"), 1 / MIB, 0),
                     _spread(row.get("helpers_rss_bytes"), 1 / MIB, 0) + (f" ({helpers['median']:.0f})" if helpers else ""),
                     _spread(row.get("agent_rss_bytes"), 1 / MIB, 0)])
    o, t = r["launchers"][OURS], r["launchers"][THEIRS]
    rows.append(["**ratio**", _x(common.ratio(o.get("wall_s"), t.get("wall_s"))),
                 _x(common.ratio(o.get("launcher_rss_bytes"), t.get("launcher_rss_bytes"))), "",
                 _x(common.ratio(o.get("agent_rss_bytes"), t.get("agent_rss_bytes")))])
    lines += _table(["launcher", "wall s", "launcher peak RSS MiB", "helper processes' peak RSS MiB (count)",
                     "agent-side peak RSS MiB"], rows)
    lines.append(f"{r['reps']} repetitions each (plus one warm-up run each), alternating; median (min–max)."
                 + _failures_note(r.get("failures")))
    return lines + [""]


def _failures_note(failures: dict | None) -> str:
    failed = {name: f for name, f in (failures or {}).items() if f}
    if not failed:
        return ""
    parts = [f"{len(f)} run(s) of {name} failed and are left out (first: `{f[0]}`)" for name, f in failed.items()]
    return " **" + "; ".join(parts) + ".**"


def render_restart(results) -> list[str]:
    r = _result(results, "restart")
    lines = ["## Restart latency and failure detection", "",
             "The crash-once job (`bench/detection_latency.py`): 4 workers; on the first attempt rank 0 "
             "stamps `time.time()` and calls `os._exit(1)` 0.5–0.6 s after starting (the delay varies "
             "over one monitor interval, the same sequence for both), the others sleep; "
             "`--max-restarts 1`. Every time below is measured from the failing worker's exit stamp.", "",
             "- **restart**: until the first worker of the second attempt starts (stamped by the worker).",
             "- **agent notices**: until the agent's run loop begins the check that reports FAILED. Both "
             "launchers run under the same shim that wraps their agent's `_monitor_workers`; torchrun "
             "polls every `--monitor-interval` (0.1 s), ours wakes on the exit.",
             "- **live event** (ours only): the `elastiscope.worker.failed` event's timestamp in the event "
             "log (millisecond resolution, so up to 1 ms early), and the event's own `detect_latency_ms` "
             "(exit seen by our reaper → event published). torchrun publishes no event when a worker "
             "fails (its per-worker events are recorded when the run ends), so its effective detection "
             "is the *agent notices* column.", ""]
    if not r:
        return lines + [_missing(results, "restart"), ""]
    rows = []
    for rdzv, res in r.items():
        for name in common.LAUNCHER_NAMES:
            s = res["launchers"][name]
            rows.append([rdzv, name, _spread(s.get("restart_latency_s"), 1000), _spread(s.get("notice_latency_s"), 1000),
                         _spread(s.get("event_latency_s"), 1000), _spread(s.get("event_detect_latency_s"), 1000, 2),
                         _spread(s.get("restart_rendezvous_s"), 1000)])
        rows.append([rdzv, "**ratio**", _x(res.get("restart_ratio")), "", "", "", ""])
    lines += _table(["rendezvous", "launcher", "restart ms", "agent notices ms", "live event ms",
                     "detect_latency_ms", "restart's rendezvous ms"], rows)
    reps = next(iter(r.values()))["reps"]
    failed = "".join(_failures_note(res.get("failures")) for res in r.values())
    lines += [f"{reps} repetitions per launcher and rendezvous, alternating; median (min–max).{failed} "
              "*restart's rendezvous* is the second `torchelastic.worker.status.RENDEZVOUS` event's "
              "`duration_ms` in our event log (torchrun writes no event log). ", ""]
    lines += ["Ours avoids two costs of torch's c10d handler that torchrun pays (`agent/torch_patches.py`): "
              "rendezvous events named with `inspect.stack()`, tens of ms per rendezvous in an agent's "
              "deep stack (any c10d rendezvous), and, on a one-node rendezvous (`--standalone`, our "
              "default without an endpoint), a random 0–0.3 s join delay meant to stagger many nodes, "
              "paid at launch and on the first restart."]
    c10d, static = r.get("c10d"), r.get("static")
    if c10d and static:
        cross = common.ratio(_get(c10d, "launchers", OURS, "restart_latency_s"),
                             _get(static, "launchers", THEIRS, "restart_latency_s"))
        if cross is not None:
            lines[-1] += (f" Each launcher with its own default for one node (ours: c10d standalone; "
                          f"torchrun: static), the ratio is {_x(cross)}.")
    lines += [""]
    if _has_image(results, "restart.png"):
        lines += ["![restart latency per run](bench/restart.png)", ""]
    return lines


def render_steady(results) -> list[str]:
    r = _result(results, "steady")
    lines = ["## Steady state: agent CPU and memory", "",
             "4 workers that sleep, `--standalone`. After the workers are up and 5 s have passed, the CPU "
             "time of the launcher and every descendant that is not a worker (our spawner and standby "
             "interpreters) is read from `/proc/<pid>/task/*/schedstat` (nanoseconds; psutil's 10 ms "
             "ticks are too coarse) at the start and end of the window; memory is sampled five times "
             "in the window (RSS counts shared pages in every process; PSS shares them out among every "
             "process that maps them, other jobs on the machine included, so it moves with what else runs).", ""]
    if not r:
        return lines + [_missing(results, "steady"), ""]
    rows = [[name, _spread(s["cpu_ms_per_s"], 1, 2),
             *(_spread(s.get(f"cpu_ms_per_s_{part}"), 1, 2) for part in CPU_PARTS),
             _spread(s["rss_bytes"], 1 / MIB, 0), _spread(s["pss_bytes"], 1 / MIB, 0),
             f"{s['agent_processes']['median']:.0f}"]
            for name, s in r["launchers"].items()]
    cpu = common.ratio(r["launchers"][OURS]["cpu_ms_per_s"], r["launchers"][THEIRS]["cpu_ms_per_s"])
    rss = common.ratio(r["launchers"][OURS]["rss_bytes"], r["launchers"][THEIRS]["rss_bytes"])
    pss = common.ratio(r["launchers"][OURS]["pss_bytes"], r["launchers"][THEIRS]["pss_bytes"])
    rows.append(["**ratio**", _x(cpu), "", "", "", _x(rss), _x(pss), ""])
    lines += _table(["launcher", "CPU ms per s", "of which: launcher main thread", "launcher's other threads",
                     "helper processes", "RSS MiB", "PSS MiB", "agent-side processes"], rows)
    lines += [f"{r['reps']} repetitions of a {r['window_s']:g} s window each; median (min–max).{_failures_note(r.get('failures'))} The "
              "launcher's other threads are, for torchrun, the c10d store's and keep-alive threads; for "
              "ours also the HTTP endpoint's event loop and the telemetry delivery threads.", ""]
    return lines


def render_recovery(results) -> list[str]:
    lines = recovery.render(_result(results, "recovery"))
    if not _result(results, "recovery"):
        lines[-2] = _missing(results, "recovery")
    return lines


def render_import_cost(results) -> list[str]:
    r = _result(results, "import_cost")
    lines = ["## Import cost", "", "`import agent.api` against `import torch.distributed.elastic.agent.server.api`, "
             "each in a fresh interpreter (`bench/import_cost.py`): wall time and the child's peak RSS.", ""]
    if not r:
        return lines + [_missing(results, "import_cost"), ""]
    rows = [[name, f"{r[name]['wall_s_median'] * 1000:.0f} ({r[name]['wall_s_min'] * 1000:.0f}–"
             f"{r[name]['wall_s_max'] * 1000:.0f})", f"{r[name]['rss_mib_median']:.0f}"] for name in ("elastiscope", "torch")]
    rows.append(["**ratio**", _x(r["ratio"]["wall"]), _x(r["ratio"]["rss"])])
    lines += _table(["module", "wall ms", "peak RSS MiB"], rows)
    return lines + [f"{r.get('reps', '?')} repetitions each, alternating, after a warm-up; median (min–max). "
                    "`agent.api` imports torch on first use, not at import.", ""]


def render_hotpath(results) -> list[str]:
    r = _result(results, "hotpath")
    lines = ["## Telemetry hot path", "",
             "How long `record(event)` and `put_metric(name, value)` hold the agent's thread "
             "(`bench/telemetry_hotpath.py`), timed call by call: **a** no sinks (the pipeline alone), "
             "**b** the default sinks of `telemetry.configure` (memory ring, log context, Prometheus, "
             "JSONL event log), **c** b plus a sink that sleeps 1 s per record (blocked: its queue fills "
             "and drops).", ""]
    if not r:
        return lines + [_missing(results, "hotpath"), ""]
    rows = []
    for case, timings in r["cases"].items():
        for call in ("record", "put_metric"):
            t = timings[call]
            rows.append([case, f"`{call}`", f"{t['p50_us']:.2f}", f"{t['p99_us']:.2f}", f"{t['p999_us']:.1f}", f"{t['max_us']:.0f}"])
    lines += _table(["case", "call", "p50 µs", "p99 µs", "p99.9 µs", "max µs"], rows)
    lines.append(f"{r['n']} timed calls of each kind per case.")
    sleepy = _get(r, "cases", "c", "sleepy_sink")
    if sleepy:
        lines.append(f"In c the blocked sink was offered {sleepy['offered']} records and received "
                     f"{sleepy['received']}; its drop counter says {sleepy['dropped_counter']}, the true "
                     f"number is {sleepy['true_dropped']}.")
    burst = r.get("burst_b")
    if burst:
        lines.append(f"A burst of {burst['events']} events through b: {burst['dropped']} dropped, "
                     f"{burst['event_log_lines']} lines in the event log, published in "
                     f"{burst['publish_seconds']} s, all written by {burst['all_written_seconds']} s.")
    return lines + [""]


def render_endpoint(results) -> list[str]:
    r = _result(results, "endpoint")
    lines = ["## `/metrics` under concurrent load", "",
             "`bench/endpoint_load.py`: `examples/train_ddp.py` under `elastiscope run`, in pairs of runs, one "
             "with nobody calling the endpoint and one with a separate load generator requesting `/metrics` "
             "and `/status` in turn at a fixed rate (loopback, keep-alive connections) until training is "
             "done. It reports the endpoint's latency and what the load costs training (the loop's own "
             "step rate).", ""]
    if not r:
        return lines + [_missing(results, "endpoint"), ""]
    lat = r["latency"]
    rows = [[key, s.get("count", 0), *(f"{s[k]:.2f}" if k in s else "–" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))]
            for key, s in lat.items()]
    lines += _table(["route", "requests", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)
    t, load = r["training"], r["load"]
    lines += [f"Load delivered: {load['requests']} requests at {load['achieved_rps']:.0f}/s (target "
              f"{r['target_rps']:g}/s), {load['errors']} errors, {load['non_200']} not 200. Training step "
              f"rate ({r['nproc']} worker(s), {r['steps']} steps, {r['repeats']} pair(s), medians): "
              f"{t['unloaded_steps_per_s']:.1f}/s unloaded, {t['loaded_steps_per_s']:.1f}/s loaded "
              f"({t['loaded_over_unloaded']:.3f}×).", ""]
    return lines


def render_scaling(results) -> list[str]:
    r = _result(results, "scaling")
    lines = ["## Scaling", ""]
    if not r:
        return lines + [_missing(results, "scaling"), ""]
    lines += _render_workers(r.get("workers"), results) + _render_nodes(r.get("nodes"), results)
    return lines + _render_events(r.get("events"), results)


def _render_workers(w, results) -> list[str]:
    if not w:
        return []
    lines = ["### Local workers", "",
             f"Restart latency of the crash-once job and the agent side's steady CPU and memory "
             f"({w['window_s']:g} s window), for 1 to {w['counts'][-1]} workers on this host, "
             f"{w['rdzv']} rendezvous (so that torch's random c10d join delay does not drown the "
             f"agents' own costs), {w['reps']} repetition(s) each; median (min–max). Here the failing "
             f"worker exits {w.get('crash_after_s', 2.0):g}–{w.get('crash_after_s', 2.0) + 0.1:g} s after "
             "its start, as a real job fails well after its start: our standby interpreters start 0.2 s "
             "after the workers, and with a 0.5 s crash 16 of them on 2 cores are not all up yet, so part "
             "of the restart starts cold. The steady runs allow no restart, so ours keeps no standbys "
             "there (launcher and spawner only).", ""]
    rows = []
    for i, n in enumerate(w["counts"]):
        o, t = w["launchers"][OURS], w["launchers"][THEIRS]
        rows.append([n, _spread(o["restart_latency_s"][i], 1000), _spread(t["restart_latency_s"][i], 1000),
                     _x(common.ratio(o["restart_latency_s"][i], t["restart_latency_s"][i])),
                     _spread(o["cpu_ms_per_s"][i], 1, 2), _spread(t["cpu_ms_per_s"][i], 1, 2),
                     _spread(o["rss_bytes"][i], 1 / MIB, 0), _spread(t["rss_bytes"][i], 1 / MIB, 0)])
    lines += _table(["workers", "restart ms, ours", "restart ms, torchrun", "ratio", "CPU ms/s, ours",
                     "CPU ms/s, torchrun", "RSS MiB, ours", "RSS MiB, torchrun"], rows)
    if _has_image(results, "workers.png"):
        lines += ["![scaling with local workers](bench/workers.png)", ""]
    return lines


def _render_nodes(nodes, results) -> list[str]:
    if not nodes:
        return []
    lines = ["### Nodes", "",
             f"1 to {nodes['counts'][-1]} agents on 127.0.0.1, one worker each, on torch's c10d handler over "
             "one TCPStore: our agent against torch's `LocalElasticAgent`, each node a process that times "
             "`agent._rendezvous(worker_group)` (and `_assign_worker_ranks` inside it) after all nodes meet "
             "at a barrier. Group time = last node done − first node started. torch's random 0–0.3 s "
             "pre-join delay is switched off for both; its 1 s polling while nodes wait for each other is "
             f"not, and dominates from 2 nodes on. {nodes['reps']} repetition(s) each; median (min–max).", ""]
    rows = []
    for i, n in enumerate(nodes["counts"]):
        o, t = nodes["launchers"][OURS], nodes["launchers"][THEIRS]
        rows.append([n, _spread(o["group_s"][i], 1000), _spread(t["group_s"][i], 1000),
                     _x(common.ratio(o["group_s"][i], t["group_s"][i])),
                     _spread(o["assign_max_s"][i], 1000, 1), _spread(t["assign_max_s"][i], 1000, 1)])
    lines += _table(["nodes", "group ms, ours", "group ms, torch", "ratio", "rank assignment ms (slowest node), ours",
                     "same, torch"], rows)
    lines += ["Rank assignment is a store exchange in both, so the slowest node's figure includes waiting for "
              "the last node to leave the rendezvous: a few milliseconds, or about a second when that node "
              "learns of the completed round only at its next 1 s poll. The plot shows the group time and "
              "the median node's time.", ""]
    if _has_image(results, "nodes.png"):
        lines += ["![rendezvous time with nodes](bench/nodes.png)", ""]
    return lines


def _render_events(ev, results) -> list[str]:
    if not ev:
        return []
    lines = ["### Event rate", "",
             f"Ours only: agent-shaped events published at a paced rate for {ev['seconds']:g} s through the "
             "default sinks (memory ring, log context, Prometheus, JSONL event log). CPU is the whole "
             "process (producer and delivery threads) until every event is written, per second of "
             "traffic; *no sinks* is the same traffic into an empty pipeline (pacing loop and dispatch only). "
             "Log lag is how long after the last publish the event log was complete. "
             f"{ev['reps']} repetition(s); median.", ""]
    rows = []
    m = ev["metrics"]
    for i, rate in enumerate(ev["rates"]):
        floor = m.get("floor_cpu_s_per_s")
        rows.append([f"{rate:,}", f"{m['achieved_rate'][i]['median']:,.0f}", f"{m['cpu_s_per_s'][i]['median'] * 100:.0f}%",
                     f"{floor[i]['median'] * 100:.0f}%" if floor else "–",
                     f"{m['dropped'][i]['median']:.0f}", f"{m['log_lag_s'][i]['median'] * 1000:.0f}",
                     f"{m['event_log_lines'][i]['median']:,.0f}"])
    lines += _table(["target events/s", "achieved events/s", "CPU (one core = 100%)", "same, no sinks",
                     "dropped", "log lag ms", "lines in the event log"], rows)
    top = max(x["median"] for x in m["achieved_rate"])
    if top < 0.95 * ev["rates"][-1]:
        lines += [f"The producer tops out near {top:,.0f} events/s on this machine: `record()` shares the GIL "
                  "with the delivery threads that serialize and write the events.", ""]
    for i, rate in enumerate(ev["rates"]):
        dropped = m["dropped"][i]["median"]
        if dropped:
            lines += [f"At {rate:,}/s for {ev['seconds']:g} s the delivery threads fall behind until a queue "
                      f"(131,072 records by default) is full: {dropped:,.0f} records dropped (median), counted "
                      "in `elastiscope_telemetry_dropped_total`; the job itself is not slowed.", ""]
    if _has_image(results, "events.png"):
        lines += ["![event rate](bench/events.png)", ""]
    return lines


def render_hang(results) -> list[str]:
    r = _result(results, "hang")
    lines = ["## Hang detection", "",
             "The hang of issue 14 (`bench/hang_detection.py`): 2 workers over gloo; at step 5 rank 1 "
             "sleeps forever in user code while rank 0 waits in an all-reduce. Measured from rank 1's last "
             "step end (stamped by the worker) until the launcher reports anything: ours with "
             "`--stall-timeout 5 --on-stall fail` (the `elastiscope.worker.stalled` event's timestamp); "
             "torchrun says nothing until gloo's collective timeout (30 minutes by default), so its "
             "figure is bounded by the benchmark's limit.", ""]
    if not r:
        return lines + [_missing(results, "hang"), ""]
    h, c = r["hang"], r["capture"]
    rows = []
    for name in common.LAUNCHER_NAMES:
        s = h["launchers"][name]
        told = _spread(s["report_after_s"], 1, 2) if s["reported_runs"] else f"nothing within {h['limit_s']:g} s"
        rows.append([name, told, f"{s['reported_runs']}/{s['runs']}",
                     _spread(s.get("capture_s"), 1000) if name == OURS else "–",
                     _spread(s.get("exit_after_s"), 1, 2) if name == OURS else "–"])
    lines += _table(["launcher", "reported after s", "runs that reported it", "stack capture ms",
                     "exit (fail) after s"], rows)
    ours = h["launchers"][OURS]
    where = sorted({os.path.basename(str(code)) for code in ours["suspect_code"]})
    lines += [f"Every run of ours named rank 1 as the suspect (at `{', '.join(where)}` of the job's script) "
              f"and rank 0 as waiting in all_reduce: {ours['named_rank_1_and_all_reduce']}."
              f"{_failures_note(h.get('failures'))}", ""]
    rows = [[label, _spread(c[label], 1000), ", ".join(c[label]["read_as"])] for label in ("py-spy", "faulthandler", "stopped")]
    lines += [f"Stack capture of 2 live sleeping workers (`agent.stacks.capture_stacks`; bound {c['bound_s']:g} s): "
              "read by py-spy, by the faulthandler fallback (py-spy unavailable), and both SIGSTOPped "
              "(not responding).", ""]
    return lines + _table(["how", "capture ms", "read as"], rows)


def render_loads(results) -> list[str]:
    rows = [[s, e.get("date", "–"), e.get("load_average_before"), e.get("load_average_after"), e.get("seconds"),
             "error: " + e["error"] if "error" in e else "ok"] for s, e in results["sections"].items()]
    lines = ["## Sections run", "", "Load averages are 1, 5 and 15 minutes.", ""]
    lines += _table(["section", "started", "load before", "load after", "seconds", "status"], rows)
    for rerun in results.get("reruns", []):
        lines.append(f"Rerun on {rerun['date']} (commit {rerun['commit']}): `{rerun['command']}` "
                     f"({', '.join(rerun['sections'])}; load {rerun['load_average_start']} → {rerun['load_average_end']}).")
    return lines + [""]


def _missing(results, section) -> str:
    entry = _get(results, "sections", section)
    if entry is None:
        return "_Not run this time (see `--only`)._"
    return f"_Not measured: {entry.get('error', 'no result')}._"


def _has_image(results, name) -> bool:
    return name in results.get("_images", [])


def render(results: dict) -> str:
    lines = ["# Benchmarks: Elastiscope against torchrun", "",
             "Generated by `python bench/run_all.py` (raw numbers: [bench/results.json](bench/results.json)). "
             "Both launchers run the same jobs in the same session, alternating which goes first, "
             "several repetitions each; tables give medians with min–max.", ""]
    if results.get("_plot_note"):
        lines += [f"> {results['_plot_note']}", ""]
    parts = (render_machine, render_goals, render_launch, render_restart, render_recovery, render_steady,
             render_import_cost, render_hotpath, render_endpoint, render_scaling, render_hang, render_loads)
    for part in parts:
        lines += part(results)
    return "\n".join(lines).rstrip() + "\n"


# ---- plots ---------------------------------------------------------------------------------

COLOURS = {OURS: "#1f77b4", THEIRS: "#d62728"}


def make_plots(results: dict, image_dir: Path) -> tuple[list[str], str | None]:
    """PNG plots of whatever was measured; ([], note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ("matplotlib is not installed, so this page has tables only: "
                    "`pip install matplotlib` (or the `bench` extra) and rerun for the plots.")
    image_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, draw in (("restart.png", _plot_restart), ("workers.png", _plot_workers),
                       ("nodes.png", _plot_nodes), ("events.png", _plot_events)):
        fig = draw(plt, results)
        if fig is not None:
            fig.tight_layout()
            fig.savefig(image_dir / name, dpi=110)
            plt.close(fig)
            made.append(name)
    return made, None


def _plot_restart(plt, results):
    r = _result(results, "restart")
    if not r:
        return None
    fig, axes = plt.subplots(1, len(r), figsize=(5 * len(r), 3.6), squeeze=False)
    for ax, (rdzv, res) in zip(axes[0], r.items()):
        data = [[v * 1000 for v in res["launchers"][n]["restart_latency_s"]["samples"]] for n in common.LAUNCHER_NAMES]
        box = ax.boxplot(data, patch_artist=True)
        ax.set_xticks([1, 2], list(common.LAUNCHER_NAMES))
        for patch, name in zip(box["boxes"], common.LAUNCHER_NAMES):
            patch.set_facecolor(COLOURS[name])
            patch.set_alpha(0.4)
        for i, values in enumerate(data, start=1):
            ax.scatter([i] * len(values), values, s=12, color="black", zorder=3)
        ax.set_title(f"restart latency, 4 workers, {rdzv}")
        ax.set_ylabel("ms (worker exit → first restarted worker)")
        ax.set_ylim(bottom=0)
    return fig


def _curve(ax, xs, summaries_by_name, scale, ylabel, title, logx=False):
    for name, summaries in summaries_by_name.items():
        med = [s["median"] * scale for s in summaries]
        lo = [(s["median"] - s["min"]) * scale for s in summaries]
        hi = [(s["max"] - s["median"]) * scale for s in summaries]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=name, color=COLOURS.get(name))
    ax.set_xscale("log", base=2 if not logx else 10)
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend()


def _plot_workers(plt, results):
    w = _get(_result(results, "scaling"), "workers")
    if not w:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    by = lambda m: {n: w["launchers"][n][m] for n in common.LAUNCHER_NAMES}  # noqa: E731
    _curve(axes[0], w["counts"], by("restart_latency_s"), 1000, "ms", "restart latency vs workers")
    _curve(axes[1], w["counts"], by("cpu_ms_per_s"), 1, "CPU ms per s", "agent CPU, sleeping workers")
    _curve(axes[2], w["counts"], by("rss_bytes"), 1 / MIB, "MiB (RSS, summed)", "agent-side memory")
    for ax in axes:
        ax.set_xlabel("workers")
    return fig


def _plot_nodes(plt, results):
    nodes = _get(_result(results, "scaling"), "nodes")
    if not nodes:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    by = lambda m: {n: nodes["launchers"][n][m] for n in common.LAUNCHER_NAMES}  # noqa: E731
    _curve(axes[0], nodes["counts"], by("group_s"), 1000, "ms", "rendezvous + rank assignment (group)")
    _curve(axes[1], nodes["counts"], by("per_node_median_s"), 1000, "ms", "rendezvous + rank assignment, median node")
    for ax in axes:
        ax.set_xlabel("nodes (agents on 127.0.0.1, c10d)")
    return fig


def _plot_events(plt, results):
    ev = _get(_result(results, "scaling"), "events")
    if not ev:
        return None
    m = ev["metrics"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    rates = ev["rates"]
    axes[0].plot(rates, [s["median"] * 100 for s in m["cpu_s_per_s"]], marker="o", color=COLOURS[OURS],
                 label="default sinks")
    if m.get("floor_cpu_s_per_s"):
        axes[0].plot(rates, [s["median"] * 100 for s in m["floor_cpu_s_per_s"]], marker="o", color="grey",
                     label="no sinks")
    axes[0].legend()
    axes[0].set_ylabel("CPU, % of one core")
    axes[0].set_title("telemetry CPU vs event rate (default sinks)")
    axes[1].plot(rates, [s["median"] for s in m["achieved_rate"]], marker="o", color=COLOURS[OURS], label="achieved")
    axes[1].plot(rates, rates, linestyle="--", color="grey", label="target")
    for rate, dropped in zip(rates, m["dropped"]):
        if dropped["median"]:
            axes[1].annotate(f"{dropped['median']:,.0f} dropped", (rate, rate), xytext=(-8, -4),
                             textcoords="offset points", ha="right", va="top")
    axes[1].set_ylabel("events/s")
    axes[1].set_title("achieved rate (no drops unless marked)")
    axes[1].legend()
    axes[1].set_yscale("log")
    axes[0].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("target events/s")
    return fig


def write_page(results: dict, out_dir: Path) -> Path:
    images, note = make_plots(results, out_dir / "bench")
    page = render(dict(results, _images=images, _plot_note=note))
    path = out_dir / "benchmarks.md"
    path.write_text(page)
    return path


def parse_args(argv=None):
    p = common.OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few repetitions, small curves")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument("--reps", type=int, default=None, help="repetitions for every section")
    p.add_argument("--out", default=str(common.REPO / "docs"),
                   help="where benchmarks.md and bench/ go (default: docs/)")
    p.add_argument("--render-only", action="store_true", help="rewrite the page from <out>/bench/results.json")
    p.add_argument("--merge", action="store_true",
                   help="replace only the sections run now in <out>/bench/results.json (to rerun a disturbed one)")
    p.add_argument("--wait-for-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to this long for the load average to drop below half the CPUs")
    p.add_argument("--verbose", action="store_true", help="tracebacks of failing sections")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s): {', '.join(unknown)}")
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    args.sections = [s for s in SECTIONS if s in sections]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out)
    results_path = out_dir / "bench" / "results.json"
    if args.render_only:
        if not results_path.exists():
            print(f"error: {results_path} does not exist; run the benchmarks first", file=sys.stderr)
            return 2
        results = json.loads(results_path.read_text())
    else:
        machine = common.machine_info()
        if args.wait_for_quiet:
            machine["load_average_start"] = wait_for_quiet(args.wait_for_quiet, (os.cpu_count() or 2) / 2)
            machine["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        began = time.monotonic()
        sections = run_sections(args.sections, args)
        machine["load_average_end"] = common.load_average()
        command = " ".join(["python bench/run_all.py", *(argv if argv is not None else sys.argv[1:])])
        seconds = round(time.monotonic() - began, 1)
        if args.merge and results_path.exists():
            results = json.loads(results_path.read_text())
            results["sections"].update(sections)
            results.setdefault("reruns", []).append({
                "command": command, "sections": list(sections), "seconds": seconds, "date": machine["date"],
                "commit": machine["commit"], "load_average_start": machine["load_average_start"],
                "load_average_end": machine["load_average_end"]})
        else:
            results = {"machine": machine, "quick": args.quick, "reps_override": args.reps,
                       "command": command, "seconds": seconds, "sections": sections}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    page = write_page(results, out_dir)
    say(f"wrote {page}")
    failed = [s for s, e in results["sections"].items() if "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
