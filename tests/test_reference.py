"""docs/reference.md matches what a real run exports, both ways.

A real job (c10d rendezvous on 127.0.0.1, one failed attempt, then success) runs with the
default telemetry. Every series in its /metrics exposition and every event kind in its event
log must be in the reference tables; every series and kind the tables list must have been
exported, unless the table marks it conditional.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import telemetry
from telemetry.prometheus.catalogue import CATALOGUE, EVENT_KINDS_AT_ZERO, Series
from telemetry.prometheus.exposition import render
from telemetry_jobs import run_job, telemetry_isolation

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def _table(section: str, header_first_cell: str) -> list[list[str]]:
    """Rows of the first table under ``## section`` whose header starts with ``header_first_cell``."""
    text = REFERENCE.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows, in_table = [], False
    for line in body.splitlines():
        if line.startswith(f"| {header_first_cell} |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            if line.startswith("|---"):
                continue
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    assert rows, f"no table under '## {section}'"
    return rows


def _name(cell: str) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell)
    assert m, f"first cell is not a `name`: {cell!r}"
    return m.group(1)


def documented_series() -> dict[str, dict]:
    out = {}
    for row in _table("Metric series", "Series"):
        name, type_, labels, zero, presence = _name(row[0]), row[1], row[2], row[-2], row[-1]
        out[name] = {
            "type": type_,
            "labels": {label.strip() for label in labels.split(",") if label.strip()},
            "conditional": presence.startswith("conditional"),
            "zero": zero,
        }
    return out


def documented_event_sources() -> set[tuple[str, str]]:
    """(name, source) of every event kind with a fixed name, as the event table lists them."""
    pairs = set()
    for row in _table("Event kinds", "Name"):
        name = _name(row[0])
        if "<" not in name:
            pairs |= {(name, source) for source in re.findall(r"\b(AGENT|WORKER)\b", row[1])}
    return pairs


def documented_events() -> dict[str, bool]:
    """Event name (or pattern with <placeholders>) -> conditional?"""
    return {_name(row[0]): row[-1].startswith("conditional") for row in _table("Event kinds", "Name")}


def zero_cell(s: Series) -> str:
    """The *Starts at 0* cell docs/reference.md gives ``s``."""
    if s.zero:
        return s.zero
    return "n/a (gauge)" if s.type == "gauge" else "no: created by its first update"


def scrape() -> bytes:
    """/metrics as the attached Prometheus sink's registry renders it."""
    return render(telemetry.get_pipeline().find("prometheus").registry, None)[0]


def _matches(pattern: str, name: str) -> bool:
    regex = "".join(".+" if part.startswith("<") else re.escape(part)
                    for part in re.split(r"(<[^>]+>)", pattern))
    return re.fullmatch(regex, name) is not None


class _ScrapeAtRunStart(telemetry.Sink):
    """Renders /metrics the moment the run starts, as a scrape at that instant would see it.

    Synchronous and attached after the Prometheus sink, so the run_start event is already counted.
    """

    name = "scrape_at_run_start"
    synchronous = True
    metrics = False

    def __init__(self) -> None:
        self.scrapes: list[bytes] = []

    def emit(self, record) -> None:
        if record.name == "elastiscope.agent.run_start":
            self.scrapes.append(scrape())


def _samples(body: bytes) -> dict[str, list]:
    """Series name (counters with _total) -> its samples."""
    out = {}
    for f in text_string_to_metric_families(body.decode()):
        out[f.name + "_total" if f.type == "counter" else f.name] = f.samples
    return out


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    log = tmp_path_factory.mktemp("ref") / "run.jsonl"
    at_start = _ScrapeAtRunStart()
    with telemetry_isolation():
        telemetry.configure(event_log=log, log_format="json", env={}, extra_sinks=[at_start])
        at_configure = scrape()
        result = run_job(fail_attempts=1, max_restarts=1, backend="c10d", run_id="reference-run")
        assert telemetry.get_pipeline().flush(timeout=5)
        body = scrape()
        assert telemetry.shutdown(timeout=5)
    assert result.state.value == "SUCCEEDED"
    families = [f for f in text_string_to_metric_families(body.decode()) if f.samples]
    exported = {}
    for f in families:
        name = f.name + "_total" if f.type == "counter" else f.name
        labels = set().union(*(s.labels.keys() for s in f.samples)) - {"le"}
        exported[name] = {"type": f.type, "labels": labels}
    events = {json.loads(line)["name"] for line in log.read_text().splitlines()}
    assert len(at_start.scrapes) == 1
    return exported, events, {"at configure": _samples(at_configure), "at run start": _samples(at_start.scrapes[0])}


def test_every_exported_series_is_documented_with_its_type_and_labels(real_run):
    exported, _, _ = real_run
    docs = documented_series()
    undocumented = sorted(set(exported) - set(docs))
    assert not undocumented, f"exported but not in docs/reference.md: {undocumented}"
    for name, seen in exported.items():
        assert seen["type"] == docs[name]["type"], name
        assert seen["labels"] == docs[name]["labels"], name


def test_every_unconditional_documented_series_is_exported(real_run):
    exported, _, _ = real_run
    missing = sorted(n for n, d in documented_series().items() if not d["conditional"] and n not in exported)
    assert not missing, f"documented as always present but not exported: {missing}"


def test_every_logged_event_kind_is_documented(real_run):
    _, events, _ = real_run
    patterns = documented_events()
    undocumented = sorted(n for n in events if not any(_matches(p, n) for p in patterns))
    assert not undocumented, f"logged but not in docs/reference.md: {undocumented}"


def test_every_unconditional_documented_event_kind_is_logged(real_run):
    _, events, _ = real_run
    missing = sorted(p for p, conditional in documented_events().items()
                     if not conditional and not any(_matches(p, n) for n in events))
    assert not missing, f"documented as always present but not logged: {missing}"


def test_reference_table_lists_exactly_the_catalogue():
    assert set(documented_series()) == {s.name for s in CATALOGUE}
    for s in CATALOGUE:
        assert documented_series()[s.name]["conditional"] == (s.when is not None), s.name


def test_reference_says_which_series_start_at_zero_as_the_catalogue_does():
    for s in CATALOGUE:
        assert documented_series()[s.name]["zero"] == zero_cell(s), s.name


MOMENTS = ("at configure", "at run start")  # in the order they happen


def _counted_already(sample) -> bool:
    """Samples a scrape at those moments may show above 0: the events published before."""
    return sample.name == "elastiscope_events_total" and (
        sample.labels["name"] == "elastiscope.agent.run_start"
        or (sample.labels["name"], sample.labels["source"]) not in documented_event_sources())


def test_series_documented_to_start_at_zero_are_scraped_at_zero_when_it_says(real_run):
    # The real job as a scrape sees it right after configure() and at the run's start: every
    # series the table says starts at 0 by then is there, holding zeros; every one it says
    # appears later is not there yet. Most gauges have no value before their first one.
    _, _, scrapes = real_run
    for name, doc in documented_series().items():
        if doc["zero"] == "n/a (gauge)":
            continue
        starts = next((i for i, moment in enumerate(MOMENTS) if doc["zero"].startswith(moment)), None)
        for i, moment in enumerate(MOMENTS):
            seen = scrapes[moment].get(name, [])
            if starts is None or i < starts:
                assert not seen, f"{name}: documented to appear later, but there {moment}"
                continue
            assert seen, f"{name}: documented to start at 0 {moment}, but not there"
            counted = [s for s in seen if s.value != 0 and not _counted_already(s)]
            assert not counted, f"{name} {moment}: {counted}"


def test_the_event_kinds_counted_from_zero_are_the_documented_kinds_with_their_sources():
    assert set(EVENT_KINDS_AT_ZERO) == documented_event_sources()
