"""agent.processes on its own: spawning, exit watching, stopping, parent death, standbys, logs,
usage."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from agent.processes import (
    LogTee,
    ProgramSpawner,
    TeeRoute,
    WorkerLaunch,
    WorkerSet,
    python_invocation,
    read_usage,
    standby_argv,
)
from helpers.local_agent import WORKERS, create_times, kill_quietly, process_alive, read_pids
from helpers.polling import wait_until

pytestmark = pytest.mark.timeout(60)

PY = sys.executable


@pytest.fixture
def spawner():
    s = ProgramSpawner()
    yield s
    s.close()


def sleeper(rank: int, out, *extra: str) -> WorkerLaunch:
    return WorkerLaunch(rank, PY, (str(WORKERS / "sleeper.py"), str(out), *extra), {"RANK": str(rank)})


def test_an_exit_wakes_the_waiter_at_once_however_long_it_meant_to_wait(spawner):
    workers = WorkerSet.start([WorkerLaunch(0, PY, ("-c", "import sys; sys.exit(7)"))], spawner)
    started = time.monotonic()
    assert workers.wait(30) is True
    assert time.monotonic() - started < 10
    [exited] = workers.collect()
    assert (exited.local_rank, exited.exit_code, exited.failed) == (0, 7, True)
    workers.close()


def test_exit_reports_carry_the_signal_as_a_negative_code(spawner, tmp_path):
    workers = WorkerSet.start([sleeper(0, tmp_path)], spawner)
    pid = wait_until(lambda: read_pids(tmp_path, 1), 20)[0]
    os.kill(pid, signal.SIGKILL)
    assert workers.wait(20)
    assert workers.collect()[0].exit_code == -signal.SIGKILL
    workers.close()


def test_stop_terminates_workers_and_marks_them_stopped_by_the_agent(spawner, tmp_path):
    workers = WorkerSet.start([sleeper(r, tmp_path) for r in range(2)], spawner)
    wait_until(lambda: read_pids(tmp_path, 2), 20)
    workers.stop(signal.SIGTERM, grace=20)
    assert [w.exit_code for w in workers.workers] == [-signal.SIGTERM, -signal.SIGTERM]
    assert all(w.stopped_by_agent and not w.failed for w in workers.workers)
    workers.close()


def test_stop_sigkills_a_worker_that_ignores_sigterm_after_the_grace_period(spawner, tmp_path):
    workers = WorkerSet.start([sleeper(0, tmp_path, "--ignore-sigterm")], spawner)
    wait_until(lambda: read_pids(tmp_path, 1), 20)
    started = time.monotonic()
    workers.stop(signal.SIGTERM, grace=0.5)
    assert workers.workers[0].exit_code == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 10
    workers.close()


def test_a_missing_program_raises_file_not_found(spawner):
    with pytest.raises(FileNotFoundError):
        WorkerSet.start([WorkerLaunch(0, "/nonexistent/program")], spawner)


def test_a_missing_program_found_nowhere_on_path_is_named_as_given(spawner):
    with pytest.raises(FileNotFoundError) as caught:
        WorkerSet.start([WorkerLaunch(0, "no-such-program-here", env={"PATH": "/usr/bin:/bin"})], spawner)
    assert caught.value.filename == "no-such-program-here"


def test_a_log_file_that_cannot_be_created_fails_the_start_naming_it(spawner, tmp_path):
    missing = str(tmp_path / "no-such-dir" / "stdout.log")
    with pytest.raises(FileNotFoundError) as caught:
        WorkerSet.start([WorkerLaunch(0, PY, ("-c", "pass"), stdout=missing)], spawner)
    assert caught.value.filename == missing


def _finish(workers: WorkerSet) -> None:
    while any(w.running for w in workers.workers):
        workers.wait(20)
        workers.collect()
    workers.close()


def _ignored_signals_mask() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("SigIgn:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigIgn line in /proc/self/status")


def test_a_program_gets_only_the_standard_streams_and_default_signal_dispositions(spawner, tmp_path):
    # The agent's pipes to the spawner must not leak into workers (a worker holding the
    # reply pipe would hide the spawner's death from the agent), and the signals the
    # interpreter ignores (SIGPIPE, SIGXFSZ) must be back to their defaults in a program.
    out = tmp_path / "out"
    _finish(WorkerSet.start(
        [WorkerLaunch(0, "/bin/sh", ("-c", "ls /proc/$$/fd; grep SigIgn /proc/$$/status"), stdout=str(out))],
        spawner))
    lines = out.read_text().split()
    fds = sorted(int(x) for x in lines[: lines.index("SigIgn:")])
    assert fds == [0, 1, 2]
    # Ignored signals survive exec: what the environment that started this test ignores (a
    # shell's background job ignores SIGINT and SIGQUIT) a worker inherits, as under Popen.
    # Nothing more: the interpreter's own two are undone.
    own = {1 << (sig - 1) for sig in (signal.SIGPIPE, signal.SIGXFSZ)}
    inherited = _ignored_signals_mask() & ~sum(own)
    assert int(lines[lines.index("SigIgn:") + 1], 16) == inherited


def test_each_standby_holds_only_its_own_job_pipe_and_all_leave_when_dismissed(spawner, tmp_path):
    # A standby holding another's job pipe would keep that one from ever seeing EOF: it
    # would neither get a job nor leave when dismissed.
    from agent.processes import StandbyPool

    script = tmp_path / "s.py"
    script.write_text("pass\n")
    pool = StandbyPool(spawner)
    invocation = python_invocation(PY, ("-u", str(script)))
    pool.fill(invocation, [dict(os.environ)] * 3)
    pids = pool.pids
    assert len(pids) == 3
    born = create_times(pids)
    try:
        for pid in pids:
            # The spawner appends the job fd to the standby's command.
            job_fd = int(open(f"/proc/{pid}/cmdline").read().split("\0")[len(standby_argv(invocation))])
            # Until it waits on its pipe, the interpreter's start-up opens files of its own.
            wait_until(lambda: sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2, job_fd], 10)
        pool.dismiss()
        wait_until(lambda: not any(process_alive(p, born[p]) for p in pids), 20)
    finally:
        kill_quietly(pids)


def test_a_request_larger_than_a_pipe_buffer_arrives_whole(spawner, tmp_path):
    # A pipe holds 64 KiB: the spawner has to read this request in parts.
    big = {f"BIG{i}": "x" * 60_000 for i in range(5)}
    out = tmp_path / "out"
    code = "import os; print(sum(len(v) for k, v in os.environ.items() if k[:3] == 'BIG'), os.environ['RANK'])"
    launches = [WorkerLaunch(r, PY, ("-c", code), {**big, "RANK": str(r)}, stdout=f"{out}.{r}")
                for r in range(2)]
    _finish(WorkerSet.start(launches, spawner))
    assert [(out.parent / f"out.{r}").read_text().split() for r in range(2)] == [["300000", "0"], ["300000", "1"]]


def test_the_spawner_process_imports_only_what_it_needs(tmp_path):
    # It lives as long as the job: every module it imports is memory held all along. This
    # runs its real command line, as the agent starts it, with -X importtime.
    from agent.processes import spawner_command

    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    command = spawner_command()
    command.insert(1, "-Ximporttime")
    proc = subprocess.Popen([*command, str(os.getpid()), str(request_r), str(reply_w)],
                            pass_fds=(request_r, reply_w), stderr=subprocess.PIPE, text=True)
    os.close(request_r)
    os.close(reply_w)
    try:
        from agent.processes import spawner_process

        spawner_process.send(request_w, ("spawn", [{"argv": ["/bin/true"], "env": {}, "cwd": str(tmp_path),
                                             "stdout": "", "stderr": ""}]))
        assert spawner_process.recv(reply_r)[0] == "spawned"
    finally:
        os.close(request_w)  # EOF: the spawner exits
        _, stderr = proc.communicate(timeout=30)
        os.close(reply_r)
    def modules(importtime: str) -> set[str]:
        return {line.split("|")[-1].strip() for line in importtime.splitlines()
                if line.startswith("import time:") and "imported package" not in line}

    bare = subprocess.run([PY, "-I", "-S", "-Ximporttime", "-c", "pass"], capture_output=True,
                          text=True, timeout=30).stderr
    imported = modules(stderr) - modules(bare)  # beyond the interpreter's own start-up
    allowed = {"_signal", "select", "fcntl", "ctypes", "_ctypes", "struct", "_struct", "ctypes._endian",
               "types", "os", "stat", "_stat", "posixpath", "genericpath", "os.path", "_collections_abc",
               "marshal", "time"}
    assert imported and imported <= allowed, sorted(imported - allowed)


def test_workers_die_when_their_spawner_is_killed(spawner, tmp_path):
    # Nothing can run in a SIGKILLed spawner: only the kernel's parent-death signal is left.
    WorkerSet.start([sleeper(r, tmp_path) for r in range(2)], spawner)
    pids = wait_until(lambda: read_pids(tmp_path, 2), 20)
    born = create_times(pids)
    try:
        os.kill(spawner.pid, signal.SIGKILL)
        wait_until(lambda: not any(process_alive(p, born[p]) for p in pids), 2.0)
    finally:
        kill_quietly(pids)


def test_the_spawner_dies_when_the_agent_is_killed(tmp_path):
    agent = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from agent.processes import ProgramSpawner
        s = ProgramSpawner()
        open({str(tmp_path / "spawner")!r}, "w").write(str(s.pid))
        time.sleep(60)
    """)])
    try:
        pid_file = tmp_path / "spawner"
        spawner_pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30))
        born = create_times([spawner_pid])[spawner_pid]
        agent.kill()
        agent.wait(10)
        wait_until(lambda: not process_alive(spawner_pid, born), 2.0)
    finally:
        agent.kill()


def test_a_child_whose_parent_died_before_asking_for_the_death_signal_kills_itself():
    # The parent check after prctl: a "parent" that is not ours stands for one that died.
    code = "from agent.processes import die_with_parent; die_with_parent(1); print('survived')"
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout


def test_python_invocation_takes_apart_scripts_and_modules():
    inv = python_invocation(PY, ("-u", "-X", "dev", "train.py", "--lr", "1"))
    assert (inv.flags, inv.script, inv.module) == (("-u", "-X", "dev"), "train.py", None)
    assert inv.args == ("--lr", "1")
    inv = python_invocation(PY, ("-m", "pkg.train", "x"))
    assert (inv.script, inv.module, inv.args) == (None, "pkg.train", ("x",))
    # Options run together with -m stay the standby's options.
    inv = python_invocation(PY, ("-um", "pkg.train"))
    assert (inv.flags, inv.module) == (("-u",), "pkg.train")


@pytest.mark.parametrize("entrypoint,args", [
    (PY, ("-c", "print(1)")),
    (PY, ("-i", "train.py")),
    (PY, ("-x", "train.py")),
    (PY, ("-im", "pkg.train")),
    (PY, ("--", "train.py")),
    (PY, ("-",)),
    (PY, ("-u",)),
    ("/usr/bin/env", ("python", "train.py")),
])
def test_python_invocation_refuses_what_a_standby_cannot_run(entrypoint, args):
    assert python_invocation(entrypoint, args) is None


def test_log_tee_copies_complete_lines_with_a_prefix_and_the_last_partial_one_on_stop(tmp_path):
    log = tmp_path / "stdout.log"
    log.write_text("one\nzz\ntw")
    console, filtered = io.StringIO(), io.StringIO()
    tee = LogTee([TeeRoute(str(log), "[r0]:", [(console, None), (filtered, lambda line: "o" in line)])],
                 interval=0.01).start()
    wait_until(lambda: "[r0]:zz\n" in console.getvalue(), 10)
    assert "tw" not in console.getvalue()
    with open(log, "a") as f:
        f.write("o")
    tee.stop()
    assert console.getvalue() == "[r0]:one\n[r0]:zz\n[r0]:two\n"
    assert filtered.getvalue() == "[r0]:one\n[r0]:two\n"


def test_read_usage_reports_cpu_seconds_and_resident_bytes_of_a_process():
    cpu, rss = read_usage(os.getpid())
    assert cpu > 0 and rss > 10_000_000
    assert read_usage(2**22 + 12345) is None


def test_read_usage_has_nothing_for_an_exited_unreaped_worker():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited; still a zombie
        assert read_usage(proc.pid) is None
    finally:
        proc.wait()


def test_an_exit_reported_while_asking_for_standbys_is_not_lost(spawner, tmp_path):
    """The spawner's exit report can arrive while the agent waits for its reply to a standby
    request; it is read off the pipe then, so the pipe is no longer readable for it. The worker
    set must still learn of that exit (it used to wait forever)."""
    from agent.processes import StandbyPool

    script = tmp_path / "s.py"
    script.write_text("pass\n")
    workers = WorkerSet.start([WorkerLaunch(0, PY, ("-c", "pass"))], spawner=spawner)
    try:
        pid = workers.workers[0].pid
        # Reaped by the spawner (gone, not merely a zombie), which reports the exit on the pipe
        # right after reaping.
        wait_until(lambda: not _pid_exists(pid), 20)
        StandbyPool(spawner).fill(python_invocation(PY, ("-u", str(script))), [dict(os.environ)])
        assert workers.wait(10.0)
        assert [w.local_rank for w in workers.collect()] == [0]
    finally:
        workers.stop(signal.SIGKILL, 1)
        workers.close()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
