"""The README's commands do what it says they do.

Every command block of README.md runs, in order, from a fresh ``git clone`` of this repository
(what a new user has), with the installed package, as a user would type it; each is checked
against what the README says it shows. The install line is left out (``scripts/test`` has just
done it) and so is ``bash scripts/test`` (it is what runs this). A command added to the README
without a check here fails the test, and so does a flag or a route missing from its tables.

Takes about 40 s on a quiet 2-core machine: the two training runs are most of it.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(400)

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

INSTALL = "bash scripts/install && "
NOT_RUN_HERE = {"bash scripts/test"}
MAIN_JOB = "elastiscope run --nproc-per-node 2 examples/train_ddp.py"
RESTART_DEMO = ("elastiscope run --nproc-per-node 2 --max-restarts 1 examples/train_ddp.py "
                "--crash-once-rank 1")
NEWEST_TIMELINE = "elastiscope events runs/"


def fenced_blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)


def readme_commands():
    """Each shell command of the README, as a user would run it after installing."""
    commands = []
    for block in fenced_blocks("bash"):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command.startswith(INSTALL):
                command = command[len(INSTALL):]
            if command and command not in NOT_RUN_HERE:
                commands.append(command)
    return commands


def user_env():
    # A new user's shell: none of our settings, and not this checkout on the import path.
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ELASTISCOPE_", "PET_")) and k != "PYTHONPATH"}


def shell(command, cwd, timeout=180):
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=user_env(), capture_output=True,
                          text=True, timeout=timeout)


def status_lines(stderr):
    """Our status lines: stderr is a pipe here, so every line of ours is a JSON object."""
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("logger") == "elastiscope.cli"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    target = tmp_path_factory.mktemp("readme") / "elastiscope"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True, timeout=120)
    return target


def check_main_job(result, clone):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train_ddp: done: 300 steps" in result.stdout, result.stdout[-2000:]
    status = status_lines(result.stderr)
    (endpoint,) = [s for s in status if "url" in s]
    assert endpoint["event"].startswith(f"metrics {endpoint['url']}/metrics"), endpoint
    summary = status[-1]
    assert re.match(r"run SUCCEEDED \(exit 0\), 0 restart\(s\), goodput \d+\.\d %; timeline: "
                    r"elastiscope events runs/", summary["event"]), summary
    assert 0 < summary["goodput_ratio"] < 1, summary
    # "elastiscope events <that path> prints the run's timeline"
    timeline = shell(f"elastiscope events {summary['event_log']}", clone)
    assert timeline.returncode == 0, timeline.stderr
    assert "outcome: SUCCEEDED" in timeline.stdout and "restarts: 0" in timeline.stdout, \
        timeline.stdout


def check_restart_demo(result, clone):
    assert result.returncode == 0, result.stderr[-3000:]
    summary = status_lines(result.stderr)[-1]
    assert summary["event"].startswith("run SUCCEEDED (exit 0), 1 restart(s)"), summary
    assert (summary["restarts"], summary["exit_code"]) == (1, 0)
    assert "resuming at step 40" in result.stdout, result.stdout[-2000:]


def check_newest_timeline(result, clone):
    """The timeline of the restart demo (the newest run): one failure, one restart."""
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "FAILED rank 1 (local 1), exit code 1: RuntimeError: injected crash on rank 1 at " \
           "step 50" in out, out
    assert re.search(r"restart #1 \(failure of rank\(s\) 1\); 0 left, workers running again "
                     r"after \d+ ms", out), out
    assert "restarts: 1 (failure: 1)" in out and "failures: 1\n" in out, out
    assert "outcome: SUCCEEDED" in out, out


CHECKS = {MAIN_JOB: check_main_job, RESTART_DEMO: check_restart_demo,
          NEWEST_TIMELINE: check_newest_timeline}


def test_every_command_block_does_what_the_readme_says(clone):
    commands = readme_commands()
    assert commands == [MAIN_JOB, RESTART_DEMO, NEWEST_TIMELINE], \
        "a README command without a check here (or one gone): add it to CHECKS"
    for command in commands:
        CHECKS[command](shell(command, clone), clone)


def test_the_library_snippet_runs(clone):
    (snippet,) = fenced_blocks("python")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=clone, env=user_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_flag_table_lists_every_flag_of_ours():
    from agent.cli import build_run_parser

    (group,) = [g for g in build_run_parser()._action_groups if "elastiscope" in (g.title or "")]
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\| `(--[a-z-]+)[^`]*` \| `(ELASTISCOPE_[A-Z_]+)` \|", README, re.M)}
    for action in group._group_actions:
        flag = action.option_strings[0]
        assert flag in rows, f"{flag} missing from the README's flag table"
        assert rows[flag] == f"ELASTISCOPE_{action.dest.upper()}", flag


def test_the_endpoint_list_names_every_route():
    from telemetry.endpoint import create_app

    app = create_app(lambda: {}, None)
    routes = {r.path for r in app.routes if not r.path.startswith(("/openapi", "/docs", "/redoc"))}
    assert routes, "no routes found"
    for path in routes:
        assert f"`{path}`" in README, f"{path} missing from the README's endpoint list"


def test_every_link_resolves_inside_a_clone(clone):
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (clone / target).resolve()
        assert resolved.is_relative_to(clone) and resolved.exists(), f"broken link: {target}"
