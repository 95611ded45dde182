"""End to end against a real Prometheus: a real `elastiscope run` of the crash-once example is
scraped every second, and everything the dashboards and rules ask of Prometheus is asked for real.

One module-scoped stack (Prometheus + Pushgateway on ephemeral 127.0.0.1 ports, temp storage)
serves every test; the crash-once run and a job too short to be scraped each run once.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import prom_harness as ph

pytestmark = pytest.mark.prometheus

TRAIN_DDP = ph.ROOT / "examples" / "train_ddp.py"
SCRAPE_JOB = "elastiscope"
PUSHGATEWAY_JOB = "pushgateway"
RUN_TIMEOUT = 90.0
# The agent keeps serving /metrics after the run until the next scrape (at most this long),
# so Prometheus sees the final state.
LINGER_SECONDS = 3


def require_stack() -> None:
    if importlib.util.find_spec("agent.cli") is None:
        pytest.skip("agent.cli (elastiscope run) is not built yet")
    for binary in ("prometheus", "prometheus-pushgateway", "promtool"):
        ph.require_binary(binary)


def elastiscope_command() -> list[str]:
    """`elastiscope` as installed (scripts/install), or the same entry point through this Python."""
    script = shutil.which("elastiscope")
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())"]


@dataclass
class Run:
    """A finished `elastiscope run`: its exit code, output and wall-clock window."""

    returncode: int
    output: str
    started: float
    ended: float
    instance: str | None = None

    def explain(self) -> str:
        return f"exit {self.returncode}; output tail:\n" + "\n".join(self.output.splitlines()[-40:])


def run_elastiscope(args: list[str], workdir: Path) -> Run:
    """Run `elastiscope run <args>` to the end; on timeout its whole process group is killed."""
    started = time.time()
    process = subprocess.Popen(
        [*elastiscope_command(), "run", *args],
        cwd=workdir,
        env=ph.child_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=10)
        raise AssertionError(f"elastiscope run did not finish in {RUN_TIMEOUT:.0f}s:\n{output[-4000:]}")
    return Run(process.returncode, output, started, time.time())


@dataclass
class Stack:
    prometheus: ph.Prometheus
    pushgateway: ph.Pushgateway
    metrics_port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    require_stack()
    workdir = tmp_path_factory.mktemp("prometheus-stack")
    metrics_port = ph.free_port()
    with ph.Pushgateway(workdir / "pushgateway") as pushgateway:
        prometheus = ph.Prometheus(
            workdir / "prometheus",
            targets={SCRAPE_JOB: [f"127.0.0.1:{metrics_port}"], PUSHGATEWAY_JOB: [pushgateway.target]},
            rule_files=[ph.RULES_FILE],
            honor_labels=frozenset({PUSHGATEWAY_JOB}),
        )
        with prometheus:
            yield Stack(prometheus, pushgateway, metrics_port)


@pytest.fixture(scope="module")
def crash_once(stack, tmp_path_factory) -> Run:
    """Two workers, rank 1 raises once at step 5; the agent restarts the group and it finishes.

    Steps take 0.4 s, so the crash comes 2 s into training, as in a real job that fails after it
    started: Prometheus (1 s interval) has scraped the run's zero-valued series by then. A
    failure before a run's first scrape is invisible to increase() and rate(), by design of
    counters; docs/reference.md says so."""
    workdir = tmp_path_factory.mktemp("crash-once")
    run = run_elastiscope(
        [
            "--standalone", "--nproc-per-node", "2", "--max-restarts", "2",
            "--metrics-port", str(stack.metrics_port), "--metrics-linger", str(LINGER_SECONDS),
            str(TRAIN_DDP), "--steps", "12", "--log-every", "4", "--samples", "512",
            "--step-delay", "0.4",
            "--checkpoint-dir", str(workdir / "checkpoints"), "--checkpoint-every", "2",
            "--crash-once-rank", "1", "--crash-at-step", "5",
        ],
        workdir,
    )
    assert run.returncode == 0, run.explain()
    run.instance = f"127.0.0.1:{stack.metrics_port}"
    # The last scrape lands within one interval of the agent's exit; wait until the final
    # outcome is in the TSDB rather than guessing how long that takes.
    ph.wait_until(
        lambda: stack.prometheus.query(
            f'last_over_time(elastiscope_runs_total{{instance="{run.instance}"}}[5m])'),
        timeout=15, what="the run's final metrics in Prometheus",
    )
    return run


def over_run(function: str, selector: str, run: Run) -> str:
    """``function(selector[window])`` with a window reaching back past the start of ``run``."""
    window = int(time.time() - run.started) + 10
    return f"{function}({selector}[{window}s])"


def filled_only_by_scripts_that_report() -> set[str]:
    """Series only scripts calling elastiscope.progress fill (checkpoints, named values): the
    crash-once example has no Elastiscope calls (examples/train_explicit.py does)."""
    from telemetry.prometheus.catalogue import CATALOGUE

    return {s.name for s in CATALOGUE if "elastiscope.progress" in (s.when or "")}


# -- the crash-once run as Prometheus saw it ----------------------------------------------------


def test_prometheus_scraped_the_agent_during_the_run(stack, crash_once):
    scrapes = stack.prometheus.query(
        over_run("count_over_time", f'up{{instance="{crash_once.instance}"}}', crash_once))
    assert scrapes and float(scrapes[0]["value"][1]) >= 3


def test_run_identity_reaches_prometheus_on_the_info_series(stack, crash_once):
    info = stack.prometheus.query(over_run(
        "last_over_time", f'elastiscope_agent_info{{instance="{crash_once.instance}"}}', crash_once))
    assert len(info) == 1
    labels = info[0]["metric"]
    assert labels["job"] == SCRAPE_JOB and labels["run_id"] and labels["role"]


def test_prometheus_counts_exactly_one_restart_for_the_run(stack, crash_once):
    restarts = stack.prometheus.query(over_run(
        "max_over_time", f'elastiscope_restarts_total{{instance="{crash_once.instance}"}}', crash_once))
    by_reason = {r["metric"]["reason"]: float(r["value"][1]) for r in restarts}
    assert sum(by_reason.values()) == 1, by_reason
    assert by_reason.get("failure") == 1, by_reason


def test_the_crashing_rank_shows_up_as_one_worker_failure(stack, crash_once):
    failures = stack.prometheus.query(over_run(
        "max_over_time", f'elastiscope_worker_failures_total{{instance="{crash_once.instance}"}}',
        crash_once))
    assert [(f["metric"]["local_rank"], float(f["value"][1])) for f in failures] == [("1", 1.0)]


def test_final_succeeded_state_is_scraped_before_the_agent_exits(stack, crash_once):
    state = stack.prometheus.query(over_run(
        "last_over_time",
        f'elastiscope_worker_group_state{{instance="{crash_once.instance}", state="SUCCEEDED"}}',
        crash_once))
    assert [float(s["value"][1]) for s in state] == [1.0]


def test_run_exports_every_series_the_catalogue_promises_for_it(stack, crash_once):
    catalogue = pytest.importorskip("telemetry.prometheus.catalogue")
    exported = stack.prometheus.series_names()
    # A local-agent run with a worker failure and a restart meets every condition but one.
    expected = {s.name + ("_bucket" if s.type == "histogram" else "") for s in catalogue.CATALOGUE
                if s.name not in filled_only_by_scripts_that_report()}
    assert expected - exported == set()


# -- dashboards and rules against the run -------------------------------------------------------


def test_every_dashboard_and_rule_query_evaluates_without_error(stack, crash_once):
    errors = []
    end = time.time()
    for where, expr in ph.all_queries():
        try:
            stack.prometheus.query(expr)
            stack.prometheus.query_range(expr, start=crash_once.started, end=end, step=1)
        except ph.PromQLError as error:
            errors.append(f"{where}: {error}")
    assert not errors, "\n".join(errors)


def test_every_panel_shows_the_run(stack, crash_once):
    # A failure, a restart and a success touch every panel; one that stays blank (no finite
    # value at any step) would show users nothing either.
    blank = []
    for file_name, dashboard in ph.load_dashboards().items():
        for where, expr in ph.panel_queries(dashboard):
            if ph.metric_names(ph.promql_from_grafana(expr)) <= filled_only_by_scripts_that_report():
                continue
            series = stack.prometheus.query_range(
                ph.promql_from_grafana(expr), start=crash_once.started, end=time.time(), step=1)
            if not any(math.isfinite(float(value)) for s in series for _, value in s["values"]):
                blank.append(f"{file_name}: {where}")
    assert not blank, "\n".join(blank)


def test_queries_name_only_series_the_run_exported(stack, crash_once):
    # What Prometheus holds after the run: the agent's scrapes, the pushgateway's and the rules'
    # own outputs (a recording rule that has produced nothing yet still counts as exported).
    exported = (stack.prometheus.series_names() | ph.recorded_names(ph.load_rules())
                | ph.PROMETHEUS_SYNTHETIC_SERIES | filled_only_by_scripts_that_report())
    unknown = {where: sorted(ph.metric_names(expr) - exported)
               for where, expr in ph.all_queries() if ph.metric_names(expr) - exported}
    assert not unknown


def test_catalogue_and_run_agree_on_series_names(stack, crash_once):
    # The static checks compare queries with the catalogue; this keeps the catalogue honest.
    scraped = {name for name in stack.prometheus.series_names() if name.startswith("elastiscope_")}
    assert scraped <= ph.catalogue_sample_names()


def test_every_rule_evaluates_healthy_on_live_data(stack, crash_once):
    rules = stack.prometheus.wait_for_rule_evaluation(after=time.time())
    assert len(rules) == len(ph.load_rules())
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy


def test_restart_recording_rule_counts_the_single_restart(stack, crash_once):
    # The rule is a plain increase() over the counter the agent created at 0 at run start; its
    # 10-minute window still holds the whole run. increase() extrapolates half a scrape
    # interval past the last sample, so the single restart reads as 1 and a few hundredths
    # (without the zero it would read 0).
    stack.prometheus.wait_for_rule_evaluation(after=time.time())
    value = stack.prometheus.query(
        f'instance_role:elastiscope_restarts:increase10m{{instance="{crash_once.instance}"}}')
    assert len(value) == 1
    assert 1.0 <= float(value[0]["value"][1]) < 1.5, value


def test_restart_counter_is_scraped_at_zero_before_the_restart(stack, crash_once):
    lowest = stack.prometheus.query(over_run(
        "min_over_time", f'elastiscope_restarts_total{{instance="{crash_once.instance}"}}', crash_once))
    assert {r["metric"]["reason"]: float(r["value"][1]) for r in lowest} == {"failure": 0.0, "membership": 0.0}


def test_increase_over_the_run_sees_exactly_one_restart(stack, crash_once):
    # What a user's own increase() query sees, with no workaround: one failure restart (the
    # extrapolation past the last sample adds less than half a restart), no membership one.
    increase = stack.prometheus.query(over_run(
        "increase", f'elastiscope_restarts_total{{instance="{crash_once.instance}"}}', crash_once))
    by_reason = {r["metric"]["reason"]: float(r["value"][1]) for r in increase}
    assert set(by_reason) == {"failure", "membership"}
    assert round(by_reason["failure"]) == 1 and by_reason["failure"] >= 1.0, by_reason
    assert by_reason["membership"] == 0.0, by_reason


def test_histograms_show_their_first_observation_to_rate(stack, crash_once):
    # The duration panels' rate() sees the single failure detection and the single restart.
    for histogram in ("elastiscope_failure_detection_seconds", "elastiscope_restart_duration_seconds"):
        seen = stack.prometheus.query(over_run(
            "increase", f'{histogram}_count{{instance="{crash_once.instance}"}}', crash_once))
        total = sum(float(r["value"][1]) for r in seen)
        assert round(total) == 1 and total >= 1.0, (histogram, seen)


def test_restart_annotation_marks_the_single_restart(stack, crash_once):
    (dashboard,) = ph.load_dashboards().values()
    (expr,) = [e for where, e in ph.annotation_queries(dashboard) if where == "annotation Restarts"]
    series = stack.prometheus.query_range(
        ph.promql_from_grafana(expr), start=crash_once.started, end=time.time(), step=1)
    assert [s["metric"]["reason"] for s in series] == ["failure"], series


# -- a job too short for any scrape -------------------------------------------------------------


@pytest.fixture(scope="module")
def short_failed_run(stack, tmp_path_factory) -> Run:
    """A one-worker job whose worker exits 3 at once, without restarts and never scraped: only
    the pushgateway hears of it."""
    workdir = tmp_path_factory.mktemp("short-job")
    script = workdir / "fail_fast.py"
    script.write_text("import sys\nsys.exit(3)\n")
    run = run_elastiscope(
        ["--standalone", "--nproc-per-node", "1", "--max-restarts", "0",
         "--pushgateway", stack.pushgateway.url, str(script)],
        workdir,
    )
    assert run.returncode != 0, run.explain()
    assert "Traceback" not in run.output, run.explain()
    return run


def pushed_series(stack, selector: str) -> list[dict]:
    """Series Prometheus scraped from the pushgateway (not from any agent) matching ``selector``."""
    return stack.prometheus.query(
        f'{selector} and on (job, instance) ({{__name__=~"elastiscope_.+"}} '
        f'unless on (job, instance) up{{job="{SCRAPE_JOB}"}})'
    )


def test_short_job_leaves_its_final_metrics_in_the_pushgateway(stack, short_failed_run):
    groups = stack.pushgateway.metric_families()
    pushed = [group for group in groups if group["labels"].get("job") == "elastiscope"]
    assert len(pushed) == 1, groups
    assert {"elastiscope_runs_total", "elastiscope_worker_group_state"} <= set(pushed[0])


def test_prometheus_sees_the_short_job_through_the_pushgateway(stack, short_failed_run):
    failed_runs = ph.wait_until(
        lambda: pushed_series(stack, 'elastiscope_runs_total{job="elastiscope", outcome="failed"} > 0'),
        timeout=15, what="the pushed run in Prometheus",
    )
    assert len(failed_runs) == 1
    assert failed_runs[0]["metric"]["instance"] != f"127.0.0.1:{stack.metrics_port}"


def test_job_failed_alert_fires_for_the_short_job(stack, short_failed_run):
    firing = ph.wait_until(
        lambda: stack.prometheus.query('ALERTS{alertname="ElastiscopeJobFailed", alertstate="firing"}'),
        timeout=15, what="ElastiscopeJobFailed firing",
    )
    assert [alert["metric"]["job"] for alert in firing] == ["elastiscope"]


def test_no_alert_fires_for_the_run_that_recovered(stack, crash_once):
    # One restart out of two, then success: worth a dashboard, not a page.
    stack.prometheus.wait_for_rule_evaluation(after=time.time())
    alerts = stack.prometheus.query(f'ALERTS{{instance="{crash_once.instance}"}}')
    assert alerts == []
