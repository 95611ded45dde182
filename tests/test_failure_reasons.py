"""A reason for every failure: the last line a worker wrote to stderr when it left no error
file, the signal that killed it (and the OOM killer where the machine tells), its log files
when output goes to files. Real agents (``elastiscope run``) and real workers throughout."""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.processes.stderr_tail import TAIL_BYTES, TAIL_LINES, StderrRelay, TailBuffer, file_tail
from tests.helpers.polling import wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
WORKERS = ROOT / "tests" / "workers"


def run_cli(tmp_path, script, *args, nproc=2, extra=()):
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "agent", "run", "--standalone", "--nproc-per-node", str(nproc),
           "--max-restarts", "0", "--metrics-port", "off", "--event-log", str(events), *extra,
           str(WORKERS / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=100)
    return proc, events


def failed_events(events):
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    return [e["metadata"] for e in lines if e["name"] == "elastiscope.worker.failed"]


def timeline_text(events):
    return subprocess.run([sys.executable, "-m", "agent", "events", str(events)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60).stdout


def restart_events(events):
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    return [e["metadata"] for e in lines if e["name"] == "elastiscope.agent.restart"]


def test_exit_without_error_file_reads_the_last_stderr_line(tmp_path):
    proc, events = run_cli(tmp_path, "bad_config.py", extra=("--max-restarts", "1"))
    assert proc.returncode != 0
    failed = failed_events(events)
    assert [f["error_message"] for f in failed] == ["rank 1: bad config, exiting 3"] * 2
    assert all(f["root_cause"] is True and f["root_cause_rank"] == 1 for f in failed)
    (restart,) = restart_events(events)
    assert restart["root_cause_rank"] == 1 and restart["root_cause_error"] == "rank 1: bad config, exiting 3"
    failed = failed[0]
    assert failed["stderr_tail"].endswith("loading config ...\nrank 1: bad config, exiting 3")
    assert "rank 1: bad config, exiting 3" in proc.stderr  # the console still gets it
    assert "traceback : rank 1: bad config, exiting 3" in proc.stderr  # torch's end-of-run report
    assert "exit code 3: rank 1: bad config, exiting 3" in timeline_text(events)


def test_redirected_output_gives_the_log_paths_and_the_tail_from_the_file(tmp_path):
    proc, events = run_cli(tmp_path, "bad_config.py", extra=("--log-dir", tmp_path / "logs", "-r", "3"))
    (failed,) = failed_events(events)
    assert failed["error_message"] == "rank 1: bad config, exiting 3"
    assert failed["stderr_log"].startswith(str(tmp_path / "logs"))
    assert failed["stderr_log"].endswith("/1/stderr.log") and os.path.isfile(failed["stderr_log"])
    assert failed["stdout_log"].endswith("/1/stdout.log")
    text = timeline_text(events)
    assert failed["stderr_log"] in text


def test_a_worker_killed_from_outside_reads_killed_by_sigkill(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    events = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "agent", "run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "0", "--metrics-port", "off", "--event-log", str(events),
           str(WORKERS / "sleeper.py"), str(out)]
    agent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = int(wait_until(lambda: (out / "pid.1").exists() and (out / "pid.1").read_text(), 60, "pid.1"))
        os.kill(pid, signal.SIGKILL)
        agent.wait(60)
    finally:
        agent.kill()
        agent.wait()
    (failed,) = failed_events(events)
    assert failed["error_message"].startswith("killed by SIGKILL")
    assert failed["signal"] == "SIGKILL"
    assert "killed by SIGKILL" in timeline_text(events)


def _memory_cgroup(limit_bytes):
    """A memory cgroup of our own with a limit, and the file a process writes its pid to; skip
    where this machine does not let us make one."""
    name = f"elastiscope-test-{uuid.uuid4().hex[:8]}"
    for base, limit_file, tasks in (("/sys/fs/cgroup", "memory.max", "cgroup.procs"),
                                    ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "cgroup.procs")):
        path = os.path.join(base, name)
        if not os.path.isfile(os.path.join(base, "cgroup.procs")):
            continue
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            with open(os.path.join(path, limit_file), "w") as f:
                f.write(str(limit_bytes))
            if os.path.exists(os.path.join(path, "memory.swap.max")):
                with open(os.path.join(path, "memory.swap.max"), "w") as f:
                    f.write("0")
        except OSError:
            os.rmdir(path)
            continue
        return path, os.path.join(path, tasks)
    pytest.skip("cannot create a memory cgroup with a limit here: no safe way to provoke an OOM kill")


def test_an_oom_killed_worker_reads_out_of_memory(tmp_path):
    cgroup, tasks = _memory_cgroup(256 << 20)
    try:
        proc, events = run_cli(tmp_path, "oom_in_cgroup.py", tasks)
        (failed,) = failed_events(events)
    finally:
        wait_until(lambda: _try_rmdir(cgroup), 30, f"cgroup {cgroup} removed")
    if failed["signal"] != "SIGKILL":
        pytest.skip(f"the cgroup limit did not end in an OOM kill here: {failed['error_message']}")
    assert failed["error_message"] == "killed by SIGKILL (out of memory: the kernel's OOM killer)"
    assert "out of memory" in timeline_text(events)


def _try_rmdir(path):
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def test_the_tail_is_bounded_in_lines_and_bytes(tmp_path):
    buffer = TailBuffer()
    for i in range(1000):
        buffer.feed(f"line {i}\n".encode())
    lines = buffer.text().splitlines()
    assert len(lines) == TAIL_LINES and lines[-1] == "line 999"
    buffer = TailBuffer()
    buffer.feed(b"x" * (3 * TAIL_BYTES) + b"\nlast\n")
    assert buffer.text() == "last"
    log = tmp_path / "stderr.log"
    log.write_bytes(b"".join(f"{'y' * 500} {i}\n".encode() for i in range(100)))
    tail = file_tail(str(log))
    assert len(tail.encode()) <= TAIL_BYTES and tail.endswith(" 99")
    assert all(line.startswith("y") for line in tail.splitlines())  # no cut first line
    assert file_tail(str(tmp_path / "missing")) == ""


def test_the_relay_copies_to_the_console_and_keeps_the_tail_even_before_its_thread_runs(tmp_path):
    console_r, console_w = os.pipe()
    relay = StderrRelay([0], console_fd=console_w)  # not started: tail() must drain by itself
    try:
        fd = os.open(relay.path(0), os.O_WRONLY)
        os.write(fd, b"first\nlast words\n")
        os.close(fd)
        assert relay.tail(0) == "first\nlast words"
        assert os.read(console_r, 100) == b"first\nlast words\n"
    finally:
        relay.close()
        os.close(console_r)
        os.close(console_w)
    assert not os.path.exists(os.path.dirname(relay.path(0)))
