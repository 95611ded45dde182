"""Hang detection: the same hang under ``torchrun`` and under ``elastiscope run``, side by side.

    python bench/hang_detection.py [--reps 3] [--limit 60] [--stall-timeout 5] [--json]
    python bench/hang_detection.py --irregular 300      # the no-false-stall run (5 minutes)

The hang: two workers over gloo; at step 5 rank 1 sleeps forever in user code while rank 0
waits in an all-reduce. Each rank stamps the end of each step (``time.time()`` after its
optimizer step). Measured from rank 1's last step end:

* torchrun: the first thing it says on stdout/stderr after the hang, or its exit; it says
  nothing until gloo's collective timeout (30 minutes by default), so the figure is bounded by
  ``--limit`` and reported as "nothing within the limit";
* ours (``--stall-timeout`` seconds, ``--on-stall fail``): the ``elastiscope.worker.stalled``
  event (its timestamp in the event log), whether it names rank 1 as the suspect and rank 0 as
  in all_reduce, the stack capture time it reports, and the launcher's exit.

Capture time: ``agent.stacks.capture_stacks`` on two live sleeping workers, read by py-spy,
by the faulthandler fallback (py-spy made unavailable), and stopped with SIGSTOP (not
responding); the bound is 2 x ``CAPTURE_TIMEOUT_S``.

``--irregular SECONDS``: ``elastiscope run`` with the default automatic stall timeout on a job
whose steps take 50 ms with random pauses of up to 3x that; there must be no stalled event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
from common import OURS, THEIRS  # noqa: E402

HANG_AT_STEP = 5
STALLED = "elastiscope.worker.stalled"

JOB = """\
import os, random, sys, time
import torch, torch.distributed as dist
out, mode = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
rng = random.Random(rank)
def sleep_forever():
    while True:
        time.sleep(3600)
deadline = time.time() + float(os.environ.get("BENCH_SECONDS", "0"))
step = 0
while True:
    if mode != "hang":  # every rank stops at the same step: rank 0's clock decides
        stop = torch.tensor([float(rank == 0 and time.time() >= deadline)])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            break
    if mode == "hang" and rank == 1 and step == {hang}:
        sleep_forever()
    model(torch.randn(8, 4)).sum().backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
    opt.step()
    opt.zero_grad()
    with open(os.path.join(out, f"{{rank}}.last"), "w") as f:
        f.write(repr(time.time()))
    step += 1
    if mode == "irregular":  # 50 ms steps, now and then a pause of up to 3x that
        time.sleep(0.05 * (rng.uniform(1.0, 3.0) if rng.random() < 0.1 else 1.0))
dist.barrier()
dist.destroy_process_group()
""".format(hang=HANG_AT_STEP)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stalled_events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line being written
        if event.get("name") == STALLED:
            out.append(event)
    return out


def _last_step(workdir: Path, rank: int) -> float | None:
    try:
        return float((workdir / f"{rank}.last").read_text())
    except (OSError, ValueError):
        return None


def one_hang(name: str, workdir: Path, limit: float, stall_timeout: float) -> dict:
    script = common.write_script(workdir, "hang_job.py", JOB)
    argv = common.launcher_argv(name, "c10d", workdir) + ["--nproc-per-node", "2"]
    if name == OURS:
        argv += ["--stall-timeout", f"{stall_timeout:g}", "--on-stall", "fail", "--metrics-port", "off"]
    err_path = workdir / "launcher.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([*argv, str(script), str(workdir), "hang"], env=common.bench_env(),
                                stdout=err, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        return _watch(name, proc, workdir, err_path, limit, time.time() + 180)
    finally:
        _stop(proc)


def _watch(name: str, proc: subprocess.Popen, workdir: Path, err_path: Path, limit: float,
           start_deadline: float) -> dict:
    """Poll (every 20 ms) until the launcher reports the hang, exits, or ``limit`` passes."""
    hung_since = None  # rank 1's last step end, once rank 1 has stopped stepping
    said_before = 0
    while True:
        now = time.time()
        last = _last_step(workdir, 1)
        if hung_since is None and last is not None and _last_step(workdir, 0) is not None:
            said_before = err_path.stat().st_size  # what it said before the hang is not a report
            hung_since = last if now - last > 1.0 else None
        row = {"reported": False}
        if hung_since is not None:
            last = _last_step(workdir, 1) or hung_since
            events = _stalled_events(workdir / "events.jsonl")
            if events:
                md = events[0]["metadata"]
                ranks = json.loads(md["ranks"])
                return {"reported": True, "report_after_s": events[0]["timestamp"] / 1000 - last,
                        "seen_after_s": now - last, "capture_s": md["capture_ms"] / 1000,
                        "suspect_rank_1": json.loads(md["suspect_ranks"]) == [1],
                        "rank_0_in_all_reduce": ranks["0"]["detail"] == "all_reduce",
                        "suspect_code": md["suspect_code"],
                        "exit_after_s": _exit_after(proc, last, limit)}
            if name == THEIRS and err_path.stat().st_size > said_before:
                said = err_path.read_text()[said_before:][:200]
                return {"reported": True, "report_after_s": now - last, "first_words": said}
            if now - last > limit:
                row["report_after_s"] = None
                return row
        if proc.poll() is not None:
            raise common.RunFailed(f"launcher exited {proc.returncode} before the hang: "
                                   + common.failure_line(err_path.read_text()))
        if hung_since is None and now > start_deadline:
            raise common.RunFailed("the job never reached its hang")
        time.sleep(0.02)


def _exit_after(proc: subprocess.Popen, last: float, limit: float) -> float | None:
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        return None
    return time.time() - last


def measure_hang(reps: int, limit: float, stall_timeout: float, progress=None) -> dict:
    with tempfile.TemporaryDirectory(prefix="hang_") as tmp:
        def run(rep: int, name: str) -> dict:
            workdir = common.scratch(Path(tmp))
            return one_hang(name, workdir, limit, stall_timeout)

        rows, failures = common.ab_runs(reps, run, progress, label="hang")
    out = {"reps": reps, "limit_s": limit, "stall_timeout_s": stall_timeout, "failures": failures, "launchers": {}}
    for name, r in rows.items():
        reported = [row["report_after_s"] for row in r if row.get("reported")]
        summary = {"reported_runs": len(reported), "runs": len(r),
                   "report_after_s": common.summarize(reported)}
        if name == OURS:
            summary["capture_s"] = common.summarize([row["capture_s"] for row in r if "capture_s" in row])
            summary["exit_after_s"] = common.summarize([row["exit_after_s"] for row in r if row.get("exit_after_s")])
            summary["named_rank_1_and_all_reduce"] = all(
                row.get("suspect_rank_1") and row.get("rank_0_in_all_reduce") for row in r)
            summary["suspect_code"] = sorted({row.get("suspect_code") for row in r})
        out["launchers"][name] = summary
    return out


SLEEPER = """\
import sys, time
from elastiscope import stack_dump
stack_dump.install()
open(sys.argv[1], "w").close()
while True:
    time.sleep(3600)
"""


def measure_capture(reps: int = 5) -> dict:
    """Capture time of two live workers: py-spy, faulthandler only, and both stopped."""
    from agent.stacks import CAPTURE_TIMEOUT_S, StackTarget, capture_stacks

    with tempfile.TemporaryDirectory(prefix="capture_") as tmp:
        procs, targets = [], {}
        for rank in range(2):
            ready = Path(tmp) / f"ready{rank}"
            env = common.bench_env(ELASTISCOPE_STACK_FILE=str(Path(tmp) / f"stacks{rank}"))
            procs.append(subprocess.Popen([sys.executable, "-c", SLEEPER, str(ready)], env=env))
            targets[rank] = StackTarget(procs[-1].pid, env["ELASTISCOPE_STACK_FILE"])
        try:
            common.wait_for_files(Path(tmp), "ready*", 2, procs[0], 120)
            out = {"bound_s": 2 * CAPTURE_TIMEOUT_S}
            for label, py_spy, stop in (("py-spy", "auto", False), ("faulthandler", str(Path(tmp) / "none"), False),
                                        ("stopped", "auto", True)):
                if stop:
                    for p in procs:
                        os.kill(p.pid, signal.SIGSTOP)
                    time.sleep(0.2)  # not synchronisation: the kernel marks them stopped at once
                samples, kinds = [], set()
                for _ in range(reps):
                    t0 = time.monotonic()
                    stacks = capture_stacks(targets, py_spy=py_spy)
                    samples.append(time.monotonic() - t0)
                    kinds |= {f"{s.method}:{s.location.where}" for s in stacks.values()}
                out[label] = {**common.summarize(samples), "read_as": sorted(kinds)}
            return out
        finally:
            for p in procs:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait()


def measure_irregular(seconds: float, progress=None) -> dict:
    """``elastiscope run`` (automatic stall timeout) on irregular steps: stalled events seen."""
    with tempfile.TemporaryDirectory(prefix="irregular_") as tmp:
        workdir = Path(tmp)
        script = common.write_script(workdir, "irregular_job.py", JOB)
        argv = common.launcher_argv(OURS, "c10d", workdir) + ["--nproc-per-node", "2", "--metrics-port", "off"]
        t0 = time.time()
        proc = subprocess.run([*argv, str(script), str(workdir), "irregular"], cwd=workdir,
                              env=common.bench_env(BENCH_SECONDS=str(seconds)), capture_output=True,
                              text=True, timeout=seconds + 300)
        events = _stalled_events(workdir / "events.jsonl")
        out = {"seconds": seconds, "wall_s": time.time() - t0, "exit": proc.returncode,
               "stalled_events": len(events)}
        if progress:
            progress(f"irregular: {out}")
        return out


def _fmt(summary: dict | None) -> str:
    if not summary or summary.get("median") is None:
        return "-"
    return f"{summary['median']:.2f} s ({summary['min']:.2f}-{summary['max']:.2f})"


def main() -> int:
    p = common.OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--limit", type=float, default=60.0, help="seconds to wait for a report (default 60)")
    p.add_argument("--stall-timeout", type=float, default=5.0)
    p.add_argument("--irregular", type=float, default=0.0, metavar="SECONDS",
                   help="instead: run the irregular-steps job this long and count stalled events")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args()
    if args.reps < 1 or args.limit <= 0 or args.stall_timeout <= 0:
        print("error: --reps must be >= 1, --limit and --stall-timeout > 0", file=sys.stderr)
        return 2
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        if args.irregular > 0:
            results = {"irregular": measure_irregular(args.irregular, progress)}
        else:
            results = {"hang": measure_hang(args.reps, args.limit, args.stall_timeout, progress),
                       "capture": measure_capture()}
    except Exception as e:  # one line, not a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    results["machine"] = {"load_average": common.load_average()}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    if "irregular" in results:
        r = results["irregular"]
        print(f"irregular steps, {r['seconds']:g} s, automatic stall timeout: {r['stalled_events']} stalled "
              f"event(s), exit {r['exit']}")
        return 0 if r["stalled_events"] == 0 and r["exit"] == 0 else 1
    h = results["hang"]
    print(f"\nthe hang (rank 1 sleeps, rank 0 in all_reduce), {h['reps']} alternating reps, "
          f"limit {h['limit_s']:g} s; time from rank 1's last step until a report:")
    for name, s in h["launchers"].items():
        told = (f"{_fmt(s['report_after_s'])}" if s["reported_runs"] else f"nothing within {h['limit_s']:g} s")
        print(f"  {name:12s} {told}   ({s['reported_runs']}/{s['runs']} runs reported it)")
    ours = h["launchers"][OURS]
    print(f"  ours: capture {_fmt(ours['capture_s'])}, exit (--on-stall fail) {_fmt(ours['exit_after_s'])}, "
          f"named rank 1 and all_reduce every run: {ours['named_rank_1_and_all_reduce']}")
    c = results["capture"]
    print(f"\nstack capture of 2 workers (bound {c['bound_s']:g} s):")
    for label in ("py-spy", "faulthandler", "stopped"):
        print(f"  {label:12s} {_fmt(c[label])}  read as {', '.join(c[label]['read_as'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
