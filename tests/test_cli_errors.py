"""Bad input to ``elastiscope run``: one line on stderr naming the problem, exit 2, no traceback,
nothing left running. Each case runs the real command in a subprocess."""

import os
import socket
import subprocess
import sys
import uuid

import psutil
import pytest

pytestmark = pytest.mark.timeout(60)

NOOP = "import sys; sys.exit(0)\n"


@pytest.fixture
def script(tmp_path):
    path = tmp_path / f"noop_{uuid.uuid4().hex[:8]}.py"
    path.write_text(NOOP)
    return str(path)


def elastiscope(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def processes_mentioning(marker):
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def assert_usage_error(result, *phrases, marker=None):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("elastiscope run: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    if marker is not None:
        assert processes_mentioning(marker) == []


def test_missing_script(tmp_path):
    missing = str(tmp_path / "no_such_script.py")
    assert_usage_error(elastiscope("run", missing, cwd=tmp_path), "not found", missing)


def test_no_script_at_all(tmp_path):
    assert_usage_error(elastiscope("run", cwd=tmp_path), "training_script")


def test_nproc_per_node_zero(tmp_path, script):
    result = elastiscope("run", "--nproc-per-node", "0", script, cwd=tmp_path)
    assert_usage_error(result, "--nproc-per-node", "at least 1", marker=script)


def test_nproc_per_node_not_a_number(tmp_path, script):
    result = elastiscope("run", "--nproc-per-node", "x", script, cwd=tmp_path)
    assert_usage_error(result, "--nproc-per-node", "'x'", marker=script)


def test_nproc_per_node_from_a_bad_environment_variable(tmp_path, script):
    result = elastiscope("run", script, cwd=tmp_path, env={"PET_NPROC_PER_NODE": "-3"})
    assert_usage_error(result, "--nproc-per-node", marker=script)


@pytest.mark.parametrize("endpoint", ["localhost:notaport", "localhost:99999", "a:b:c", ""])
def test_malformed_rendezvous_endpoint(tmp_path, script, endpoint):
    if not endpoint:  # static rendezvous on two nodes with an endpoint that has no port
        args = ["--nnodes", "2", "--rdzv-endpoint", "[::1"]
    else:
        args = ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
    result = elastiscope("run", *args, script, cwd=tmp_path)
    assert_usage_error(result, "--rdzv-endpoint", marker=script)


def test_metrics_port_in_use(tmp_path, script):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = elastiscope("run", "--metrics-port", str(port), script, cwd=tmp_path)
    finally:
        holder.close()
    assert_usage_error(result, f"metrics port {port}", "already in use", marker=script)
    assert not (tmp_path / "runs").exists()  # failed before anything was written


def test_metrics_port_not_a_number(tmp_path, script):
    result = elastiscope("run", "--metrics-port", "eighty", script, cwd=tmp_path)
    assert_usage_error(result, "--metrics-port", marker=script)


def test_event_log_directory_that_cannot_exist(tmp_path, script):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = elastiscope("run", "--event-log", str(blocker / "logs" / "run.jsonl"), script,
                         cwd=tmp_path)
    assert_usage_error(result, "--event-log: ", "not a directory", marker=script)


def test_event_log_directory_that_is_not_writable(tmp_path, script):
    # /proc refuses new files even to root, which os.access-based checks would let through.
    result = elastiscope("run", "--event-log", "/proc/elastiscope-test/run.jsonl", script,
                         cwd=tmp_path)
    assert_usage_error(result, "event log /proc/elastiscope-test/run.jsonl", marker=script)
    assert "ELASTISCOPE_EVENT_LOG" not in result.stderr


def test_a_bad_event_log_is_named_by_where_it_came_from(tmp_path, script):
    """The flag when it was given as a flag, the variable when it came from the variable."""
    bad = "/etc/passwd/x.jsonl"  # a file standing where a directory would have to be
    flag = elastiscope("run", "--event-log", bad, script, cwd=tmp_path)
    assert_usage_error(flag, "--event-log: /etc/passwd is not a directory", marker=script)
    assert "ELASTISCOPE_EVENT_LOG" not in flag.stderr
    variable = elastiscope("run", script, cwd=tmp_path, env={"ELASTISCOPE_EVENT_LOG": bad})
    assert_usage_error(variable, "ELASTISCOPE_EVENT_LOG: /etc/passwd is not a directory",
                       marker=script)


def test_unknown_flag(tmp_path, script):
    result = elastiscope("run", "--no-such-flag", script, cwd=tmp_path)
    assert_usage_error(result, "--no-such-flag", marker=script)
    assert "did you mean" not in result.stderr  # nothing is close: no guess


@pytest.mark.parametrize("typo,meant", [
    ("--nprocs-per-node=2", "--nproc-per-node"), ("--metric-port=0", "--metrics-port"),
    ("--nproc_per_nodes=2", "--nproc_per_node"), ("--no-warm-standbys", "--no-warm-standby"),
])
def test_a_misspelt_flag_gets_a_did_you_mean(tmp_path, script, typo, meant):
    result = elastiscope("run", typo, script, cwd=tmp_path)
    assert_usage_error(result, f"unrecognized arguments: {typo}", f"did you mean {meant}?",
                       marker=script)


def test_non_loopback_metrics_host_without_token(tmp_path, script):
    result = elastiscope("run", "--metrics-host", "0.0.0.0", script, cwd=tmp_path)
    assert_usage_error(result, "--token", "--no-token-required", marker=script)


@pytest.mark.parametrize("args, phrase", [
    (["--nnodes", "3:1"], "--nnodes"),
    (["--nnodes", "two"], "--nnodes"),
    (["--max-restarts", "-1"], "--max-restarts"),
    (["--rdzv-conf", "timeout"], "--rdzv-conf"),
    (["--start-method", "teleport"], "--start-method"),
    (["--local-ranks-filter", "0,a"], "--local-ranks-filter"),
])
def test_other_bad_torchrun_values(tmp_path, script, args, phrase):
    assert_usage_error(elastiscope("run", *args, script, cwd=tmp_path), phrase, marker=script)


def test_unknown_command(tmp_path):
    result = elastiscope("launch", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "elastiscope: error: unknown command 'launch' (expected one of: run, events, stacks)"
    ]


def test_events_on_a_missing_log(tmp_path):
    result = elastiscope("events", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"elastiscope events: error: event log not found: {tmp_path / 'nope.jsonl'}"


def test_static_rendezvous_endpoint_without_port(tmp_path, script):
    result = elastiscope("run", "--nnodes", "2", "--rdzv-endpoint", "myhost", script, cwd=tmp_path)
    assert_usage_error(result, "needs a port", marker=script)
    assert not (tmp_path / "runs").exists()


def test_unknown_rendezvous_backend(tmp_path, script):
    result = elastiscope("run", "--rdzv-backend", "nosuch", "--rdzv-endpoint", "localhost:1",
                         script, cwd=tmp_path)
    assert_usage_error(result, "rendezvous", "nosuch", marker=script)
    assert not (tmp_path / "runs").exists()
