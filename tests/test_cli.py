"""``elastiscope run`` end to end: real agents, real workers, real c10d rendezvous on 127.0.0.1,
real HTTP. Each test runs the installed command in a subprocess and watches what it prints."""

import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import psutil
import pytest

from helpers.polling import wait_until as poll

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = str(REPO / "examples" / "train_ddp.py")
URL_LINE = re.compile(r"^elastiscope: metrics (http://\S+)/metrics")
LOG_LINE = re.compile(r"^elastiscope: event log (\S+)")


def elastiscope_cmd():
    """The installed console script when there is one (a fresh install), else python -m agent."""
    exe = shutil.which("elastiscope")
    return [exe] if exe else [sys.executable, "-m", "agent"]


def status_text(line):
    """A status line as a person reads it: ``elastiscope: ...`` also for its JSON form (our
    lines are JSON off a terminal, as here where stderr is a pipe)."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return line
        if isinstance(record, dict) and record.get("logger") == "elastiscope.cli":
            return f"elastiscope: {record['event']}"
    return line


class Launched:
    """A running command whose stderr is read on a thread, so tests can wait for lines.

    ``err_lines`` holds stderr with our JSON status lines shown as text; ``raw_err_lines`` as
    written."""

    def __init__(self, args, cwd, env=None):
        self.proc = subprocess.Popen(
            args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        self.err_lines: list[str] = []
        self.raw_err_lines: list[str] = []
        self._cond = threading.Condition()
        self._stdout: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err_lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink):
        for line in stream:
            with self._cond:
                if sink is self.err_lines:
                    self.raw_err_lines.append(line.rstrip("\n"))
                sink.append(status_text(line.rstrip("\n")))
                self._cond.notify_all()

    def wait_line(self, pattern, timeout=60):
        """The first stderr match of ``pattern``, waiting for it (or for the process to end)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.err_lines:
                    m = pattern.search(line)
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._pumping()):
                    raise AssertionError(f"no line matching {pattern.pattern!r}:\n" + self.stderr)
                self._cond.wait(min(remaining, 0.5))

    def _pumping(self):
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout=90):
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        return code

    @property
    def stderr(self):
        return "\n".join(self.err_lines)

    @property
    def stdout(self):
        return "\n".join(self._stdout)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def launch(tmp_path):
    started = []

    def _launch(*args, cmd=None, env=None):
        run = Launched([*(cmd or elastiscope_cmd()), *args], cwd=tmp_path, env=env)
        started.append(run)
        return run

    yield _launch
    for run in started:
        run.kill()


def read_events(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def events_cli(*args, cwd):
    return subprocess.run([*elastiscope_cmd(), "events", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def write_script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body)
    return str(path)


# ---- the example, watched while it trains -----------------------------------------------------


def test_run_trains_the_example_while_serving_metrics_and_status(launch, tmp_path):
    run = launch("run", "--nproc-per-node", "2", "--metrics-linger", "0", EXAMPLE,
                 "--steps", "150", "--step-delay", "0.02", "--checkpoint-dir", str(tmp_path / "ck"))
    base = run.wait_line(URL_LINE).group(1)
    event_log = run.wait_line(LOG_LINE).group(1)

    def healthy_status():
        try:
            status = httpx.get(base + "/status", timeout=5).json()
        except httpx.HTTPError:
            return None
        workers = status.get("workers", [])
        ok = status["state"] == "HEALTHY" and len(workers) == 2 and all(w["pid"] for w in workers)
        return status if ok else None

    status = poll(healthy_status, 60, "the worker group to be HEALTHY")
    metrics = httpx.get(base + "/metrics", timeout=5).text
    openapi = httpx.get(base + "/openapi.json", timeout=5).json()

    assert run.wait() == 0, run.stderr
    schema = {"$ref": "#/components/schemas/Status", "components": openapi["components"]}
    jsonschema.Draft202012Validator(schema).validate(status)
    assert status["world_size"] == 2 and status["role"] == "default"
    assert re.search(r'^elastiscope_worker_group_state\{role="default",state="HEALTHY"\} 1\.0$',
                     metrics, re.M), metrics
    assert f'run_id="{status["run_id"]}"' in metrics
    assert "train_ddp: done: 150 steps" in run.stdout
    events = read_events(tmp_path / event_log)
    assert events[0]["name"] == "elastiscope.endpoint.started"
    assert events[0]["metadata"]["url"] == base  # the URL printed is the URL recorded
    assert "elastiscope.agent.run_end" in [e["name"] for e in events]


# ---- the same script under torchrun and under elastiscope -----------------------------------


def test_training_script_runs_unchanged_under_torchrun_and_elastiscope(launch, tmp_path):
    args = [EXAMPLE, "--steps", "40", "--log-every", "40", "--checkpoint-dir", ""]
    ours = launch("run", "--nproc-per-node", "2", "--metrics-linger", "0", *args)
    assert ours.wait() == 0, ours.stderr
    torchrun = launch("--nproc-per-node", "2", *args, cmd=[shutil.which("torchrun") or "torchrun"])
    assert torchrun.wait() == 0, torchrun.stderr

    def final_loss(out):
        return re.search(r"^train_ddp: step 40/40 loss (\S+)$", out, re.M).group(1)

    # Same data, seeds and world size: the same training, to the last digit.
    assert final_loss(ours.stdout) == final_loss(torchrun.stdout)


def test_failed_job_exits_1_like_torchrun(launch, tmp_path):
    script = write_script(tmp_path, "fail.py", "import sys; sys.exit(3)\n")
    ours = launch("run", "--metrics-port", "off", "--event-log", "off", script)
    torchrun = launch(script, cmd=[shutil.which("torchrun") or "torchrun"])
    assert (ours.wait(), torchrun.wait()) == (1, 1), ours.stderr
    assert re.search(r"exitcode\s*: 3", ours.stderr), ours.stderr
    assert "Traceback" not in ours.stderr


# ---- a crash, a restart, and what the event log says about it -------------------------------


def test_crash_once_restarts_once_and_events_explain_it(launch, tmp_path):
    run = launch("run", "--nproc-per-node", "2", "--max-restarts", "2", "--metrics-linger", "0",
                 EXAMPLE, "--steps", "60", "--log-every", "20", "--checkpoint-every", "10",
                 "--checkpoint-dir", str(tmp_path / "ck"),
                 "--crash-once-rank", "1", "--crash-at-step", "25")
    event_log = run.wait_line(LOG_LINE).group(1)
    assert run.wait() == 0, run.stderr
    assert "resuming at step 20" in run.stdout

    text = events_cli(event_log, cwd=tmp_path)
    summary = events_cli(event_log, "--json", cwd=tmp_path)
    assert text.returncode == 0 and summary.returncode == 0, text.stderr + summary.stderr
    assert "FAILED rank 1 (local 1), exit code 1: RuntimeError: injected crash on rank 1 at step 25" \
        in text.stdout, text.stdout
    assert "restarts: 1 (failure: 1)" in text.stdout
    assert re.search(r"restart #1 \(failure of rank\(s\) 1\); 1 left, workers running again after "
                     r"\d+ ms", text.stdout), text.stdout
    assert "healthy again" not in text.stdout  # a restart's duration is not training resumed
    assert f"run started: {EXAMPLE}, 2 worker(s)" in text.stdout, text.stdout
    (only_run,) = json.loads(summary.stdout)["runs"]
    assert only_run["outcome"] == "SUCCEEDED"
    assert only_run["restart_count"] == 1 and only_run["attempt_count"] == 2
    assert [(f["global_rank"], f["exit_code"]) for f in only_run["failures"]] == [(1, 1)]


# ---- the end of the job -----------------------------------------------------------------------


# A worker that runs until the test lets it finish (by creating the file named in its argv).
UNTIL_RELEASED = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\n"
LINGER_LINE = re.compile(r"^elastiscope: endpoint stays up until the next /metrics scrape")


def scrape(base):
    try:
        response = httpx.get(base + "/metrics", timeout=5)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def test_a_scraped_endpoint_lingers_until_the_final_state_is_scraped(launch, tmp_path):
    script = write_script(tmp_path, "until.py", UNTIL_RELEASED)
    release = tmp_path / "release"
    run = launch("run", "--metrics-linger", "60", script, str(release))
    base = run.wait_line(URL_LINE).group(1)
    poll(lambda: scrape(base), 60, "a scrape during the run")  # a scraper is watching
    release.touch()
    run.wait_line(re.compile(r"^elastiscope: run SUCCEEDED"))
    run.wait_line(LINGER_LINE)
    metrics = scrape(base)
    scraped = time.monotonic()
    assert run.wait(30) == 0
    assert time.monotonic() - scraped < 15  # the scrape, not the 60 s, ended the linger
    assert metrics and re.search(
        r'^elastiscope_worker_group_state\{role="default",state="SUCCEEDED"\} 1\.0$', metrics,
        re.M), metrics


def test_an_endpoint_nobody_scraped_does_not_linger(launch, tmp_path):
    """Nobody watched the run, so nobody waits for its final state: the job ends with its work."""
    script = write_script(tmp_path, "noop.py", "pass\n")
    run = launch("run", "--metrics-linger", "60", script)
    run.wait_line(re.compile(r"^elastiscope: run SUCCEEDED"))
    summarised = time.monotonic()
    assert run.wait(30) == 0, run.stderr
    assert time.monotonic() - summarised < 10  # not the 60 s
    assert not any(LINGER_LINE.search(line) for line in run.err_lines), run.stderr


class _Pushgateway(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args):
        pass


def test_final_metrics_are_pushed_to_the_pushgateway(launch, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pushgateway)
    _Pushgateway.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = write_script(tmp_path, "noop.py", "pass\n")
        run = launch("run", "--metrics-port", "off", "--pushgateway",
                     f"http://127.0.0.1:{server.server_port}", script)
        assert run.wait() == 0, run.stderr
    finally:
        server.shutdown()
    assert _Pushgateway.received, "nothing was pushed"
    path, body = _Pushgateway.received[-1]
    assert path.startswith("/metrics/job/elastiscope")
    assert b'elastiscope_worker_group_state{role="default",state="SUCCEEDED"} 1.0' in body


def test_python_dash_m_agent_runs_without_endpoint_or_event_log(launch, tmp_path):
    script = write_script(tmp_path, "noop.py", "print('ran')\n")
    run = launch("run", "--metrics-port", "off", "--event-log", "off", script,
                 cmd=[sys.executable, "-m", "agent"])
    assert run.wait() == 0, run.stderr
    assert "ran" in run.stdout
    assert not URL_LINE.search(run.stderr) and not LOG_LINE.search(run.stderr)
    assert not (tmp_path / "runs").exists()


# Writes started.<rank> once running, then sleeps: lets a test signal a launcher whose workers run.
STARTED_THEN_SLEEPS = ("import os, sys, time\n"
                       "open(os.path.join(sys.argv[1], 'started.' + os.environ['RANK']), 'w').close()\n"
                       "time.sleep(120)\n")


def interrupt_once_started(run, directory, nproc):
    poll(lambda: len(list(directory.glob("started.*"))) == nproc, 60, "the workers to start")
    run.proc.send_signal(signal.SIGINT)
    return run.wait(60)


def test_ctrl_c_says_so_once_exits_like_torchrun_and_does_not_linger(launch, tmp_path):
    script = write_script(tmp_path, "sleeper.py", STARTED_THEN_SLEEPS)
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir(), ours.mkdir()
    torchrun = launch("--nproc-per-node", "2", script, str(theirs),
                      cmd=[shutil.which("torchrun") or "torchrun"])
    torchrun_code = interrupt_once_started(torchrun, theirs, 2)

    run = launch("run", "--nproc-per-node", "2", "--metrics-linger", "60", script, str(ours))
    base = run.wait_line(URL_LINE).group(1)
    event_log = run.wait_line(LOG_LINE).group(1)
    poll(lambda: scrape(base), 60, "a scrape during the run")  # would make a finished run linger
    interrupted = time.monotonic()
    code = interrupt_once_started(run, ours, 2)

    assert code == torchrun_code == 1, (code, torchrun_code, run.stderr)
    assert time.monotonic() - interrupted < 30  # no 60 s linger
    ours_lines = [line for line in run.err_lines if line.startswith("elastiscope: ")]
    assert ours_lines[-1].startswith("elastiscope: run stopped by SIGINT (exit 1), 0 restart(s)"), \
        run.stderr
    assert sum("SIGINT" in line for line in ours_lines) == 1, run.stderr
    assert not any(LINGER_LINE.search(line) for line in run.err_lines), run.stderr
    assert "HEALTHY" not in ours_lines[-1]
    (run_end,) = [e for e in read_events(tmp_path / event_log)
                  if e["name"] == "elastiscope.agent.run_end"]
    assert run_end["metadata"]["state"] == "SIGNALED"  # the log says what happened, too


def test_off_a_terminal_every_line_of_ours_is_json(launch, tmp_path):
    script = write_script(tmp_path, "noop.py", "pass\n")
    run = launch("run", "--nproc-per-node", "2", script)  # stderr is a pipe: --log-format auto
    assert run.wait() == 0, run.stderr
    records = [json.loads(line) for line in run.raw_err_lines]  # each line parses, or this fails
    status = [r for r in records if r.get("logger") == "elastiscope.cli"]
    assert [r["event"].split()[0] for r in status] == ["metrics", "event", "run"], records
    summary = status[-1]
    assert (summary["outcome"], summary["exit_code"], summary["restarts"]) == ("SUCCEEDED", 0, 0)
    assert status[0]["url"].startswith("http://127.0.0.1:")
    # A job of one node has no other agents to wait for, and says nothing about waiting.
    assert not [r for r in records if "other agent" in r["event"] or "all agents" in r["event"]]


def test_on_a_terminal_our_lines_are_for_a_person(tmp_path):
    import pty

    script = write_script(tmp_path, "noop.py", "pass\n")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*elastiscope_cmd(), "run", "--event-log", "off", script], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal's other side closed: the command has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert proc.wait(60) == 0, output
    text = output.decode(errors="replace")
    assert re.search(r"^elastiscope: run SUCCEEDED \(exit 0\), 0 restart\(s\)", text, re.M), text
    assert not [line for line in text.splitlines() if line.startswith("{")], text


def test_no_standby_interpreters_when_no_restart_can_come(launch, tmp_path):
    """--max-restarts 0 (the default) on one node: nothing can restart, so nothing is kept warm."""
    probe = write_script(tmp_path, "probe.py", (
        "import os, sys, time\nimport psutil\n"
        "time.sleep(1.5)  # standbys would be up 0.2 s after the workers\n"
        "spawner = psutil.Process(os.getppid())\n"
        "def is_standby(p):\n"
        "    try:  # a sibling may exit between the listing and this look\n"
        "        return any('_elastiscope_standby' in a for a in p.cmdline())\n"
        "    except psutil.Error:\n"
        "        return False\n"
        "standbys = [p for p in spawner.children() if is_standby(p)]\n"
        "open(os.path.join(sys.argv[1], 'standbys.' + os.environ['RANK']), 'w').write(str(len(standbys)))\n"))
    run = launch("run", "--nproc-per-node", "2", "--metrics-port", "off", probe, str(tmp_path))
    assert run.wait() == 0, run.stderr
    assert [(tmp_path / f"standbys.{rank}").read_text() for rank in range(2)] == ["0", "0"]


def test_sigterm_stops_the_workers_and_exits_1_like_torchrun(launch, tmp_path):
    script = write_script(tmp_path, "sleeper.py", "import time\ntime.sleep(120)\n")
    run = launch("run", "--nproc-per-node", "2", "--metrics-linger", "0", script)
    base = run.wait_line(URL_LINE).group(1)
    status = poll(lambda: (lambda s: s if s["state"] == "HEALTHY" and all(
        w["pid"] for w in s["workers"]) else None)(httpx.get(base + "/status", timeout=5).json()),
        60, "workers to start")
    pids = [w["pid"] for w in status["workers"]]
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(60) == 1
    assert "stopped by SIGTERM" in run.stderr
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


# ---- the command line itself: torchrun's flags, torchrun's defaults --------------------------

TORCHRUN_ARGV = [
    "--nnodes=1:2", "--nproc_per_node=3", "--rdzv-backend=c10d", "--rdzv_endpoint=h:1",
    "--rdzv-id=job", "--rdzv_conf=timeout=5", "--standalone", "--max_restarts=2",
    "--monitor-interval=0.5", "--start_method=fork", "--event_log_handler=console",
    "--role=trainer", "-m", "--no_python", "--run-path", "--log_dir=/tmp/x", "-r", "3",
    "-t", "0:1", "--local_ranks_filter=0", "--duplicate_stdout_filters=a,,b,c",
    "--duplicate-stderr-filters=e", "--node_rank=1", "--master_addr=a", "--master_port=5",
    "--local_addr=b", "--logs_specs=x", "--numa_binding=node", "--signals_to_handle=SIGTERM",
    "--shutdown_timeout=5", "--virtual-local-rank", "script.py", "--lr", "0.1",
]


def torchrun_parser():
    from torch.distributed.run import get_args_parser

    return get_args_parser()


def test_every_torchrun_flag_has_the_same_spellings_and_default():
    from agent.cli import build_run_parser

    ours = {s: a for a in build_run_parser()._actions for s in a.option_strings}
    for action in torchrun_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        mine = ours.get(action.option_strings[0])
        assert mine is not None, f"missing {action.option_strings}"
        assert set(action.option_strings) <= set(mine.option_strings)
        assert (mine.dest, mine.default) == (action.dest, action.default), action.dest
        assert list(mine.choices or []) == list(action.choices or []), action.dest


def test_a_full_torchrun_command_line_parses_to_the_same_values():
    from agent.cli import build_run_parser

    theirs = vars(torchrun_parser().parse_args(TORCHRUN_ARGV))
    ours = vars(build_run_parser().parse_args(TORCHRUN_ARGV))
    assert {k: ours[k] for k in theirs} == theirs


def test_pet_environment_variables_set_defaults_like_torchrun(monkeypatch):
    from agent.cli import build_run_parser

    monkeypatch.setenv("PET_NPROC_PER_NODE", "3")
    monkeypatch.setenv("PET_STANDALONE", "1")
    monkeypatch.setenv("PET_MAX_RESTARTS", "4")
    theirs = vars(torchrun_parser().parse_args(["s.py"]))
    ours = vars(build_run_parser().parse_args(["s.py"]))
    assert {k: ours[k] for k in theirs} == theirs
    assert (ours["nproc_per_node"], ours["standalone"], ours["max_restarts"]) == ("3", True, 4)


def test_observability_flags_read_elastiscope_variables(monkeypatch):
    from agent.cli import build_run_parser

    monkeypatch.setenv("ELASTISCOPE_METRICS_PORT", "off")
    monkeypatch.setenv("ELASTISCOPE_TOKEN", "t0k")
    monkeypatch.setenv("ELASTISCOPE_NO_TOKEN_REQUIRED", "1")
    args = build_run_parser().parse_args(["s.py"])
    assert (args.metrics_port, args.token, args.no_token_required) == (None, "t0k", True)
    assert (args.metrics_host, args.metrics_linger) == ("127.0.0.1", 5.0)
