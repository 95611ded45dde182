"""The agent's endpoint under load during a real training run, and what that load costs training.

A pair of runs of examples/train_ddp.py under ``elastiscope run`` (same flags, endpoint on):
one with nobody calling the endpoint, one with a load generator -- a separate process, on
loopback only -- requesting ``/metrics`` and ``/status`` in turn at ``--rate`` requests per
second from the moment the endpoint answers until training is done. Reported: the training
loop's step rate in both runs (train_ddp times its own loop), the load actually delivered,
and the endpoint's latency (p50/p90/p99/max, overall and per route). Runs alternate, unloaded
then loaded, ``--repeats`` times; step rates are medians.

    python bench/endpoint_load.py [--rate 200] [--steps 5000] [--repeats 3] [--nproc 1] [--json]
    python bench/endpoint_load.py --quick --json        # one short pair

The request loop is bounded: at most rate x --max-seconds requests, and it stops when
training is done. With ``--json`` one JSON object is printed on stdout, nothing else.
Exit status 0 when every run trained to the end, 1 otherwise.

``--generate URL`` is the load generator itself (the parent runs it as a subprocess): it
paces requests on a few keep-alive connections until SIGTERM or its bounds, then prints its
measurements as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRAIN_DDP = REPO / "examples" / "train_ddp.py"
DONE_LINE = re.compile(r"train_ddp: done: (\d+) steps, .*?([\d.]+)s\s*$", re.M)
PATHS = ("/metrics", "/status")


# ---- the load generator (a separate process) --------------------------------------------------


class _Pacer:
    """Hands out request slots on an open-loop schedule: slot k is due at start + k / rate."""

    def __init__(self, rate: float, limit: int) -> None:
        self.rate = rate
        self.limit = limit
        self.start = time.monotonic()
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[int, float] | None:
        with self._lock:
            k = self._next
            if k >= self.limit:
                return None
            self._next += 1
        return k, self.start + k / self.rate


def generate(url: str, rate: float, max_seconds: float, connections: int, paths=PATHS) -> dict:
    """Request ``paths`` in turn at ``rate``/s until SIGTERM, ``max_seconds`` or the count bound."""
    import httpx

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pacer = _Pacer(rate, int(rate * max_seconds))
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {p: [] for p in paths}
    statuses: dict[str, int] = {}
    late: list[float] = []
    errors: list[str] = []

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=10.0, trust_env=False) as client:
            while not stop.is_set():
                slot = pacer.take()
                if slot is None:
                    return
                k, due = slot
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                path = paths[k % len(paths)]
                sent = time.monotonic()
                try:
                    response = client.get(path)
                    response.read()
                    code = str(response.status_code)
                except httpx.HTTPError as e:
                    code = type(e).__name__
                    with lock:
                        errors.append(code)
                elapsed = time.monotonic() - sent
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1
                    if code == "200":
                        latencies[path].append(elapsed)
                    late.append(max(0.0, sent - due))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + max_seconds + 15
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    duration = time.monotonic() - pacer.start
    with lock:
        done = sum(statuses.values())
        return {
            "requests": done,
            "ok": statuses.get("200", 0),
            "errors": len(errors),
            "statuses": dict(statuses),
            "duration_s": round(duration, 3),
            "achieved_rps": round(done / duration, 1) if duration > 0 else 0.0,
            "target_rps": rate,
            "late_p99_ms": round(_percentile(late, 99) * 1000, 3) if late else None,
            "latencies_s": {p: [round(x, 6) for x in v] for p, v in latencies.items()},
        }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_ms": round(_percentile(values, 50) * 1000, 3),
        "p90_ms": round(_percentile(values, 90) * 1000, 3),
        "p99_ms": round(_percentile(values, 99) * 1000, 3),
        "max_ms": round(max(values) * 1000, 3),
    }


# ---- one training run -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ELASTISCOPE_", "PET_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def _endpoint_up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/healthz", timeout=1.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(predicate, timeout: float, what: str, agent: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited ({agent.returncode}) before {what}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def run_once(workdir: Path, args: argparse.Namespace, loaded: bool) -> dict:
    """One training run, with or without load; its step rate and, if loaded, the load's report."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable, "-m", "agent", "run", "--standalone", "--nproc-per-node", str(args.nproc),
        "--metrics-port", str(port), "--metrics-linger", "0",
        "--event-log", str(workdir / "events.jsonl"), "--log-format", "json",
        str(TRAIN_DDP), "--steps", str(args.steps), "--log-every", str(args.steps),
        "--checkpoint-dir", "",
    ]
    out_path = workdir / "stdout.txt"
    with open(out_path, "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        agent = subprocess.Popen(argv, cwd=workdir, env=_env(), stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL)
    generator = None
    load = None
    try:
        _wait(lambda: _endpoint_up(url), 60, "the endpoint", agent)
        if loaded:
            generator = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--generate", url,
                 "--rate", str(args.rate), "--max-seconds", str(args.max_seconds),
                 "--connections", str(args.connections), "--paths", ",".join(args.paths)],
                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        _wait(lambda: DONE_LINE.search(out_path.read_text(errors="replace")), args.max_seconds,
              "training to finish", agent)
        if generator is not None:
            generator.send_signal(signal.SIGTERM)
            stdout, stderr = generator.communicate(timeout=30)
            if generator.returncode != 0:
                raise RuntimeError(f"load generator exited {generator.returncode}: {stderr.strip()[-300:]}")
            load = json.loads(stdout)
        code = agent.wait(60)
    finally:
        for proc in (generator, agent):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    steps, seconds = DONE_LINE.search(out_path.read_text(errors="replace")).groups()
    return {
        "loaded": loaded,
        "exit_status": code,
        "steps": int(steps),
        "loop_seconds": float(seconds),
        "steps_per_s": round(int(steps) / float(seconds), 1) if float(seconds) > 0 else None,
        "load": load,
    }


# ---- the comparison ---------------------------------------------------------------------------


def measure(args: argparse.Namespace, progress=lambda msg: None) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="endpoint_load_") as tmp:
        for rep in range(args.repeats):
            for loaded in (False, True):
                name = f"{'loaded' if loaded else 'unloaded'}-{rep}"
                result = run_once(Path(tmp) / name, args, loaded)
                progress(f"{name}: {result['steps_per_s']} steps/s"
                         + (f", {result['load']['achieved_rps']} req/s" if loaded else ""))
                runs.append(result)
    return summarise(runs, args)


def summarise(runs: list[dict], args: argparse.Namespace) -> dict:
    unloaded = [r["steps_per_s"] for r in runs if not r["loaded"]]
    loaded = [r["steps_per_s"] for r in runs if r["loaded"]]
    loads = [r["load"] for r in runs if r["loaded"]]
    all_latencies: list[float] = []
    by_path = {}
    for path in args.paths:
        values = [x for load in loads for x in load["latencies_s"].get(path, [])]
        all_latencies += values
        by_path[path] = latency_summary(values)
    requests = sum(load["requests"] for load in loads)
    duration = sum(load["duration_s"] for load in loads)
    median_unloaded = statistics.median(unloaded)
    median_loaded = statistics.median(loaded)
    return {
        "nproc": args.nproc,
        "steps": args.steps,
        "repeats": args.repeats,
        "target_rps": args.rate,
        "paths": ",".join(args.paths),
        "training": {
            "unloaded_steps_per_s": median_unloaded,
            "loaded_steps_per_s": median_loaded,
            "loaded_over_unloaded": round(median_loaded / median_unloaded, 3),
            "unloaded_runs": unloaded,
            "loaded_runs": loaded,
        },
        "load": {
            "requests": requests,
            "errors": sum(load["errors"] for load in loads),
            "non_200": requests - sum(load["ok"] for load in loads),
            "achieved_rps": round(requests / duration, 1) if duration else 0.0,
            "min_run_rps": min(load["achieved_rps"] for load in loads),
            "late_p99_ms": max(load["late_p99_ms"] or 0 for load in loads),
        },
        "latency": {"all": latency_summary(all_latencies), **by_path},
        "all_runs_finished": all(r["exit_status"] == 0 for r in runs),
    }


def render(result: dict) -> str:
    t, load, lat = result["training"], result["load"], result["latency"]
    lines = [
        f"train_ddp, {result['nproc']} worker(s), {result['steps']} steps, "
        f"{result['repeats']} pair(s) of runs",
        f"  step rate unloaded {t['unloaded_steps_per_s']:.1f}/s, loaded {t['loaded_steps_per_s']:.1f}/s "
        f"(ratio {t['loaded_over_unloaded']:.3f})",
        f"  load: {load['requests']} requests at {load['achieved_rps']:.1f}/s "
        f"(target {result['target_rps']}/s), {load['errors']} errors, {load['non_200']} not 200",
    ]
    for key in ("all", *result["paths"].split(",")):
        s = lat[key]
        if s.get("count"):
            lines.append(f"  {key:9s} p50 {s['p50_ms']:.2f} ms  p90 {s['p90_ms']:.2f} ms  "
                         f"p99 {s['p99_ms']:.2f} ms  max {s['max_ms']:.2f} ms  (n={s['count']})")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    p.add_argument("--steps", type=int, default=5000, help="training steps per run (default 5000)")
    p.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    p.add_argument("--nproc", type=int, default=1, help="workers per run (default 1)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections (default 8)")
    p.add_argument("--max-seconds", type=float, default=240.0,
                   help="bound of a run and of its request loop (default 240)")
    p.add_argument("--paths", default=",".join(PATHS),
                   help="routes requested in turn, comma-separated (default /metrics,/status)")
    p.add_argument("--quick", action="store_true", help="one short pair of runs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--generate", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.paths = tuple(part.strip() for part in args.paths.split(",") if part.strip())
    if not args.paths or not all(path.startswith("/") for path in args.paths):
        p.error("--paths must be routes starting with /")
    if args.rate <= 0 or args.steps < 1 or args.repeats < 1 or args.nproc < 1 or args.connections < 1:
        p.error("--rate, --steps, --repeats, --nproc and --connections must be positive")
    if args.generate and not args.generate.startswith(("http://127.", "http://localhost", "http://[::1]")):
        p.error("--generate only targets loopback addresses")
    if args.quick:
        args.steps, args.repeats = min(args.steps, 2500), 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.generate:
        result = generate(args.generate, args.rate, args.max_seconds, args.connections, args.paths)
        print(json.dumps(result))
        return 0
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
    try:
        result = measure(args, progress=say)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        if args.json:
            print(json.dumps({"error": str(e)}))
        else:
            print(f"endpoint_load: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else render(result))
    return 0 if result["all_runs_finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
