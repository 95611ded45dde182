"""Bridges torch's own telemetry into the pipeline.

Two taps, both installed by ``install()`` and removed by ``uninstall()``:

* torch's metric handler (``torch.distributed.elastic.metrics.configure``): every
  ``put_metric`` made through torch (its ``@prof`` timings of the agent's steps, and anything
  else torch or the user publishes) becomes a ``MetricPoint``. A handler the user configured
  before keeps receiving every data point: ours forwards to it.
* torch's rendezvous event logger (the ``dynamic_rendezvous`` destination of
  ``torch.distributed.elastic.events``): each ``RdzvEvent`` the c10d/etcd rendezvous records
  becomes an event named ``elastiscope.rendezvous.<torch's name>`` with the RdzvEvent's fields
  as metadata. torch only builds these events when that destination has a real handler, so
  until ``install()`` they cost nothing.

torch is imported here, and only when ``install()`` runs. This module never imports the agent.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, Mapping

from telemetry.events import Event, EventSource, now_ms
from telemetry.records import MetricPoint

__all__ = ["install", "uninstall", "installed", "rendezvous_event", "deliver_to_torch_handler",
           "RDZV_EVENT_PREFIX"]

RDZV_EVENT_PREFIX = "elastiscope.rendezvous."
_RDZV_DESTINATION = "dynamic_rendezvous"

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _publish(record: Any) -> None:
    from telemetry.pipeline import get_pipeline

    get_pipeline().publish(record)


def _metric_handler_class():
    from torch.distributed.elastic.metrics.api import MetricHandler

    class PipelineMetricHandler(MetricHandler):
        """Publishes torch's metric data into the pipeline, then hands it to the previous handler."""

        elastiscope_tap = True

        def __init__(self, previous: Any = None) -> None:
            self.previous = previous

        def emit(self, metric_data) -> None:
            try:
                _publish(MetricPoint(metric_data.timestamp, metric_data.group_name,
                                     metric_data.name, metric_data.value))
            except Exception:
                pass
            if self.previous is not None:
                self.previous.emit(metric_data)

    return PipelineMetricHandler


def deliver_to_torch_handler(name: str, value: Any, group: str = "torchelastic") -> None:
    """Hand one of the agent's own data points to the handler set on torch's metric stream.

    torch's agent publishes its ``workers.*`` metrics through torch's stream, so a user who
    configured a handler there receives them; ours publishes to the pipeline, and this keeps
    that user's handler fed too. Our own tap is skipped (the pipeline already has the point):
    the handler it wraps gets it instead. Never raises.
    """
    torch_metrics = sys.modules.get("torch.distributed.elastic.metrics.api")
    if torch_metrics is None:  # torch's metrics never imported: nobody can have configured one
        return
    try:
        handler = torch_metrics._metrics_map.get(group, torch_metrics._default_metrics_handler)
        if getattr(handler, "elastiscope_tap", False):
            handler = handler.previous
        if handler is None or isinstance(handler, torch_metrics.NullMetricHandler):
            return
        handler.emit(torch_metrics.MetricData(time.time(), group, name, value))
    except Exception:
        logging.getLogger("elastiscope.telemetry").debug("torch metric handler failed", exc_info=True)


def rendezvous_event(rdzv_event: Any) -> Event:
    """Our event for one torch ``RdzvEvent`` (or its JSON, or a mapping of its fields)."""
    if isinstance(rdzv_event, (str, bytes)):
        fields = json.loads(rdzv_event)
    elif isinstance(rdzv_event, Mapping):
        fields = dict(rdzv_event)
    else:
        from dataclasses import asdict

        fields = asdict(rdzv_event)
    torch_name = str(fields.pop("name", "") or "unknown")
    # torch names its events "<file>:<Class>.<method>"; the file adds nothing for readers.
    short = torch_name.split(":", 1)[-1]
    node_state = fields.get("node_state")
    fields["node_state"] = getattr(node_state, "name", node_state)
    metadata = {k: (v if v is None or isinstance(v, (str, int, float, bool)) else str(v))
                for k, v in fields.items()}
    metadata["torch_event"] = torch_name
    return Event(RDZV_EVENT_PREFIX + short, EventSource.AGENT, now_ms(), metadata)


class _RendezvousLogHandler(logging.Handler):
    """Receives the JSON torch logs for each RdzvEvent; forwards to the handler it replaced."""

    def __init__(self, previous: logging.Handler | None) -> None:
        super().__init__()
        self.previous = previous

    def emit(self, log_record: logging.LogRecord) -> None:
        try:
            _publish(rendezvous_event(log_record.getMessage()))
        except Exception:
            pass
        previous = self.previous
        if previous is not None and not isinstance(previous, logging.NullHandler):
            previous.handle(log_record)


# The torch modules that record rendezvous events, each holding its own reference to torch's
# recorder (``from ... import construct_and_record_rdzv_event``).
_RDZV_RECORDING_MODULES = (
    "torch.distributed.elastic.rendezvous.dynamic_rendezvous",
    "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend",
)


def _record_rdzv_event(
    run_id: str,
    message: str,
    node_state: Any,
    name: str = "",
    hostname: str = "",
    pid: int | None = None,
    master_endpoint: str = "",
    local_id: int | None = None,
    rank: int | None = None,
) -> None:
    """torch's ``construct_and_record_rdzv_event``, same fields, without ``inspect.stack()``.

    torch walks the whole stack to learn the caller's file name, and ``inspect`` scans every
    loaded module for every frame: with FastAPI, OpenTelemetry and torch loaded that is
    ~0.1-0.2 s per event, and a rendezvous records about eight, so bridging through torch's own
    recorder made each rendezvous (and so each restart) seconds slower. The caller's frame
    gives the same name at no cost.
    """
    try:
        caller = sys._getframe(1)
        failed = getattr(node_state, "name", node_state) == "FAILED"
        fields = {
            "name": f"{os.path.basename(caller.f_code.co_filename)}:{name or caller.f_code.co_name}",
            "run_id": run_id,
            "message": message,
            "hostname": hostname or socket.getfqdn(),
            "pid": pid or os.getpid(),
            "node_state": node_state,
            "master_endpoint": master_endpoint,
            "rank": rank,
            "local_id": local_id,
            "error_trace": traceback.format_exc() if failed else "",
        }
        _publish(rendezvous_event(fields))
        previous = _state.get("previous_rdzv")
        if previous is not None and not isinstance(previous, logging.NullHandler):
            from torch.distributed.elastic.events.api import NodeState, RdzvEvent

            fields["node_state"] = NodeState[getattr(node_state, "name", node_state)]
            line = RdzvEvent(**fields).serialize()
            previous.handle(logging.LogRecord("torchelastic", logging.INFO, __file__, 0, line, None, None))
    except Exception:
        logging.getLogger("elastiscope.telemetry").debug("rendezvous event bridge failed", exc_info=True)


def _swap_rdzv_recorders(original: Any, replacement: Any) -> None:
    for module_name in _RDZV_RECORDING_MODULES:
        try:
            module = __import__(module_name, fromlist=["_"])
        except Exception:
            continue
        if getattr(module, "construct_and_record_rdzv_event", None) is original:
            module.construct_and_record_rdzv_event = replacement


def install() -> bool:
    """Tap torch's metric handler and rendezvous events. Idempotent; False if torch is missing."""
    with _lock:
        if _state:
            return True
        try:
            import torch.distributed.elastic.events as torch_events
            import torch.distributed.elastic.events.handlers as torch_handlers
            import torch.distributed.elastic.metrics.api as torch_metrics
        except Exception:
            return False

        handler_class = _metric_handler_class()
        previous_default = torch_metrics._default_metrics_handler
        previous_groups = dict(torch_metrics._metrics_map)
        torch_metrics.configure(handler_class(previous_default))
        for group, handler in previous_groups.items():
            torch_metrics.configure(handler_class(handler), group)

        previous_rdzv = torch_handlers._log_handlers.get(_RDZV_DESTINATION)
        rdzv_handler = _RendezvousLogHandler(previous_rdzv)
        torch_handlers._log_handlers[_RDZV_DESTINATION] = rdzv_handler
        # torch caches one logger per destination with the handler of its creation time.
        cached_logger = torch_events._events_loggers.get(_RDZV_DESTINATION)
        if cached_logger is not None:
            cached_logger.addHandler(rdzv_handler)

        _swap_rdzv_recorders(torch_events.construct_and_record_rdzv_event, _record_rdzv_event)

        _state.update(
            metrics=torch_metrics, handlers=torch_handlers, events=torch_events,
            previous_default=previous_default, previous_groups=previous_groups,
            previous_rdzv=previous_rdzv, rdzv_handler=rdzv_handler,
        )
        return True


def uninstall() -> None:
    """Put back the handlers ``install()`` found (unless someone replaced ours since)."""
    with _lock:
        if not _state:
            return
        torch_metrics = _state["metrics"]
        handler_class_name = "PipelineMetricHandler"
        if type(torch_metrics._default_metrics_handler).__name__ == handler_class_name:
            torch_metrics.configure(_state["previous_default"])
        for group, handler in _state["previous_groups"].items():
            if type(torch_metrics._metrics_map.get(group)).__name__ == handler_class_name:
                torch_metrics.configure(handler, group)
        rdzv_handler = _state["rdzv_handler"]
        handlers = _state["handlers"]
        if handlers._log_handlers.get(_RDZV_DESTINATION) is rdzv_handler:
            if _state["previous_rdzv"] is not None:
                handlers._log_handlers[_RDZV_DESTINATION] = _state["previous_rdzv"]
        cached_logger = _state["events"]._events_loggers.get(_RDZV_DESTINATION)
        if cached_logger is not None:
            cached_logger.removeHandler(rdzv_handler)
        _swap_rdzv_recorders(_record_rdzv_event, _state["events"].construct_and_record_rdzv_event)
        _state.clear()


def installed() -> bool:
    return bool(_state)
