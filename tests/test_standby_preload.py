"""Preloaded standbys: a worker that was one cannot tell itself from a cold one.

Real runs of ``elastiscope run``: on attempt 0 the worker imports torch, waits until the agent
has started a standby that preloads torch (its command line names the modules), and fails;
attempt 1 describes itself from the script's first line. Once with standbys (the worker comes
from the preloaded one), once with ``--no-warm-standby`` (cold); the descriptions must match.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from agent.standby_preload import TORCH_FIRST_STEP, StandbyPreload
from tests.helpers.polling import wait_until

WORKER = r"""
import os, sys, signal, json
first_line = {"preloaded": "torch._dynamo" in sys.modules}
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if attempt == 0:
    import time, torch
    deadline = time.monotonic() + (60 if os.environ["EXPECT"] == "warm" else 0)
    while time.monotonic() < deadline:
        siblings = [p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())]
        found = False
        for pid in siblings:
            try:
                if b"torch._dynamo" in open(f"/proc/{pid}/cmdline", "rb").read():
                    found = True
            except OSError:
                pass
        if found:
            break
        time.sleep(0.05)
    sys.exit(1)

def fd_kinds():
    kinds = {}
    for fd in sorted(map(int, os.listdir("/proc/self/fd"))):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory listing's own descriptor, closed by now
            continue
        # pipe:[inode] as "pipe"; a file by its name (each run has its own log directory)
        kinds[fd] = target.split(":")[0] if ":[" in target else os.path.basename(target)
    return kinds

main = sys.modules["__main__"]
seen = {
    "environ": dict(os.environ),
    "argv": sys.argv,
    "path": sys.path,
    "main": {k: repr(v) if v is None or isinstance(v, (str, int, dict)) and k != "__builtins__"
             else type(v).__name__ for k, v in vars(main).items() if k != "first_line"},
    "loader": type(main.__loader__).__name__,
    "signals": {int(s): repr(signal.getsignal(s)) for s in signal.valid_signals()
                if s not in (signal.SIGKILL, signal.SIGSTOP)},
    "fds": fd_kinds(),
}
import torch
seen["threads"] = [torch.get_num_threads(), torch.get_num_interop_threads()]
with open(os.path.join(sys.argv[1], os.environ["EXPECT"] + ".json"), "w") as f:
    json.dump(dict(seen, **first_line), f)
"""
# Values of a run, not of a worker: the run id, the store's port, the log and record files.
PER_RUN = {"TORCHELASTIC_RUN_ID", "MASTER_PORT", "TORCHELASTIC_ERROR_FILE", "ELASTISCOPE_PROGRESS_FILE",
           "ELASTISCOPE_STACK_FILE", "EXPECT"}


def _run(tmp_path, script, mode, flags):
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", *flags, "--nproc-per-node", "1", "--max-restarts", "1",
         "--metrics-port", "off", "--metrics-linger", "0", "--event-log", "off", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "EXPECT": mode, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads((tmp_path / f"{mode}.json").read_text())
    seen["environ"] = {k: v for k, v in seen["environ"].items() if k not in PER_RUN}
    return seen


@pytest.mark.slow  # two runs with torch in every worker: about a minute on a busy machine
def test_a_preloaded_worker_sees_what_a_cold_one_sees(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    warm = _run(tmp_path, script, "warm", [])
    cold = _run(tmp_path, script, "cold", ["--no-warm-standby"])
    assert warm.pop("preloaded") and not cold.pop("preloaded")
    assert warm["threads"][0] == 1  # OMP_NUM_THREADS as the worker's environment says
    for key in ("environ", "argv", "path", "main", "loader", "signals", "fds", "threads"):
        assert warm[key] == cold[key], key


def test_preload_waits_until_the_workers_use_torch(tmp_path):
    preload = StandbyPreload(extra=("json",))
    # A process without libtorch (not pytest's own: earlier tests may have imported torch).
    bare = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert preload.modules([bare.pid]) == ("json",)
    finally:
        bare.kill()
        bare.wait()
    assert preload.undecided
    proc = subprocess.Popen([sys.executable, "-c", "import torch, sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        wait_until(lambda: preload.modules([proc.pid]) == TORCH_FIRST_STEP + ("json",), 120)
        assert not preload.undecided
    finally:
        proc.kill()
        proc.wait()


def test_standbys_over_the_memory_limit_are_given_up():
    preload = StandbyPreload(memory_limit=1)
    assert preload.measure([os.getpid()])
    assert preload.modules([]) == () and not preload.undecided
    assert preload.last_memory[1] > 1


@pytest.mark.parametrize("modules", [TORCH_FIRST_STEP])
def test_the_default_preload_starts_no_thread_opens_no_file_sets_no_handler(modules):
    # Beyond what a bare `import torch` does: it is what a cold worker would do anyway.
    code = r"""
import os, sys, signal, json
def look():
    return (sorted(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")),
            {int(s): repr(signal.getsignal(s)) for s in signal.valid_signals() if s not in (9, 19)})
import torch
before = look()
for name in sys.argv[1].split(","):
    __import__(name)
print(json.dumps([before, look()]))
"""
    out = subprocess.run([sys.executable, "-c", code, ",".join(modules)], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    before, after = json.loads(out.splitlines()[-1])
    assert before == after
    assert signal.SIGTERM  # the dispositions compared include SIGTERM/SIGINT


def test_preload_flag_values():
    from agent.cli.errors import UsageError
    from agent.cli.validate import parse_preload

    assert parse_preload(None) == ((), True)
    assert parse_preload("none") == ((), False)
    assert parse_preload("numpy, pandas.core") == (("numpy", "pandas.core"), True)
    with pytest.raises(UsageError, match="not a module name"):
        parse_preload("numpy,os/path")


def test_a_bad_preload_flag_is_one_line_and_exit_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--preload", "a-b", "x.py"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--preload" in proc.stderr
