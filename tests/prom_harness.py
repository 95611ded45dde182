"""Real Prometheus, Pushgateway and promtool for tests, plus the PromQL our dashboards and rules hold.

Servers run as child processes on 127.0.0.1 with ephemeral ports and temporary storage; every wait
is a poll with a deadline. When a binary is missing the caller is skipped with the reason (CI
installs them through scripts/install-prometheus, so there they run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "dashboards" / "grafana" / "dashboards"
RULES_FILE = ROOT / "dashboards" / "prometheus" / "rules.yml"
RULES_TEST_FILE = ROOT / "dashboards" / "prometheus" / "rules_test.yml"

# Series Prometheus makes itself for every target; queries may use them next to the agent's own.
PROMETHEUS_SYNTHETIC_SERIES = frozenset({"up"})


# ---------------------------------------------------------------------------------------------
# Binaries and ports


def require_binary(name: str) -> str:
    """The path of ``name`` on PATH, or skip the calling test saying how to get it.

    In CI (CI set, as .ci/run is) a missing binary fails instead: CI installs them through
    scripts/install --dev, so a skip there would hide a broken install step.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (bash scripts/install-prometheus installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def promtool(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run promtool with ``args``; the caller asserts on returncode and output."""
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# Test servers live on 127.0.0.1: never route to them through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); HTTP error statuses are returned, not raised."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until(
    probe: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Call ``probe`` until it returns something truthy; that value, or AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError) as error:  # server still starting, or not answering yet
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Servers


class _ServerProcess:
    """A child server process bound to 127.0.0.1:<port>, ready once ``/-/ready`` answers 200."""

    binary_name = ""
    start_timeout = 30.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self.workdir / f"{self.binary_name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def start(self) -> "_ServerProcess":
        binary = require_binary(self.binary_name)
        # The port is chosen before the server binds it; another process could take it in
        # between, so a server that exits early is retried on a new port.
        for _attempt in range(3):
            self.port = free_port()
            with open(self._log_path, "wb") as log:
                self._process = subprocess.Popen(
                    self._command(binary),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            try:
                wait_until(self._ready, timeout=self.start_timeout, what=f"{self.binary_name} ready")
                return self
            except AssertionError:
                if self._process.poll() is None:
                    self.stop()
                    raise AssertionError(f"{self.binary_name} not ready:\n{self.log_tail()}")
        raise AssertionError(f"{self.binary_name} kept exiting at start:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError("exited")  # not OSError: stops wait_until at once
        status, _ = http_get(f"{self.url}/-/ready", timeout=2.0)
        return status == 200

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> "_ServerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Pushgateway(_ServerProcess):
    binary_name = "prometheus-pushgateway"

    def _command(self, binary: str) -> list[str]:
        return [binary, f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metric_families(self) -> list[dict[str, Any]]:
        """What the pushgateway holds, as its JSON API lists it (one entry per push group)."""
        status, body = http_get(f"{self.url}/api/v1/metrics")
        if status != 200:
            raise AssertionError(f"pushgateway /api/v1/metrics answered {status}")
        return json.loads(body)["data"]


class PromQLError(AssertionError):
    """Prometheus refused or failed to evaluate an expression."""


class Prometheus(_ServerProcess):
    """A Prometheus scraping fixed targets every ``scrape_interval`` and evaluating ``rule_files``.

    ``targets`` maps a job name to its ``host:port`` targets; jobs listed in ``honor_labels``
    keep the job/instance labels found in the scraped data (as a pushgateway needs).
    """

    binary_name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: dict[str, list[str]],
        rule_files: list[Path] = (),
        honor_labels: frozenset[str] = frozenset(),
        scrape_interval: str = "1s",
    ) -> None:
        super().__init__(workdir)
        self.config_path = self.workdir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "honor_labels": job in honor_labels,
                    "scrape_timeout": scrape_interval,
                    "static_configs": [{"targets": list(addresses)}],
                }
                for job, addresses in targets.items()
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # The Debian build looks for console templates under /etc; none are needed here.
            f"--web.console.templates={self.workdir}",
            f"--web.console.libraries={self.workdir}",
            "--log.level=warn",
        ]

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; the ``data`` member, or PromQLError with Prometheus' own message."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10.0)
        try:
            answer = json.loads(body)
        except ValueError:
            raise PromQLError(f"/api/v1/{path} answered {status}: {body[:200]!r}") from None
        if answer.get("status") != "success":
            raise PromQLError(f"{answer.get('errorType')}: {answer.get('error')} ({params})")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result vector (or [scalar] / [string] for those types)."""
        data = self.api("query", query=expr, time=at)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant vector query, or None when it is empty."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise AssertionError(f"{expr} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def series_names(self) -> set[str]:
        """Every metric name in the TSDB, scraped or recorded."""
        return set(self.api("label/__name__/values"))

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def wait_for_rule_evaluation(self, after: float, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Every loaded rule, once each has been evaluated later than epoch time ``after``."""

        def evaluated() -> list[dict[str, Any]] | None:
            rules = [rule for group in self.rule_groups() for rule in group["rules"]]
            if rules and all(_epoch(rule["lastEvaluation"]) > after for rule in rules):
                return rules
            return None

        return wait_until(evaluated, timeout=timeout, what="a rule evaluation of every rule")


def _epoch(rfc3339: str) -> float:
    """Seconds since the epoch of Prometheus' RFC 3339 timestamps (nanoseconds, 'Z' suffix)."""
    from datetime import datetime

    seconds, _, fraction = rfc3339.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(seconds + "+00:00").timestamp()
    return whole + (float("0." + fraction) if fraction else 0.0)


# ---------------------------------------------------------------------------------------------
# The PromQL held by the dashboards and the rule files

# Grafana's built-in interval variables, replaced by a plausible value so Prometheus can
# evaluate the expression; every other variable only ever stands inside a regex matcher.
_GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
_GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)")


def grafana_variables(expr: str) -> set[str]:
    """Names of the Grafana variables (``$x`` / ``${x}``) that ``expr`` uses."""
    return {braced or bare for braced, bare in _GRAFANA_VARIABLE.findall(expr)}


def promql_from_grafana(expr: str) -> str:
    """Grafana's query text made evaluable: interval variables get a duration, the rest match all."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return _GRAFANA_INTERVALS.get(name, ".*")

    return _GRAFANA_VARIABLE.sub(substitute, expr)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE_OR_SUBQUERY = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_OFFSET = re.compile(r"\boffset\s+-?\w+", re.IGNORECASE)
_AT_MODIFIER = re.compile(r"@\s*(?:start\(\)|end\(\)|[\d.]+)")
_NUMBER = re.compile(
    r"(?<![\w:.])(?:0x[0-9a-f]+|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)(?![\w:])", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
     "group_right", "offset", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (function and keyword names excluded)."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGE_OR_SUBQUERY.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _AT_MODIFIER.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if word.lower() in _KEYWORDS:
            continue
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or aggregation
        names.add(word)
    return names


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every committed dashboard, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title + refId, Grafana query text) for every Prometheus target of every panel."""
    return [
        (f"{panel.get('title', '?')} [{target.get('refId', '?')}]", target["expr"])
        for panel in iter_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def annotation_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(annotation name, Grafana query text) of every Prometheus annotation."""
    return [
        (f"annotation {annotation['name']}", annotation["expr"])
        for annotation in dashboard.get("annotations", {}).get("list", [])
        if "expr" in annotation
    ]


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)


def variable_selectors(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, PromQL selector) of every ``label_values(selector, label)`` query variable."""
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = _LABEL_VALUES.match(text)
        if match:
            found.append((variable["name"], match.group("selector")))
    return found


def catalogue_sample_names() -> set[str]:
    """Sample names the agent's metric catalogue exports (histograms as _bucket/_sum/_count)."""
    catalogue = pytest.importorskip("telemetry.prometheus.catalogue", reason="the catalogue is not built yet")
    names = set()
    for series in catalogue.CATALOGUE:
        if series.type == "histogram":
            names |= {f"{series.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(series.name)
    return names


def load_rules(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    """Every recording and alerting rule of a rule file, each with its group's name under 'group'."""
    document = yaml.safe_load(path.read_text())
    return [
        {**rule, "group": group["name"]}
        for group in document["groups"]
        for rule in group["rules"]
    ]


def recorded_names(rules: list[dict[str, Any]]) -> set[str]:
    return {rule["record"] for rule in rules if "record" in rule}


def all_queries() -> list[tuple[str, str]]:
    """(where, evaluable PromQL) of every dashboard panel, dashboard variable and rule."""
    queries = []
    for file_name, dashboard in load_dashboards().items():
        queries += [(f"{file_name}: {where}", promql_from_grafana(expr))
                    for where, expr in panel_queries(dashboard)]
        queries += [(f"{file_name}: variable ${name}", promql_from_grafana(selector))
                    for name, selector in variable_selectors(dashboard)]
        queries += [(f"{file_name}: {where}", promql_from_grafana(expr))
                    for where, expr in annotation_queries(dashboard)]
    for rule in load_rules():
        name = rule.get("record") or rule.get("alert")
        queries.append((f"{RULES_FILE.name}: {name}", rule["expr"]))
    return queries


def child_environment() -> dict[str, str]:
    """os.environ for a process under test: no HTTP proxy (servers are on 127.0.0.1) and none of
    the ELASTISCOPE_* / PET_* settings of whoever runs the tests (the test's flags decide)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        and not key.startswith(("ELASTISCOPE_", "PET_"))
    }
