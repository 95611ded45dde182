"""The Prometheus rules: valid, unit-tested alert by alert with promtool, on real series names."""

from __future__ import annotations

import shutil

import pytest
import yaml

import prom_harness as ph

# The situations the brief asks to be paged for, and the alert that covers each.
REQUIRED_ALERTS = {
    "job failed": "ElastiscopeJobFailed",
    "restart storm": "ElastiscopeRestartStorm",
    "flakiness above a threshold": "ElastiscopeFlakinessHigh",
    "agent absent while its job should run": "ElastiscopeAgentAbsent",
    "telemetry dropping": "ElastiscopeTelemetryDropping",
    "goodput under a threshold": "ElastiscopeGoodputLow",
    "training stalled (a hang)": "ElastiscopeTrainingStalled",
    "persistent straggler": "ElastiscopeStraggler",
}


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    return ph.load_rules()


def alerts(rules: list[dict]) -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules if "alert" in rule}


def unit_test_cases() -> list[dict]:
    """Every (alertname, exp_alerts) evaluation of rules_test.yml."""
    document = yaml.safe_load(ph.RULES_TEST_FILE.read_text())
    return [case for test in document["tests"] for case in test.get("alert_rule_test", [])]


def test_rule_file_passes_promtool_check():
    result = ph.promtool("check", "rules", str(ph.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    result = ph.promtool("test", "rules", str(ph.RULES_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_catch_a_changed_alert_threshold(tmp_path):
    # The unit tests must be able to fail: the same tests against a storm threshold of 4.
    shutil.copy(ph.RULES_TEST_FILE, tmp_path / ph.RULES_TEST_FILE.name)
    original = ph.RULES_FILE.read_text()
    assert "increase10m >= 3" in original
    (tmp_path / ph.RULES_FILE.name).write_text(original.replace("increase10m >= 3", "increase10m >= 4"))
    result = ph.promtool("test", "rules", str(tmp_path / ph.RULES_TEST_FILE.name))
    assert result.returncode != 0
    assert "ElastiscopeRestartStorm" in result.stdout + result.stderr


def test_required_alerts_exist(rules):
    missing = {why: name for why, name in REQUIRED_ALERTS.items() if name not in alerts(rules)}
    assert not missing


def test_every_alert_has_a_firing_unit_test(rules):
    fired = {case["alertname"] for case in unit_test_cases() if case.get("exp_alerts")}
    assert set(alerts(rules)) <= fired, f"no firing case for {sorted(set(alerts(rules)) - fired)}"


def test_every_alert_has_a_quiet_unit_test(rules):
    quiet = {case["alertname"] for case in unit_test_cases() if not case.get("exp_alerts")}
    assert set(alerts(rules)) <= quiet, f"no quiet case for {sorted(set(alerts(rules)) - quiet)}"


def test_alerts_carry_a_severity_and_a_summary(rules):
    for name, rule in alerts(rules).items():
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        assert rule.get("annotations", {}).get("summary"), name


def test_recording_rules_follow_the_level_metric_operations_convention(rules):
    for rule in rules:
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert level and metric.startswith("elastiscope_") and operations, rule["record"]


def test_rules_name_only_catalogue_series(rules):
    known = ph.catalogue_sample_names() | ph.recorded_names(rules) | ph.PROMETHEUS_SYNTHETIC_SERIES
    for rule in rules:
        unknown = ph.metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)}"


def test_alerts_read_only_recordings_made_earlier_in_their_own_group(rules):
    # Groups run independently; an alert reading another group's recording sees it one
    # evaluation late (and promtool's unit tests turn flaky).
    recorded = ph.recorded_names(rules)
    made_so_far: dict[str, set[str]] = {}
    for rule in rules:
        seen = made_so_far.setdefault(rule["group"], set())
        if "record" in rule:
            seen.add(rule["record"])
            continue
        read = ph.metric_names(rule["expr"]) & recorded
        assert read <= seen, f"{rule['alert']} reads {sorted(read - seen)} from elsewhere"
