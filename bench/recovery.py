"""Time to recovery of a real DDP job: ``elastiscope run`` against ``torchrun``, same job, same run.

    python bench/recovery.py [--reps 5] [--nproc 2,4] [--launchers elastiscope,torchrun] [--json]

The job: N workers train a small MLP with DDP over gloo (``--standalone``, ``--max-restarts
1``, OMP_NUM_THREADS=1); on the first attempt rank 1 raises at step 3 while its peers wait
in the step's all-reduce; the second attempt trains from the start to the end. Every time is
stamped with ``time.time()`` inside the workers, except process exits, which the bench learns
from a pidfd per worker (no polling). From the crash stamp:

* teardown: until the crashed rank's process has exited (its traceback, interpreter
  finalisation);
* stop: until the last of its peers has exited (stopped by the agent, or failed by itself);
* spawn: until the slowest worker of the next attempt runs its first line;
* import: until the slowest has imported torch;
* process group: until the slowest has ``init_process_group`` done;
* first step: until the slowest has finished its first ``optimizer.step()`` (DDP's
  construction included) -- the end of the **time to recovery**.

A run that fails (non-zero exit, a hang past the timeout, a missing stamp) is a failed
restart: counted per launcher, and the repetition is tried again (up to 3 runs). The final loss of each run is compared with the
loss of a run without the crash (one per launcher, first).
Goal: time to recovery ours <= 0.3 x torchrun (medians).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import OURS, THEIRS  # noqa: E402

GOAL_RATIO = 0.3
TRIES = 3  # runs per repetition and launcher before the repetition is given up
CRASH_AT_STEP, STEPS = 3, 6
PHASES = ("teardown", "stop", "spawn", "import", "process_group", "first_step")
# Ours in other configurations, for the ablation (not part of the goal).
VARIANTS = {
    "elastiscope-no-preload": ["--preload", "none"],
    "elastiscope-cold": ["--no-warm-standby"],
}

JOB = """\
import gc, os, sys, time
started = time.time()
out, crash_at, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
def stamp(name, value=None):
    with open(os.path.join(out, "%s.%d.%d" % (name, attempt, rank)), "w") as f:
        f.write(repr(time.time() if value is None else value))
stamp("pid", os.getpid())
stamp("start", started)
import torch
stamp("torch")
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
dist.init_process_group("gloo")
stamp("pg")
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Sequential(
    torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
data = torch.Generator().manual_seed(1 + rank)
for step in range(1, steps + 1):
    x = torch.randn(8, 16, generator=data)
    if attempt == 0 and rank == 1 and step == crash_at:
        stamp("crash")
        raise RuntimeError("rank 1 crashes at step %d" % step)
    loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step == 1:
        stamp("step1")
mean = loss.detach().clone()
dist.all_reduce(mean)
if rank == 0:
    stamp("loss", float(mean) / dist.get_world_size())
del model  # DDP goes before the process group: see examples/train_ddp.py (a torch 2.13 hang at exit)
gc.collect()
dist.destroy_process_group()
"""


class ExitWatch:
    """When each worker process exits, learnt from pidfds (a thread blocked in poll, no polling).

    Workers write ``pid.<attempt>.<rank>`` as their first act; ``watch`` opens a pidfd for
    each new one it finds.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.exits: dict[str, float] = {}  # "<attempt>.<rank>" -> epoch seconds
        self._fds: dict[int, str] = {}
        self._seen: set[str] = set()
        self._poller = select.poll()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _adopt(self) -> None:
        for f in self.out.glob("pid.*"):
            key = f.name[4:]
            if key in self._seen:
                continue
            try:
                fd = os.pidfd_open(int(f.read_text()))
            except (ValueError, OSError):  # half-written, or gone already (then no exit time)
                continue
            self._seen.add(key)
            self._fds[fd] = key
            self._poller.register(fd, select.POLLIN)

    def _run(self) -> None:
        while not self._stop:
            self._adopt()
            for fd, _ in self._poller.poll(10):  # 10 ms: how soon a new pid file is adopted
                self.exits.setdefault(self._fds[fd], time.time())
                self._poller.unregister(fd)
                os.close(fd)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _read(out: Path, name: str) -> dict[str, float]:
    values = {}
    for f in out.glob(f"{name}.*"):
        try:
            values[f.name[len(name) + 1:]] = float(f.read_text())
        except ValueError:
            pass
    return values


def _slowest(values: dict[str, float], attempt: int, nproc: int, what: str) -> float:
    found = [v for k, v in values.items() if k.startswith(f"{attempt}.")]
    if len(found) != nproc:
        raise common.RunFailed(f"{len(found)}/{nproc} workers stamped {what} on attempt {attempt}")
    return max(found)


def launcher_argv(name: str, workdir: Path) -> list[str]:
    base = OURS if name.startswith(OURS) else THEIRS
    return [*common.launcher_argv(base, "c10d", workdir), *VARIANTS.get(name, [])]


def run_job(name: str, nproc: int, workdir: Path, crash: bool, timeout: float) -> dict:
    """One run of the job under ``name``; the breakdown (crash) or the final loss (no crash)."""
    out = common.scratch(workdir)
    script = common.write_script(workdir, "ddp_job.py", JOB)
    argv = [*launcher_argv(name, out), "--nproc-per-node", str(nproc), "--max-restarts", "1",
            str(script), str(out), str(CRASH_AT_STEP if crash else 0), str(STEPS)]
    watch = ExitWatch(out)
    try:
        proc = subprocess.run(argv, env=common.bench_env(), cwd=out, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise common.RunFailed(f"hung: no exit after {timeout:.0f} s") from None
    finally:
        watch.close()
    if proc.returncode != 0:
        raise common.RunFailed(f"exit status {proc.returncode}: {common.failure_line(proc.stderr)}")
    attempt = 1 if crash else 0
    losses = _read(out, "loss")
    loss = losses.get(f"{attempt}.0")
    if loss is None:
        raise common.RunFailed("no final loss")
    if not crash:
        return {"loss": loss}
    return dict(breakdown(out, watch.exits, nproc), loss=loss)


def breakdown(out: Path, exits: dict[str, float], nproc: int) -> dict:
    crashed = _read(out, "crash").get("0.1")
    if crashed is None:
        raise common.RunFailed("rank 1 did not crash")
    old = [exits.get(f"0.{rank}") for rank in range(nproc)]
    if None in old:
        raise common.RunFailed("an exit of the first attempt was not seen")
    marks = [crashed, exits["0.1"], max(old)]
    for name in ("start", "torch", "pg", "step1"):
        marks.append(_slowest(_read(out, name), 1, nproc, name))
    row = {f"{phase}_s": max(0.0, marks[i + 1] - marks[i]) for i, phase in enumerate(PHASES)}
    row["recovery_s"] = marks[-1] - crashed
    return row


def _alternating_runs(reps: int, names: list[str], run, progress, label: str):
    """Like common.ab_runs, but a failed run is tried up to TRIES times: torchrun's restarts
    fail often enough here that one retry leaves repetitions empty. Every failure is kept."""
    rows: dict[str, list[dict]] = {n: [] for n in names}
    failures: dict[str, list[str]] = {n: [] for n in names}
    for rep, name in common.alternating(reps, names):
        for _ in range(TRIES):
            try:
                row = run(name)
            except common.RunFailed as e:
                failures[name].append(str(e))
                if progress:
                    progress(f"{label} rep {rep} {name}: FAILED: {e}")
                continue
            rows[name].append(row)
            if progress:
                progress(f"{label} rep {rep} {name}: " + ", ".join(
                    f"{k}={v * 1000:.0f}ms" if k.endswith("_s") else f"{k}={v:.4g}" for k, v in row.items()))
            break
    for name in names:
        if not rows[name]:
            raise common.RunFailed(f"every run of {name} failed; first: {failures[name][0]}")
    return rows, failures


def measure(reps: int, nproc: int, names: list[str], timeout: float = 120.0, progress=None) -> dict:
    """Alternating runs of the crash job under each launcher, after one run without the crash."""
    with tempfile.TemporaryDirectory(prefix="recovery_") as tmp:
        workdir = Path(tmp)
        reference = {}
        for name in names:
            try:
                reference[name] = run_job(name, nproc, workdir, False, timeout)["loss"]
            except common.RunFailed as e:
                reference[name] = None
                if progress:
                    progress(f"recovery n={nproc} {name}: reference run failed: {e}")
        rows, failures = _alternating_runs(
            reps, names, lambda name: run_job(name, nproc, workdir, True, timeout), progress,
            label=f"recovery n={nproc}")
    launchers = {name: common.summaries(r) for name, r in rows.items()}
    same_loss = {name: reference[name] is not None and all(abs(r["loss"] - reference[name]) < 1e-6 for r in rows[name])
                 for name in names}
    result = {"nproc": nproc, "reps": reps, "failures": failures, "launchers": launchers,
              "reference_loss": reference, "same_final_loss": same_loss,
              "load_average": common.load_average()}
    if OURS in launchers and THEIRS in launchers:
        result["recovery_ratio"] = common.ratio(launchers[OURS].get("recovery_s"), launchers[THEIRS].get("recovery_s"))
    return result


def _ms(summary: dict | None) -> str:
    if not summary:
        return "-"
    return f"{summary['median'] * 1000:.0f} ({summary['min'] * 1000:.0f}-{summary['max'] * 1000:.0f})"


def print_table(r: dict) -> None:
    print(f"\n{r['nproc']} workers, {r['reps']} alternating reps, ms median (min-max); load {r['load_average']}")
    print(f"  {'launcher':24s} {'recovery':>16s} " + " ".join(f"{p:>16s}" for p in PHASES) + "  failed  same-loss")
    for name, s in r["launchers"].items():
        print(f"  {name:24s} {_ms(s.get('recovery_s')):>16s} "
              + " ".join(f"{_ms(s.get(p + '_s')):>16s}" for p in PHASES)
              + f"  {len(r['failures'][name]):6d}  {r['same_final_loss'][name]}")
    if r.get("recovery_ratio") is not None:
        verdict = "met" if r["recovery_ratio"] <= GOAL_RATIO else "NOT met"
        print(f"  ratio ours/torchrun {r['recovery_ratio']:.2f} (goal <= {GOAL_RATIO}): {verdict}")


# ---- the benchmark page (bench/run_all.py) ------------------------------------------------

PHASE_TEXT = {
    "teardown": "the crashed rank's process exits", "stop": "its peers have exited",
    "spawn": "the next attempt's slowest worker runs its first line", "import": "... has imported torch",
    "process_group": "... has `init_process_group` done",
    "first_step": "... has finished its first `optimizer.step()` (DDP's construction included)",
}


def goal_rows(result: dict | None) -> list[dict]:
    """The page's goal rows: time to recovery ours/torchrun, per worker count."""
    rows = []
    for r in (result or {}).get("runs", []):
        ours, theirs = r["launchers"].get(OURS, {}), r["launchers"].get(THEIRS, {})
        ratio = r.get("recovery_ratio")
        rows.append({"goal": f"time to recovery, DDP job, {r['nproc']} workers", "target": f"≤ {GOAL_RATIO}× torchrun",
                     "ours": _seconds(ours.get("recovery_s")), "theirs": _seconds(theirs.get("recovery_s")),
                     "measured": "–" if ratio is None else f"{ratio:.2f}×",
                     "met": None if ratio is None else ratio <= GOAL_RATIO, "note": ""})
    return rows


def _seconds(summary: dict | None) -> str:
    return "–" if not summary else f"{summary['median']:.2f} s"


def render(result: dict | None) -> list[str]:
    """The page's section: the breakdown per launcher and worker count, failures, losses."""
    lines = ["## Recovery of a real job", "",
             f"`bench/recovery.py`: N workers train a small MLP with DDP over gloo, `--standalone`, "
             f"`--max-restarts 1`, OMP_NUM_THREADS=1; on the first attempt rank 1 raises at step {CRASH_AT_STEP} "
             "while its peers wait in the step's all-reduce, and the second attempt trains from the start. "
             "Times are stamped inside the workers (process exits: a pidfd per worker), from the crash; "
             "each phase ends when:", ""]
    lines += [f"- **{p.replace('_', ' ')}**: {PHASE_TEXT[p]};" for p in PHASES]
    lines += ["", "**time to recovery** is their sum: crash → first step completed by all ranks of the next attempt. "
              "A failed restart is a run that exits non-zero, hangs (no exit in 120 s) or misses a stamp; the "
              "repetition is tried again, up to 3 runs.", ""]
    if not result or not result.get("runs"):
        return lines + ["_Not measured._", ""]
    header = ["workers", "launcher", "time to recovery ms", *[f"{p.replace('_', ' ')} ms" for p in PHASES],
              "failed restarts", "same final loss"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result["runs"]:
        for name, s in r["launchers"].items():
            runs = len(s.get("recovery_s", {}).get("samples", [])) + len(r["failures"][name])
            cells = [str(r["nproc"]), name, _ms(s.get("recovery_s")), *[_ms(s.get(p + "_s")) for p in PHASES],
                     f"{len(r['failures'][name])} of {runs}", "yes" if r["same_final_loss"][name] else "no"]
            lines.append("| " + " | ".join(cells) + " |")
        if r.get("recovery_ratio") is not None:
            lines.append(f"| {r['nproc']} | **ratio** | {r['recovery_ratio']:.2f}× |" + " |" * (len(header) - 3))
    loads = ", ".join(f"{r['nproc']} workers: {r['load_average']}" for r in result["runs"])
    lines += ["", f"{result['runs'][0]['reps']} repetitions each, alternating; median (min–max). "
              f"Load average at the end of each worker count: {loads}.", ""]
    return lines


def main() -> int:
    p = common.OneLineParser(prog="recovery.py", description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--nproc", default="2,4", help="comma-separated worker counts")
    p.add_argument("--launchers", default=f"{OURS},{THEIRS}",
                   help=f"comma-separated, from {OURS}, {THEIRS}, " + ", ".join(VARIANTS))
    p.add_argument("--timeout", type=float, default=120.0, help="a run still going after this hung")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args()
    names = [n for n in args.launchers.split(",") if n]
    unknown = [n for n in names if n not in (OURS, THEIRS, *VARIANTS)]
    if unknown:
        p.error(f"unknown launcher {unknown[0]!r}")
    try:
        counts = [int(n) for n in args.nproc.split(",")]
    except ValueError:
        p.error(f"--nproc: not a list of numbers: {args.nproc!r}")
    if args.reps < 1 or any(n < 2 for n in counts):
        p.error("--reps must be at least 1 and every --nproc at least 2 (rank 1 crashes)")
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    results = {"machine": common.machine_info(), "runs": []}
    errors = []
    for nproc in counts:
        try:
            results["runs"].append(measure(args.reps, nproc, names, args.timeout, progress))
        except Exception as e:  # one line, not a traceback; the other counts still run
            errors.append(f"error: {nproc} workers: {e}")
    # What was measured is reported even when a count failed (a launcher whose every restart
    # failed, say): the errors come last and make the exit status 1.
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results["runs"]:
            print_table(r)
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
