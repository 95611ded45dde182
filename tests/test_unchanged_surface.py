"""The restructuring of issue 12 changes no behaviour a user can see: the crash-once example's
event log has the same kinds and fields, and ``/metrics`` lists the same series, as the code
before the restructuring (commit 77e3e9c).

The expectations in ``tests/expected/`` were recorded from that old code, run as a user runs
it. To record them again (from a checkout of the old code, three runs that must agree)::

    python tests/test_unchanged_surface.py --regenerate --code /path/to/old/checkout

What is compared, and why only that:

* events: per kind (name + source), the sorted metadata keys, and the top-level fields of a
  log line. Not counts, order, or values: those depend on timing and on the run.
* metrics: per family as the exposition declares it (``# TYPE``), its type and the sorted
  label NAMES of its samples (``_bucket``/``_sum``/``_count``/``_created``/``_total`` samples
  belong to their family; ``le`` and ``quantile`` are per-sample, not the family's labels).

A few event kinds are emitted by torch's rendezvous on a timer (the keep-alive heartbeat), so
whether a run is long enough to see one is timing; those kinds may be absent, but when present
their fields are compared like all others. Everything else must match exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXPECTED = TESTS / "expected"
EVENTS_EXPECTED = EXPECTED / "crash_once_events.json"
METRICS_EXPECTED = EXPECTED / "metrics_series.json"

# The README's crash-once job, made short: rank 1 raises at step 3 of the first attempt, the
# group restarts once, resumes from the step-2 checkpoint and finishes.
AGENT_FLAGS = ["--nproc-per-node", "2", "--max-restarts", "1", "--metrics-port", "0"]
TRAINING_FLAGS = [
    "--crash-once-rank", "1", "--crash-at-step", "3", "--steps", "6",
    "--checkpoint-every", "2", "--samples", "512", "--log-every", "2",
]
RUN_DEADLINE = 120.0  # generous: two cold worker starts on a loaded 2-core machine

RUN_END = ("elastiscope.agent.run_end", "AGENT")
ENDPOINT_STARTED = "elastiscope.endpoint.started"
LINGER_ANNOUNCEMENT = "for a final scrape"  # stderr: "endpoint stays up 5s for a final scrape ..."

# Kinds published on a timer, not by the job's steps: a run may or may not last long enough
# to see one. torch's rendezvous heartbeat (keep_alive) is the only such source in this job.
TIMING_DEPENDENT_SUFFIXES = ("._keep_alive",)

# Per-sample labels: they tell samples of one family apart, they are not the family's labels.
SAMPLE_LABELS = {"le", "quantile"}
SAMPLE_SUFFIXES = ("_bucket", "_sum", "_count", "_created", "_total", "_info", "_gsum", "_gcount")


def is_timing_dependent(kind: str) -> bool:
    name = kind.split(" ", 1)[0]
    return name.endswith(TIMING_DEPENDENT_SUFFIXES)


# -- running the job ----------------------------------------------------------------------------

@dataclass
class JobRun:
    """What one crash-once run left behind: its event log lines, last /metrics body, output."""

    returncode: int
    events: list[dict]
    exposition: str
    stderr: str

    def explain(self) -> str:
        tail = "\n".join(self.stderr.splitlines()[-30:])
        return f"exit {self.returncode}; stderr tail:\n{tail}"


def read_events(path: Path) -> list[dict]:
    """Complete lines of a JSON Lines log (a line still being written is skipped)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def find_event(path: Path, name: str, source: str | None = None) -> dict | None:
    for event in read_events(path):
        if event.get("name") == name and (source is None or event.get("source") == source):
            return event
    return None


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def run_crash_once(workdir: Path, code: Path, pythonpath: str | None) -> JobRun:
    """Run ``python -m agent run`` of the crash-once example from ``code`` as a user would.

    ``pythonpath`` set: that checkout is imported (the old code); None: the installed packages.
    After the job's end the agent keeps /metrics up until one scrape (its linger, announced on
    stderr): that one scrape, after run_end is in the log, is the run's final state. Scrapes
    earlier miss the end; later ones would race the agent's exit.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    event_log = workdir / "events.jsonl"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    for name in list(env):
        if name.startswith("ELASTISCOPE_"):  # the run's settings are its flags, nothing else
            del env[name]
    command = [
        sys.executable, "-m", "agent", "run", *AGENT_FLAGS, "--event-log", str(event_log),
        str(code / "examples" / "train_ddp.py"), *TRAINING_FLAGS,
        "--checkpoint-dir", str(workdir / "ckpt"),
    ]
    stdout_path, stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            command, cwd=workdir if pythonpath is not None else code, env=env,
            stdout=out, stderr=err, start_new_session=True,
        )
    deadline = time.monotonic() + RUN_DEADLINE
    exposition = ""
    try:
        started = _poll(lambda: find_event(event_log, ENDPOINT_STARTED), process, deadline)
        url = started["metadata"]["url"] if started else None
        if url:  # a scraper watching the run, without which the endpoint does not linger
            _poll(lambda: scrape(url), process, deadline)
        ended = _poll(lambda: find_event(event_log, *RUN_END), process, deadline)
        lingering = _poll(lambda: LINGER_ANNOUNCEMENT in stderr_path.read_text(errors="replace"),
                          process, deadline)
        if url and ended and lingering:
            exposition = _poll(lambda: scrape(url), process, deadline) or ""
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        returncode = -1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return JobRun(returncode, read_events(event_log), exposition,
                  stderr_path.read_text(errors="replace"))


def _poll(probe, process: subprocess.Popen, deadline: float):
    """``probe()`` until it is truthy, the process exits (one last look) or the deadline."""
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        if process.poll() is not None:
            return probe()
        time.sleep(0.05)


# -- what is compared ---------------------------------------------------------------------------

def event_surface(events: list[dict]) -> dict:
    """``{"kinds": {"<name> <source>": [metadata keys]}, "record_fields": [...]}``.

    A kind whose lines carry different key sets is listed with each distinct set, joined by
    " | ", so such a difference is compared too rather than hidden by a union.
    """
    key_sets: dict[str, set[tuple[str, ...]]] = {}
    record_fields: set[str] = set()
    for event in events:
        record_fields.update(event)
        kind = f"{event.get('name')} {event.get('source')}"
        keys = tuple(sorted(event.get("metadata") or {}))
        key_sets.setdefault(kind, set()).add(keys)
    kinds = {}
    for kind, sets in sorted(key_sets.items()):
        ordered = sorted(sets)
        kinds[kind] = list(ordered[0]) if len(ordered) == 1 else [" | ".join(",".join(k) for k in ordered)]
    return {"record_fields": sorted(record_fields), "kinds": kinds}


def metric_series(exposition: str) -> dict[str, dict]:
    """``{family: {"type": ..., "labels": [label names]}}`` from a text exposition (labels
    None: the family is declared but has no sample)."""
    families: dict[str, dict] = {}
    current = None
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = {"type": kind, "labels": set()}
            current = name
            continue
        if not line or line.startswith("#"):
            continue
        sample = line.split("{", 1)[0].split(" ", 1)[0]
        family = current if current and _belongs(sample, current) else sample
        entry = families.setdefault(family, {"type": "untyped", "labels": set()})
        entry["labels"].update(_label_names(line) - SAMPLE_LABELS)
        entry["sampled"] = True
    # A family declared without a single sample has no label names to show: None says so.
    return {name: {"type": f["type"], "labels": sorted(f["labels"]) if f.get("sampled") else None}
            for name, f in sorted(families.items())}


def _belongs(sample: str, family: str) -> bool:
    return sample == family or any(sample == family + s for s in SAMPLE_SUFFIXES)


def _label_names(line: str) -> set[str]:
    """Label names of one sample line; values may hold any character, so walk past them."""
    brace, space = line.find("{"), line.find(" ")
    if brace == -1 or (space != -1 and space < brace):
        return set()
    names = set()
    i = brace + 1
    while line[i] != "}":
        equals = line.index("=", i)
        names.add(line[i:equals].strip())
        i = equals + 2  # past the opening quote
        while line[i] != '"':
            i += 2 if line[i] == "\\" else 1
        i += 1  # past the closing quote
        if line[i] == ",":
            i += 1
    return names


def split_timing_dependent(surface: dict) -> tuple[dict, dict]:
    """The event surface's kinds in two parts: always present, and timing-dependent."""
    stable = {k: v for k, v in surface["kinds"].items() if not is_timing_dependent(k)}
    timed = {k: v for k, v in surface["kinds"].items() if is_timing_dependent(k)}
    return stable, timed


# -- differences, said plainly -------------------------------------------------------------------

def describe_differences(what: str, expected: dict, actual: dict, may_be_absent: dict | None = None) -> str:
    """Lines naming what appeared, disappeared or changed; empty when equal."""
    may_be_absent = may_be_absent or {}
    lines = []
    for key in sorted(set(expected) - set(actual)):
        lines.append(f"  disappeared {what}: {key}  {json.dumps(expected[key])}")
    for key in sorted(set(actual) - set(expected) - set(may_be_absent)):
        lines.append(f"  appeared {what}: {key}  {json.dumps(actual[key])}")
    for key in sorted(set(actual) & (set(expected) | set(may_be_absent))):
        want = expected.get(key, may_be_absent.get(key))
        if actual[key] != want:
            lines.append(f"  changed {what}: {key}\n      expected {json.dumps(want)}\n"
                         f"      actual   {json.dumps(actual[key])}")
            lines.extend(_list_delta(want, actual[key]))
    return "\n".join(lines)


def _list_delta(want, got) -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for field in sorted(set(want) | set(got)):
            if want.get(field) != got.get(field):
                out.extend(_list_delta(want.get(field), got.get(field)) or
                           [f"      {field}: {want.get(field)!r} -> {got.get(field)!r}"])
        return out
    if isinstance(want, list) and got is None:
        return ["      no samples at all (declared, but nothing recorded in it)"]
    if isinstance(want, list) and isinstance(got, list):
        gone, new = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        out = []
        if gone:
            out.append(f"      gone: {', '.join(gone)}")
        if new:
            out.append(f"      new:  {', '.join(new)}")
        return out
    return []


# -- the tests --------------------------------------------------------------------------------

def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def current_run(tmp_path_factory) -> JobRun:
    """One crash-once run of the current code (installed packages, cwd the project) for both checks."""
    run = run_crash_once(tmp_path_factory.mktemp("crash_once"), ROOT, pythonpath=None)
    assert run.returncode == 0, "the crash-once job did not succeed: " + run.explain()
    return run


def test_crash_once_events_have_the_same_kinds_and_fields(current_run):
    expected = load(EVENTS_EXPECTED)
    surface = event_surface(current_run.events)
    stable, timed = split_timing_dependent(surface)
    problems = [
        describe_differences("event kind", expected["kinds"], stable,
                             may_be_absent=expected["timing_dependent_kinds"]),
        describe_differences("event kind (timing-dependent)", {}, timed,
                             may_be_absent=expected["timing_dependent_kinds"]),
    ]
    if surface["record_fields"] != expected["record_fields"]:
        problems.append(f"  event log line fields: expected {expected['record_fields']}, "
                        f"actual {surface['record_fields']}")
    problems = "\n".join(p for p in problems if p)
    assert not problems, (
        f"the crash-once event log differs from {EVENTS_EXPECTED.relative_to(ROOT)}:\n{problems}"
    )


def test_metrics_lists_the_same_series(current_run):
    expected = load(METRICS_EXPECTED)
    assert current_run.exposition, (
        "no /metrics answer during the end-of-job linger (after run_end in the log and the "
        f"agent's '{LINGER_ANNOUNCEMENT}' line): " + current_run.explain()
    )
    actual = metric_series(current_run.exposition)
    problems = describe_differences("series", expected["series"], actual)
    assert not problems, (
        f"/metrics differs from {METRICS_EXPECTED.relative_to(ROOT)}:\n{problems}"
    )


# -- recording the expectations from the old code ------------------------------------------------

GENERATOR_NOTE = (
    "Recorded from the code before issue 12's restructuring (commit {commit}) by "
    "`python tests/test_unchanged_surface.py --regenerate --code <that checkout>`: {runs} runs "
    "of the crash-once example (python -m agent run {agent} <code>/examples/train_ddp.py "
    "{training}), whose extractions agreed; see the test module's docstring for what is compared."
)


def regenerate(code: Path, runs: int, scratch: Path) -> None:
    """Run the old code ``runs`` times; write the expectations only if every run agrees."""
    probe = subprocess.run(
        [sys.executable, "-c", "import agent, telemetry; print(agent.__file__); print(telemetry.__file__)"],
        cwd=scratch, env=dict(os.environ, PYTHONPATH=str(code)), capture_output=True, text=True, check=True,
    )
    imported = probe.stdout.split()
    print("imports:", *imported)
    if not all(Path(p).resolve().is_relative_to(code.resolve()) for p in imported):
        raise SystemExit(f"the old code was not the one imported: {imported}")
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"

    stables, timeds, fields, series = [], {}, [], []
    for i in range(runs):
        started = time.monotonic()
        run = run_crash_once(scratch / f"run{i}", code, pythonpath=str(code))
        if run.returncode != 0 or not run.exposition or not run.events:
            raise SystemExit("run failed: " + run.explain())
        surface = event_surface(run.events)
        stable, timed = split_timing_dependent(surface)
        print(f"run {i}: exit {run.returncode}, {len(run.events)} events, "
              f"{len(run.exposition)} bytes of /metrics, {time.monotonic() - started:.1f}s; "
              f"timing-dependent kinds seen: {', '.join(timed) or 'none'}")
        stables.append(stable)
        fields.append(surface["record_fields"])
        series.append(metric_series(run.exposition))
        for kind, keys in timed.items():
            if timeds.setdefault(kind, keys) != keys:
                raise SystemExit(f"timing-dependent kind {kind} changed its fields between runs")
    for i in range(1, runs):
        for what, values in (("event kinds", stables), ("record fields", fields), ("series", series)):
            if values[i] != values[0]:
                diff = describe_differences(what, values[0], values[i]) if isinstance(values[0], dict) else ""
                raise SystemExit(f"run {i}'s {what} differ from run 0's; not stable:\n{diff}")

    note = GENERATOR_NOTE.format(commit=commit, runs=runs, agent=" ".join(AGENT_FLAGS),
                                 training=" ".join(TRAINING_FLAGS))
    EXPECTED.mkdir(exist_ok=True)
    EVENTS_EXPECTED.write_text(json.dumps({
        "generator": note,
        "record_fields": fields[0],
        "kinds": stables[0],
        "timing_dependent_kinds": dict(sorted(timeds.items())),
    }, indent=2) + "\n")
    METRICS_EXPECTED.write_text(json.dumps({"generator": note, "series": series[0]}, indent=2) + "\n")
    print(f"wrote {EVENTS_EXPECTED} and {METRICS_EXPECTED}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regenerate", action="store_true", required=True,
                        help="run the old code and rewrite tests/expected/")
    parser.add_argument("--code", type=Path, required=True,
                        help="checkout of the code to record (the old code, before issue 12)")
    parser.add_argument("--runs", type=int, default=3, help="runs that must agree (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="unchanged-surface-") as scratch:
        regenerate(args.code.resolve(), args.runs, Path(scratch))


if __name__ == "__main__":
    main()
