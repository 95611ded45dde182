"""The Grafana dashboards: provisionable, of one stated schema version, querying only real series.

These checks need no server (promtool validates the PromQL offline); tests/test_prometheus_e2e.py
evaluates the same queries against a Prometheus scraping a real run.
"""

from __future__ import annotations

import importlib.util
import itertools
import re

import pytest
import yaml

import prom_harness as ph

BUILD_SCRIPT = ph.ROOT / "dashboards" / "grafana" / "build_dashboards.py"
PROVISIONING = ph.ROOT / "dashboards" / "grafana" / "provisioning"

# Built-in (non-Angular) panel types of the Grafana releases that write each schema version;
# Angular panels (graph, singlestat, table-old) are off by default from Grafana 11 on.
PANEL_TYPES_BY_SCHEMA_VERSION = {
    39: frozenset({
        "row", "timeseries", "stat", "gauge", "bargauge", "table", "text", "state-timeline",
        "status-history", "heatmap", "histogram", "piechart", "barchart", "xychart", "trend",
        "candlestick", "canvas", "geomap", "logs", "nodeGraph", "traces", "flamegraph", "news",
        "dashlist", "alertlist", "annolist", "datagrid",
    }),
}
REQUIRED_VARIABLES = {"datasource", "job", "instance", "role", "run"}


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    found = ph.load_dashboards()
    assert found, f"no dashboard JSON under {ph.DASHBOARDS_DIR}"
    return found


def _build_module():
    spec = importlib.util.spec_from_file_location("build_dashboards", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_match_their_generator(dashboards):
    build = _build_module()
    assert set(build.DASHBOARDS) == set(dashboards), "generator and committed files differ in names"
    for file_name, make in build.DASHBOARDS.items():
        committed = (ph.DASHBOARDS_DIR / file_name).read_text()
        assert committed == build.render(make), (
            f"{file_name} is stale: run python dashboards/grafana/build_dashboards.py"
        )


def test_dashboards_state_a_known_grafana_schema_version(dashboards):
    for file_name, dashboard in dashboards.items():
        assert dashboard.get("schemaVersion") in PANEL_TYPES_BY_SCHEMA_VERSION, file_name


def test_panels_use_only_panel_types_of_the_stated_schema_version(dashboards):
    for file_name, dashboard in dashboards.items():
        allowed = PANEL_TYPES_BY_SCHEMA_VERSION[dashboard["schemaVersion"]]
        used = {panel["type"] for panel in ph.iter_panels(dashboard["panels"])}
        assert used <= allowed, f"{file_name}: {sorted(used - allowed)} not built into that version"


def test_panel_ids_are_unique(dashboards):
    for file_name, dashboard in dashboards.items():
        ids = [panel["id"] for panel in ph.iter_panels(dashboard["panels"])]
        assert len(ids) == len(set(ids)), file_name


def test_panels_fit_the_grid_without_overlapping(dashboards):
    for file_name, dashboard in dashboards.items():
        cells: dict[tuple[int, int], str] = {}
        for panel in ph.iter_panels(dashboard["panels"]):
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            for cell in itertools.product(range(pos["x"], pos["x"] + pos["w"]),
                                          range(pos["y"], pos["y"] + pos["h"])):
                assert cell not in cells, f"{file_name}: {panel['title']} overlaps {cells[cell]}"
                cells[cell] = panel["title"]


def test_every_query_goes_through_the_datasource_variable(dashboards):
    for file_name, dashboard in dashboards.items():
        for panel in ph.iter_panels(dashboard["panels"]):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "${datasource}", variable["name"]


def test_dashboards_offer_job_instance_role_and_run_variables(dashboards):
    for file_name, dashboard in dashboards.items():
        names = {variable["name"] for variable in dashboard["templating"]["list"]}
        assert REQUIRED_VARIABLES <= names, f"{file_name} lacks {REQUIRED_VARIABLES - names}"


def test_datasource_variable_defaults_to_the_provisioned_datasource(dashboards):
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "elastiscope.yml").read_text())
    uids = {source["uid"] for source in provisioned["datasources"] if source["type"] == "prometheus"}
    for file_name, dashboard in dashboards.items():
        (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
        assert variable["query"] == "prometheus"
        assert variable["current"]["value"] in uids, file_name


def test_variables_stand_only_inside_regex_matchers(dashboards):
    # Multi-value and "All" selections render as regex alternations, which only =~ accepts.
    regex_matcher = re.compile(r'\w+\s*=~\s*"[^"]*"')
    for file_name, dashboard in dashboards.items():
        queries = (ph.panel_queries(dashboard) + ph.variable_selectors(dashboard)
                   + ph.annotation_queries(dashboard))
        for where, expr in queries:
            outside = ph.grafana_variables(regex_matcher.sub("", expr))
            outside -= {"__rate_interval", "__interval", "__range"}
            assert not outside, f"{file_name} {where}: {sorted(outside)} outside a =~ matcher"


def test_every_panel_has_a_query_and_a_description(dashboards):
    for file_name, dashboard in dashboards.items():
        for panel in ph.iter_panels(dashboard["panels"]):
            if panel["type"] == "row":
                continue
            assert panel.get("description"), f"{file_name}: {panel['title']} has no description"
            assert panel["targets"] and all(t.get("expr") for t in panel["targets"]), panel["title"]


def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool parses each expression as a recording rule: a syntax or type error fails here,
    # without any server.
    queries = ph.all_queries()
    rules = {"groups": [{"name": "dashboard_queries", "rules": [
        {"record": f"dashboard_query_{i}", "expr": expr} for i, (_where, expr) in enumerate(queries)
    ]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = ph.promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_name_only_catalogue_series(dashboards):
    known = (ph.catalogue_sample_names() | ph.recorded_names(ph.load_rules())
             | ph.PROMETHEUS_SYNTHETIC_SERIES)
    for file_name, dashboard in dashboards.items():
        queries = (ph.panel_queries(dashboard) + ph.variable_selectors(dashboard)
                   + ph.annotation_queries(dashboard))
        for where, expr in queries:
            unknown = ph.metric_names(ph.promql_from_grafana(expr)) - known
            assert not unknown, f"{file_name} {where}: {sorted(unknown)} not exported by the agent"


def test_dashboards_cover_the_catalogue():
    # A series on no panel is one users cannot see without writing PromQL themselves.
    exported = {name.removesuffix("_bucket") for name in ph.catalogue_sample_names()
                if not name.endswith(("_sum", "_count"))}
    shown = set().union(*(ph.metric_names(ph.promql_from_grafana(expr))
                          for _file, dashboard in ph.load_dashboards().items()
                          for _where, expr in ph.panel_queries(dashboard)))
    shown = {name.removesuffix("_bucket") for name in shown}
    missing = exported - shown
    assert not missing, f"series on no panel: {sorted(missing)}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, role) (rate(a_bucket{job=~"x"}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.9, b) > bool 1e3", {"b"}),
        ('c unless on (job, instance) up == 1', {"c", "up"}),
        ('label_replace(d, "dst", "$1", "src", "(.*)") or e offset 5m', {"d", "e"}),
        ('{__name__="f", job="g"} / ignoring(h) i[1h:1m]', {"f", "i"}),
        ('max(j) by (k) * on(l) group_left(m) n_total', {"j", "n_total"}),
    ],
)
def test_metric_names_are_read_from_selectors_only(expr, names):
    assert ph.metric_names(expr) == names
