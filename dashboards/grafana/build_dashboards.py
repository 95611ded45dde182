"""Writes the Elastiscope Grafana dashboard(s) into dashboards/grafana/dashboards/.

The JSON is generated so that panel ids, grid positions, datasource references and label
filters stay consistent; edit this file and run it (`python dashboards/grafana/build_dashboards.py`),
then commit both. tests/test_dashboards.py fails when the committed JSON and this file disagree.

Every query filters on the dashboard variables job, instance and role. run_id lives only on
``elastiscope_agent_info`` (Prometheus convention: identity on an info series), so the run
variable narrows the instances rather than filtering series itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

# Grafana 10.3 - 11.2 write dashboards at schema version 39; the compose stack pins 11.2.
SCHEMA_VERSION = 39
DATASOURCE_UID = "elastiscope-prometheus"  # provisioning/datasources/elastiscope.yml
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

AGENT = 'job=~"$job", instance=~"$instance", role=~"$role"'
TELEMETRY = 'job=~"$job", instance=~"$instance"'  # telemetry's own series carry no role

STATE_CODES = ("UNKNOWN", "INIT", "HEALTHY", "UNHEALTHY", "STOPPED", "SUCCEEDED", "FAILED")
STATE_COLORS = ("text", "blue", "green", "orange", "yellow", "dark-green", "red")


# -- queries --------------------------------------------------------------------------------

def target(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False) -> dict:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
        "refId": ref,
    }


def table_target(expr: str) -> dict:
    """An instant query whose labels become table columns."""
    return {**target(expr, "", instant=True), "format": "table"}


def targets(*specs: tuple[str, str], instant: bool = False) -> list[dict]:
    """(expr, legend) pairs as targets A, B, C..."""
    return [target(expr, legend, chr(ord("A") + i), instant) for i, (expr, legend) in enumerate(specs)]


def quantiles(histogram: str, by: str, window: str = "$__rate_interval") -> list[dict]:
    """p50/p90/p99 of a histogram's observations within ``window``, one line per ``by`` group.

    The agent creates these histograms at 0 when a run starts (docs/reference.md, *Starts at
    0*), so rate() sees even the first observation: a single restart or failure shows.
    """
    buckets = f"rate({histogram}_bucket{{{AGENT}}}[{window}])"
    label = " ".join(f"{{{{{name.strip()}}}}}" for name in by.split(","))
    return targets(*[
        (f"histogram_quantile({q}, sum by (le, {by}) ({buckets}))", f"p{int(float(q) * 100)} {label}")
        for q in ("0.5", "0.9", "0.99")
    ])


def state_code_expr() -> str:
    """One series per agent whose value is the index of its worker group state in STATE_CODES.

    The state gauge is 1 for the current state and 0 for the others, so weighting each state's
    series by its index and summing leaves exactly the current state's index.
    """
    terms = [
        f'{code} * elastiscope_worker_group_state{{{AGENT}, state="{state}"}}'
        for code, state in enumerate(STATE_CODES)
    ]
    return "sum by (instance, role) (\n  " + "\n  or ".join(terms) + "\n)"


# -- panels ---------------------------------------------------------------------------------

def panel(kind: str, title: str, description: str, panel_targets: list[dict], *,
          unit: str | None = None, options: dict | None = None, defaults: dict | None = None) -> dict:
    field_defaults = dict(defaults or {})
    if unit:
        field_defaults["unit"] = unit
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": field_defaults, "overrides": []},
        "options": options or {},
        "targets": panel_targets,
    }


def timeseries(title: str, description: str, panel_targets: list[dict], unit: str = "short",
               steps: bool = False, min_zero: bool = True) -> dict:
    custom = {"drawStyle": "line", "lineInterpolation": "stepAfter" if steps else "linear",
              "fillOpacity": 10, "lineWidth": 1, "showPoints": "never", "spanNulls": False}
    defaults = {"custom": custom}
    if min_zero:
        defaults["min"] = 0
    return panel("timeseries", title, description, panel_targets, unit=unit, defaults=defaults,
                 options={"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}})


def stat(title: str, description: str, panel_targets: list[dict], unit: str = "short",
         thresholds: list[tuple[float | None, str]] = ((None, "green"),)) -> dict:
    return panel("stat", title, description, panel_targets, unit=unit,
                 defaults={"thresholds": _thresholds(thresholds), "color": {"mode": "thresholds"}},
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "none", "textMode": "value_and_name",
                          "justifyMode": "auto", "orientation": "auto"})


def _thresholds(steps: list[tuple[float | None, str]]) -> dict:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


# -- the dashboard --------------------------------------------------------------------------

def overview_rows() -> list[tuple[dict, list[tuple[dict, int, int]]]]:
    """(row, [(panel, width, height)]) in display order; positions are assigned by ``layout``."""
    job = (row("Job overview"), [
        (panel("state-timeline", "Worker group state",
               "State of each agent's worker group over time (UNKNOWN, INIT, HEALTHY, UNHEALTHY, "
               "STOPPED while restarting, SUCCEEDED, FAILED).",
               targets((state_code_expr(), "{{instance}} {{role}}")),
               defaults={"mappings": [{"type": "value", "options": {
                   str(code): {"text": state, "color": STATE_COLORS[code], "index": code}
                   for code, state in enumerate(STATE_CODES)}}],
                   "color": {"mode": "thresholds"}, "thresholds": _thresholds([(None, "text")])},
               options={"showValue": "auto", "mergeValues": True, "rowHeight": 0.8,
                        "legend": {"showLegend": False}}), 24, 6),
        (stat("Restarts (latest run)", "Restarts of the worker group in each role's latest run, by reason.",
              targets((f"max by (role, reason) (elastiscope_restarts_total{{{AGENT}}})", "{{role}} {{reason}}")),
              thresholds=[(None, "green"), (1, "yellow"), (3, "red")]), 6, 5),
        (stat("Remaining restarts", "Restarts still available for failures, and the budget the run started with.",
              targets((f"min by (role) (elastiscope_remaining_restarts{{{AGENT}}})", "{{role}} left"),
                      (f"max by (role) (elastiscope_max_restarts{{{AGENT}}})", "{{role}} max"))), 6, 5),
        (panel("gauge", "Flakiness",
               "Share of the restart budget the last run used (torchelastic's flakiness): 0 needed no "
               "restart, 100 failed.",
               targets((f"max by (role) (elastiscope_flakiness_percent{{{AGENT}}})", "{{role}}")),
               unit="percent",
               defaults={"min": 0, "max": 100,
                         "thresholds": _thresholds([(None, "green"), (25, "yellow"), (50, "red")])},
               options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "showThresholdMarkers": True}), 6, 5),
        (stat("World size", "Workers in the job (all nodes) and agents (nodes) after the last rendezvous.",
              targets((f"max by (role) (elastiscope_world_size{{{AGENT}}})", "{{role}} workers"),
                      (f"max by (role) (elastiscope_group_world_size{{{AGENT}}})", "{{role}} nodes"))), 6, 5),
        (timeseries("World size over time", "Workers and nodes after each rendezvous; steps show "
                    "membership changes.",
                    targets((f"max by (role) (elastiscope_world_size{{{AGENT}}})", "{{role}} workers"),
                            (f"max by (role) (elastiscope_group_world_size{{{AGENT}}})", "{{role}} nodes"))),
         12, 7),
        # The running count per run (0 from the run's start) steps up exactly when restarts happen.
        (timeseries("Restarts", "Restarts so far in each agent's run, by reason; each step is a restart.",
                    targets((f"max by (instance, role, reason) (elastiscope_restarts_total{{{AGENT}}})",
                             "{{instance}} {{role}} {{reason}}")), steps=True), 12, 7),
        (panel("bargauge", "Runs by outcome",
               "Finished runs in the selected range, by outcome and whether restarts were spent.",
               targets((f"sum by (role, outcome, retried) "
                        f"(max_over_time(elastiscope_runs_total{{{AGENT}}}[$__range]))",
                        "{{role}} {{outcome}} (retried={{retried}})"), instant=True),
               defaults={"thresholds": _thresholds([(None, "blue")]), "min": 0},
               options={"displayMode": "basic", "orientation": "horizontal",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}), 8, 7),
        (panel("table", "Agents",
               "One row per agent seen in the range: its run id, host, rendezvous backend and version.",
               [table_target(f"max by (instance, role, run_id, hostname, rdzv_backend, version) "
                             f"(last_over_time(elastiscope_agent_info{{{AGENT}}}[$__range]))")],
               options={"showHeader": True, "cellHeight": "sm"}), 10, 7),
        (stat("Group rank", "Each agent's rank among the nodes after the last rendezvous.",
              targets((f"max by (instance, role) (elastiscope_group_rank{{{AGENT}}})", "{{instance}} {{role}}")),
              thresholds=[(None, "blue")]), 6, 7),
    ])

    failures = (row("Failures"), [
        (timeseries("Worker failures by local rank",
                    "Worker process failures so far in each agent's run, by local rank; each step is a failure.",
                    targets((f"sum by (instance, role, local_rank) (elastiscope_worker_failures_total{{{AGENT}}})",
                             "{{instance}} {{role}} rank {{local_rank}}")), steps=True), 12, 8),
        (panel("table", "Failures by exit code and signal",
               "Worker failures in the latest run of each agent: exit code for a normal exit, signal "
               "name for a killed worker (the other column is empty).",
               [table_target(f"sum by (instance, role, local_rank, exit_code, signal) "
                             f"(max_over_time(elastiscope_worker_failures_total{{{AGENT}}}[$__range]))")],
               options={"showHeader": True, "cellHeight": "sm",
                        "sortBy": [{"displayName": "Value", "desc": True}]}), 6, 8),
        (panel("piechart", "Restart reasons",
               "Why the worker group restarted in the range: a worker failure, or nodes joining or "
               "leaving (membership).",
               targets((f"sum by (reason) (max_over_time(elastiscope_restarts_total{{{AGENT}}}[$__range]))",
                        "{{reason}}"), instant=True),
               options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "pieType": "donut", "legend": {"displayMode": "table", "placement": "right",
                                                       "showLegend": True, "values": ["value"]}}), 6, 8),
        (timeseries("Failure detection latency", "Time from a worker's exit to the agent acting on it.",
                    quantiles("elastiscope_failure_detection_seconds", "role"), unit="s"), 24, 7),
    ])

    durations = (row("Rendezvous and restarts"), [
        (timeseries("Rendezvous duration", "Time each rendezvous round took (waiting for peers included).",
                    quantiles("elastiscope_rendezvous_duration_seconds", "role"), unit="s"), 12, 8),
        (timeseries("Restart duration", "From the decision to restart until the worker group is HEALTHY again.",
                    quantiles("elastiscope_restart_duration_seconds", "role, reason"), unit="s"), 12, 8),
        (timeseries("Rank assignment duration", "Time spent assigning ranks after a rendezvous.",
                    quantiles("elastiscope_rank_assignment_duration_seconds", "role"), unit="s"), 8, 8),
        (timeseries("Worker start duration", "Time to start the worker processes.",
                    quantiles("elastiscope_worker_start_duration_seconds", "role"), unit="s"), 8, 8),
        (timeseries("Worker stop duration", "Time to stop the worker processes (before a restart, at the end).",
                    quantiles("elastiscope_worker_stop_duration_seconds", "role"), unit="s"), 8, 8),
        (panel("bargauge", "p90 per step (latest run)",
               "90th percentile of each step in the latest run of the selected agents (cumulative "
               "histograms, so a single rendezvous or restart counts too).",
               targets(*[(f"histogram_quantile(0.9, sum by (le) "
                          f"(max_over_time({name}_bucket{{{AGENT}}}[$__range])))", label)
                         for name, label in (
                             ("elastiscope_rendezvous_duration_seconds", "rendezvous"),
                             ("elastiscope_rank_assignment_duration_seconds", "rank assignment"),
                             ("elastiscope_worker_start_duration_seconds", "worker start"),
                             ("elastiscope_worker_stop_duration_seconds", "worker stop"),
                             ("elastiscope_restart_duration_seconds", "restart"),
                             ("elastiscope_failure_detection_seconds", "failure detection"))],
                       instant=True),
               unit="s",
               defaults={"thresholds": _thresholds([(None, "blue")]), "min": 0},
               options={"displayMode": "gradient", "orientation": "horizontal",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}), 24, 7),
    ])

    workers = (row("Workers"), [
        (timeseries("Worker CPU", "CPU used by each worker process, in cores (1 = one core busy).",
                    targets((f"sum by (instance, role, local_rank) "
                             f"(rate(elastiscope_worker_cpu_seconds_total{{{AGENT}}}[$__rate_interval]))",
                             "{{instance}} {{role}} rank {{local_rank}}"))), 12, 8),
        (timeseries("Worker resident memory", "Resident set size of each worker process.",
                    targets((f"sum by (instance, role, local_rank) "
                             f"(elastiscope_worker_resident_memory_bytes{{{AGENT}}})",
                             "{{instance}} {{role}} rank {{local_rank}}")), unit="bytes"), 12, 8),
    ])

    rank = "{{instance}} {{role}} rank {{local_rank}}"
    progress = (row("Training progress"), [
        (timeseries("Step rate", "Optimizer steps per second: each node's mean over its reporting "
                    "workers, and each rank's own rate.",
                    targets((f"sum by (instance, role) (elastiscope_node_steps_per_second{{{AGENT}}})",
                             "{{instance}} {{role}} node"),
                            (f"sum by (instance, role, local_rank) "
                             f"(rate(elastiscope_worker_steps_total{{{AGENT}}}[$__rate_interval]))", rank))), 12, 8),
        (timeseries("Step time per rank", "p50/p90/p99 of each rank's optimizer step period.",
                    quantiles("elastiscope_worker_step_duration_seconds", "instance, role, local_rank"),
                    unit="s"), 12, 8),
        (timeseries("Global step and checkpoints", "Each rank's global step (it continues from a "
                    "checkpoint after a restart), and the step of the last checkpoint a script "
                    "reported saved or loaded.",
                    targets((f"max by (instance, role, local_rank) (elastiscope_worker_global_step{{{AGENT}}})", rank),
                            (f"max by (instance, role, local_rank, kind) "
                             f"(elastiscope_worker_checkpoint_step{{{AGENT}}})", rank + " {{kind}} checkpoint"))), 12, 8),
        (timeseries("Since the last step", "Seconds since each reporting rank last finished an "
                    "optimizer step; a rank that stops progressing climbs here.",
                    targets((f"time() - max by (instance, role, local_rank) "
                             f"(elastiscope_worker_last_step_timestamp_seconds{{{AGENT}}})", rank)),
                    unit="s"), 12, 8),
        (panel("table", "Progress per rank", "Whether each worker reports progress (0: not "
               "reporting, e.g. a script without a torch optimizer), its global step, and the named "
               "values it reported (loss, samples per second, ...).",
               [{**table_target(f"max by (instance, role, local_rank) "
                                f"(elastiscope_worker_reporting_progress{{{AGENT}}})"), "refId": "A"},
                {**table_target(f"max by (instance, role, local_rank, name) "
                                f"(elastiscope_worker_progress_scalar{{{AGENT}}})"), "refId": "B"}],
               options={"showHeader": True, "cellHeight": "sm"}), 24, 8),
    ])

    # Stalls (issue 14): what the agent's stall detection found.
    stalls = (row("Stalls"), [
        (timeseries("Seconds since progress", "Seconds since each rank's last progress (step end, "
                    "checkpoint saved or loaded), as the agent last read it; a hung rank climbs "
                    "here until its stall timeout.",
                    targets((f"max by (instance, role, local_rank) "
                             f"(elastiscope_worker_seconds_since_progress{{{AGENT}}})", rank)),
                    unit="s"), 12, 7),
        (stat("Stalled workers", "Workers stalled now (no progress for their stall timeout); "
              "elastiscope events names the suspect rank and where each rank waits.",
              targets((f"sum by (instance, role) (elastiscope_worker_stalled{{{AGENT}}})",
                       "{{instance}} {{role}}")),
              thresholds=[(None, "green"), (1, "red")]), 6, 7),
        (stat("Stalls", "Stalls found over the dashboard's range.",
              targets((f"sum by (instance, role) (increase(elastiscope_stalls_total{{{AGENT}}}[$__range]))",
                       "{{instance}} {{role}}")),
              thresholds=[(None, "green"), (1, "orange")]), 6, 7),
    ])

    telemetry = (row("Telemetry health"), [
        (timeseries("Dropped records", "Records a sink never received (queue full, or exit came first), per second.",
                    targets((f"sum by (instance, sink) "
                             f"(rate(elastiscope_telemetry_dropped_total{{{TELEMETRY}}}[$__rate_interval]))",
                             "{{instance}} {{sink}}"))), 8, 7),
        (timeseries("Sink errors", "Records whose delivery raised inside a sink, per second.",
                    targets((f"sum by (instance, sink) "
                             f"(rate(elastiscope_telemetry_sink_errors_total{{{TELEMETRY}}}[$__rate_interval]))",
                             "{{instance}} {{sink}}"))), 8, 7),
        (stat("Scrape health", "1 when Prometheus' last scrape of the agent succeeded.",
              targets((f"up{{{TELEMETRY}}}", "{{instance}}")),
              thresholds=[(None, "red"), (1, "green")]), 8, 7),
        (timeseries("Events", "Events published per second, by kind.",
                    targets((f"sum by (name) (rate(elastiscope_events_total{{{TELEMETRY}}}[$__rate_interval]))",
                             "{{name}}"))), 16, 8),
        (panel("table", "Other torchelastic metrics",
               "Last value of every put_metric name without a series of its own (torch's profiling "
               "metrics, custom names).",
               [table_target(f"max by (instance, group, name) "
                             f"(last_over_time(elastiscope_torchelastic_metric{{{TELEMETRY}}}[$__range]))")],
               options={"showHeader": True, "cellHeight": "sm"}), 8, 8),
    ])
    return [job, failures, durations, workers, progress, goodput_row(), straggler_row(), stalls, telemetry]


def goodput_row() -> tuple[dict, list[tuple[dict, int, int]]]:
    """The agent's split of its run's wall time (agent/goodput.py; docs/operations.md)."""
    by_reason = "{{instance}} {{role}} {{reason}}"
    return (row("Goodput"), [
        (stat("Goodput", "Share of each agent's run so far spent in productive training (first "
              "to last step of each attempt, less stalls and redone steps). Absent until a worker "
              "reports a step: no progress reported is not 0 %.",
              targets((f"max by (instance, role) (elastiscope_goodput_ratio{{{AGENT}}})",
                       "{{instance}} {{role}}")),
              unit="percentunit", thresholds=[(None, "red"), (0.5, "orange"), (0.8, "green")]), 6, 8),
        (timeseries("Where the time goes", "Seconds per second of wall time, productive and "
                    "badput by reason (startup, rendezvous, restart, stall, lost_progress, "
                    "shutdown); they add up to 1 per agent once its workers report steps.",
                    targets((f"sum by (instance, role) "
                             f"(rate(elastiscope_productive_seconds_total{{{AGENT}}}[$__rate_interval]))",
                             "{{instance}} {{role}} productive"),
                            (f"sum by (instance, role, reason) "
                             f"(rate(elastiscope_badput_seconds_total{{{AGENT}}}[$__rate_interval])) > 0",
                             by_reason)), unit="percentunit"), 12, 8),
        (timeseries("Goodput over 30 minutes", "Productive share of the last 30 minutes (the "
                    "recording rule the ElastiscopeGoodputLow alert reads, below 0.5 for 10 minutes).",
                    targets((f"max by (instance, role) "
                             f"(instance_role:elastiscope_goodput_ratio:30m{{{AGENT}}})",
                             "{{instance}} {{role}}")), unit="percentunit"), 6, 8),
    ])


def straggler_row() -> tuple[dict, list[tuple[dict, int, int]]]:
    """Stragglers: the step period, the same on every rank of synchronous DDP, beside each rank's
    forward time (its own work before the step's collectives), which names the slow one."""
    rank = "{{instance}} {{role}} rank {{local_rank}}"
    return (row("Stragglers"), [
        (timeseries("Step time per rank (p50)", "Median optimizer step period of each rank. In "
                    "synchronous DDP it is the same on every rank (the all-reduce waits for the "
                    "slowest), so it shows that the job is slow, not which rank makes it so.",
                    [quantiles("elastiscope_worker_step_duration_seconds", "instance, role, local_rank")[0]],
                    unit="s"), 12, 8),
        (timeseries("Forward time per rank", "Mean time of each rank's DDP forward passes per "
                    "step: the work it does on its own before the step's collectives. A straggler "
                    "stands out here.",
                    targets((f"max by (instance, role, local_rank) (elastiscope_worker_forward_seconds{{{AGENT}}})",
                             rank)), unit="s"), 12, 8),
        (timeseries("Forward time over the median", "Each rank's forward time over the job's "
                    "median (all nodes; the recording rule) and over its local peers' median (its "
                    "agent's comparison). Over 1.5 for 10 steps, the agent flags it.",
                    targets((f"max by (instance, role, local_rank) (instance_role_local_rank:"
                             f"elastiscope_worker_forward_seconds:ratio_to_job_median{{{AGENT}}})", rank + " job"),
                            (f"max by (instance, role, local_rank) (elastiscope_worker_straggler_ratio{{{AGENT}}})",
                             rank + " node"))), 12, 8),
        (panel("state-timeline", "Flagged stragglers", "1 while the agent flags a rank a straggler "
               "(elastiscope.worker.straggler until elastiscope.worker.straggler_recovered).",
               targets((f"max by (instance, role, local_rank) (elastiscope_worker_straggler{{{AGENT}}})", rank)),
               options={"showValue": "never", "mergeValues": True, "rowHeight": 0.9},
               defaults={"thresholds": _thresholds([(None, "green"), (1, "red")]),
                         "color": {"mode": "thresholds"}}), 12, 8),
    ])


def layout(rows: list[tuple[dict, list[tuple[dict, int, int]]]]) -> list[dict]:
    """Flatten rows into Grafana's panel list with ids and non-overlapping 24-column grid positions."""
    panels, next_id, y = [], 1, 0
    for row_panel, members in rows:
        panels.append({**row_panel, "id": next_id, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        next_id, y = next_id + 1, y + 1
        x, line_height = 0, 0
        for member, width, height in members:
            if x + width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append({**member, "id": next_id, "gridPos": {"h": height, "w": width, "x": x, "y": y}})
            next_id, x, line_height = next_id + 1, x + width, max(line_height, height)
        y += line_height
    return panels


def query_variable(name: str, label: str, selector: str, description: str) -> dict:
    definition = f"label_values({selector}, {label})"
    return {
        "type": "query",
        "name": name,
        "label": name.capitalize(),
        "description": description,
        "datasource": DATASOURCE,
        "definition": definition,
        "query": {"query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change: short runs come and go
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "regex": "",
        "hide": 0,
    }


def overview_dashboard() -> dict:
    variables = [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {"selected": False, "text": "Prometheus", "value": DATASOURCE_UID},
            "options": [],
            "refresh": 1,
            "regex": "",
            "hide": 0,
        },
        query_variable("job", "job", "elastiscope_agent_info", "Prometheus job the agents are scraped under."),
        query_variable("run", "run_id", 'elastiscope_agent_info{job=~"$job"}',
                       "Elastiscope run id; selects the instances that ran it."),
        query_variable("instance", "instance", 'elastiscope_agent_info{job=~"$job", run_id=~"$run"}',
                       "Agent endpoint (one per node)."),
        query_variable("role", "role", 'elastiscope_agent_info{job=~"$job", instance=~"$instance"}',
                       "Worker role (WorkerSpec.role)."),
    ]
    restarts = f"elastiscope_restarts_total{{{AGENT}}}"
    restart_annotation = {
        "name": "Restarts",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": "orange",
        # The counter starts at 0 with the run, so its first restart is an increase too;
        # increase() (unlike changes()) ignores the drop to 0 when a new agent process starts.
        "expr": f"sum by (instance, role, reason) (increase({restarts}[$__rate_interval]) > 0)",
        "step": "15s",
        "titleFormat": "Restart ({{reason}})",
        "textFormat": "{{instance}} {{role}}",
        "useValueForTime": False,
    }
    builtin_annotation = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "uid": "elastiscope-overview",
        "title": "Elastiscope",
        "description": "Elastic PyTorch jobs run by Elastiscope: state, restarts, failures, "
                       "rendezvous and restart latency, worker resources, telemetry health.",
        "tags": ["elastiscope", "pytorch", "torchelastic"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "liveNow": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "weekStart": "",
        "links": [],
        "annotations": {"list": [builtin_annotation, restart_annotation]},
        "templating": {"list": variables},
        "panels": layout(overview_rows()),
    }


DASHBOARDS = {"elastiscope-overview.json": overview_dashboard}


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for file_name, build in DASHBOARDS.items():
        (OUT_DIR / file_name).write_text(render(build))
        print(f"wrote {OUT_DIR / file_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
