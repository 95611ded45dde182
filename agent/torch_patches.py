"""Every change Elastiscope makes inside torch's modules, in one place, applied at one moment.

``apply()`` puts all of them in; ``remove()`` takes them out again, and ``telemetry.state.reset()``
calls it (tests reset telemetry after each test, so each starts with torch as torch ships). Both
are idempotent. ``SimpleElasticAgent.__init__`` calls ``apply()``: constructing an agent is the
earliest moment that is still the agent's own, before it makes any rendezvous or publishes any
metric, and it holds for every way an agent is driven (``run()``, or a subclass or test calling
``_rendezvous``/``_initialize_workers`` directly). The rendezvous handler is usually built
before the agent, but torch records nothing worth keeping while building one (``elastiscope
run`` builds it before telemetry is configured anyway).

The patches, each checked against torch 2.13.0 (a patch whose torch attribute is missing is
skipped, and the rest still go in):

1. **Metric tap** (``torch.distributed.elastic.metrics.api``: the default handler and every
   group's handler). Each is wrapped in a handler that publishes the ``MetricData`` into the
   pipeline as a ``MetricPoint``, then hands it to the handler it wrapped, so a handler the user
   configured keeps receiving everything.
2. **Rendezvous event tap** (``torch.distributed.elastic.events.handlers``: the
   ``dynamic_rendezvous`` log handler, and the logger torch caches for that destination). Each
   ``RdzvEvent`` torch logs becomes ``elastiscope.rendezvous.<torch's name>``; the handler it
   replaced still receives the line. torch builds these events only while that destination has
   a real handler, so this tap is also what switches them on.
3. **Rendezvous event recorders** (``construct_and_record_rdzv_event`` as imported by
   ``rendezvous.dynamic_rendezvous`` and ``rendezvous.c10d_rendezvous_backend``). torch's
   recorder walks the stack with ``inspect.stack()`` to name the caller's file; with FastAPI,
   OpenTelemetry and torch loaded that costs 0.1-0.2 s per event and about eight events per
   rendezvous. Ours takes the caller's frame: same fields, same names, no cost.
4. **Event names** (``rendezvous.dynamic_rendezvous.get_method_name``). The handler names each
   event after the method recording it by building the call stack twice with ``inspect``,
   2-10 ms per event in an agent's deep stack. Ours reads the same frame's code name directly.
5. **Join jitter switch** (``rendezvous.dynamic_rendezvous._delay``). Before joining round 0
   the handler sleeps a random 0-0.3 s so that many nodes do not reach the store at once. Our
   stand-in passes every delay on to torch's, except the jitter on a thread inside
   ``JoinJitterSwitch.skipping()`` (``agent.rendezvous.joining`` uses it for a rendezvous that
   admits one node, where there is nobody to spread out).

Each patch object keeps what it replaced (``original`` for a function, ``previous`` for a
handler), so nothing about the patches is held here: what is in torch's modules says what is
applied. torch is imported only inside ``apply()``: ``import agent.api`` must stay torch-free.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from telemetry import state
from telemetry.records import MetricPoint
from telemetry.torch_bridge import rendezvous_event

__all__ = [
    "TORCH_VERSIONS_CHECKED",
    "apply",
    "remove",
    "applied",
    "handler_behind_tap",
    "configured_metric_handler",
    "join_jitter_switch",
    "JoinJitterSwitch",
    "MethodNameLookup",
    "RendezvousRecorder",
    "RendezvousLogTap",
]

TORCH_VERSIONS_CHECKED = ("2.13.0",)

logger = logging.getLogger(__name__)

_METRICS_API = "torch.distributed.elastic.metrics.api"
_DYNAMIC_RENDEZVOUS = "torch.distributed.elastic.rendezvous.dynamic_rendezvous"
# The torch modules that record rendezvous events, each with its own reference to torch's
# recorder (``from ... import construct_and_record_rdzv_event``).
_RDZV_RECORDING_MODULES = (_DYNAMIC_RENDEZVOUS, "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend")
_RDZV_DESTINATION = "dynamic_rendezvous"

# Two agents built at once (one per thread) must not wrap torch's handlers twice. A lock is
# not state: it holds nothing between calls.
_apply_lock = threading.Lock()


# ---- the patch objects ---------------------------------------------------------------------


class JoinJitterSwitch:
    """Stands in for torch's ``dynamic_rendezvous._delay``; can skip the join jitter per thread."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self._per_thread = threading.local()

    def __call__(self, seconds: Any) -> None:
        # A (low, high) range is the join jitter; a plain number is a poll interval, always kept.
        if isinstance(seconds, tuple) and getattr(self._per_thread, "skip_jitter", False):
            return
        self.original(seconds)

    @contextmanager
    def skipping(self) -> Iterator[None]:
        """On this thread, inside the block, torch's join jitter is not slept."""
        before = getattr(self._per_thread, "skip_jitter", False)
        self._per_thread.skip_jitter = True
        try:
            yield
        finally:
            self._per_thread.skip_jitter = before


class MethodNameLookup:
    """Stands in for torch's ``get_method_name``: the same name, read from the frame itself."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, depth: int = 2) -> str:
        # Frame 0 is this call, as index 0 of inspect.stack() is torch's lookup function.
        try:
            return sys._getframe(depth).f_code.co_name
        except ValueError:
            return "no_method_name"


class RendezvousLogTap(logging.Handler):
    """Receives the JSON line torch logs for each RdzvEvent; forwards to the handler it replaced."""

    def __init__(self, previous: logging.Handler | None) -> None:
        super().__init__()
        self.previous = previous

    def emit(self, log_record: logging.LogRecord) -> None:
        try:
            state.get_pipeline().publish(rendezvous_event(log_record.getMessage()))
        except Exception:
            logger.debug("rendezvous event tap failed", exc_info=True)
        self.forward(log_record)

    def forward(self, log_record: logging.LogRecord) -> None:
        """Hand the line to the handler torch had before ours, unless that one discards it."""
        previous = self.previous
        if previous is not None and not isinstance(previous, logging.NullHandler):
            previous.handle(log_record)


class RendezvousRecorder:
    """Stands in for torch's ``construct_and_record_rdzv_event``: same fields, no stack walk."""

    def __init__(self, original: Any, log_tap: RendezvousLogTap) -> None:
        self.original = original
        self.log_tap = log_tap

    def __call__(
        self,
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
        try:
            caller = sys._getframe(1).f_code
            failed = getattr(node_state, "name", node_state) == "FAILED"
            fields = {
                "name": f"{os.path.basename(caller.co_filename)}:{name or caller.co_name}",
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
            state.get_pipeline().publish(rendezvous_event(fields))
            self._forward(fields)
        except Exception:
            logger.debug("rendezvous event recorder failed", exc_info=True)

    def _forward(self, fields: dict[str, Any]) -> None:
        # The line torch's recorder would have logged, for a handler the user had configured.
        previous = self.log_tap.previous
        if previous is None or isinstance(previous, logging.NullHandler):
            return
        from torch.distributed.elastic.events.api import NodeState, RdzvEvent

        fields["node_state"] = NodeState[getattr(fields["node_state"], "name", fields["node_state"])]
        line = RdzvEvent(**fields).serialize()
        self.log_tap.forward(logging.LogRecord("torchelastic", logging.INFO, __file__, 0, line, None, None))


def _metric_tap_class(metric_handler_base: type) -> type:
    # Built when applied: the base class is torch's, and this module must not import torch.
    class PipelineMetricHandler(metric_handler_base):
        """Publishes torch's metric data into the pipeline, then hands it to the previous handler."""

        elastiscope_tap = True

        def __init__(self, previous: Any = None) -> None:
            self.previous = previous

        def emit(self, metric_data) -> None:
            try:
                state.get_pipeline().publish(MetricPoint(metric_data.timestamp, metric_data.group_name,
                                                   metric_data.name, metric_data.value))
            except Exception:
                logger.debug("metric tap failed", exc_info=True)
            if self.previous is not None:
                self.previous.emit(metric_data)

    return PipelineMetricHandler


def _is_metric_tap(handler: Any) -> bool:
    return getattr(handler, "elastiscope_tap", False)


def handler_behind_tap(handler: Any) -> Any:
    """The handler our metric tap forwards to, or ``handler`` itself if it is not our tap."""
    return handler.previous if getattr(handler, "elastiscope_tap", False) else handler


def configured_metric_handler(metrics_api: Any, group: str) -> Any:
    """The handler a user configured on torch's metric stream ``group`` (behind our tap).

    What ``metrics_api.getStream(group).handler`` gives, read from torch's two module-level
    fields directly (torch 2.13.0): the agent asks four times per monitor pass, and building a
    ``MetricStream`` each time is most of the cost of asking.
    """
    handler = metrics_api._metrics_map.get(group, metrics_api._default_metrics_handler)
    return handler.previous if getattr(handler, "elastiscope_tap", False) else handler


def join_jitter_switch() -> JoinJitterSwitch | None:
    """The switch in torch's dynamic rendezvous, or None while the patches are not applied."""
    dynamic_rendezvous = sys.modules.get(_DYNAMIC_RENDEZVOUS)
    switch = getattr(dynamic_rendezvous, "_delay", None)
    return switch if isinstance(switch, JoinJitterSwitch) else None


# ---- apply and remove, one pair per patch ----------------------------------------------------


def _tap_metric_stream(metrics_api: Any) -> None:
    tap_class = _metric_tap_class(metrics_api.MetricHandler)
    if not _is_metric_tap(metrics_api._default_metrics_handler):
        metrics_api.configure(tap_class(metrics_api._default_metrics_handler))
    for group, handler in list(metrics_api._metrics_map.items()):
        if not _is_metric_tap(handler):
            metrics_api.configure(tap_class(handler), group)


def _untap_metric_stream(metrics_api: Any) -> None:
    if _is_metric_tap(metrics_api._default_metrics_handler):
        metrics_api.configure(metrics_api._default_metrics_handler.previous)
    for group, handler in list(metrics_api._metrics_map.items()):
        if _is_metric_tap(handler):
            metrics_api.configure(handler.previous, group)


def _tap_rendezvous_events(events: Any, handlers: Any) -> RendezvousLogTap:
    current = handlers._log_handlers.get(_RDZV_DESTINATION)
    if isinstance(current, RendezvousLogTap):
        return current
    tap = RendezvousLogTap(current)
    handlers._log_handlers[_RDZV_DESTINATION] = tap
    # torch caches one logger per destination, holding the handler of its creation time.
    cached_logger = events._events_loggers.get(_RDZV_DESTINATION)
    if cached_logger is not None:
        cached_logger.addHandler(tap)
    return tap


def _untap_rendezvous_events(events: Any, handlers: Any) -> None:
    tap = handlers._log_handlers.get(_RDZV_DESTINATION)
    if not isinstance(tap, RendezvousLogTap):
        return
    if tap.previous is not None:
        handlers._log_handlers[_RDZV_DESTINATION] = tap.previous
    else:
        del handlers._log_handlers[_RDZV_DESTINATION]
    cached_logger = events._events_loggers.get(_RDZV_DESTINATION)
    if cached_logger is not None:
        cached_logger.removeHandler(tap)


def _swap_recorders(events: Any, log_tap: RendezvousLogTap) -> None:
    recorder = RendezvousRecorder(events.construct_and_record_rdzv_event, log_tap)
    for module_name in _RDZV_RECORDING_MODULES:
        module = _import(module_name)
        if module is not None and getattr(module, "construct_and_record_rdzv_event", None) is recorder.original:
            module.construct_and_record_rdzv_event = recorder


def _restore_recorders() -> None:
    for module_name in _RDZV_RECORDING_MODULES:
        module = sys.modules.get(module_name)
        recorder = getattr(module, "construct_and_record_rdzv_event", None)
        if isinstance(recorder, RendezvousRecorder):
            module.construct_and_record_rdzv_event = recorder.original


def _patch_dynamic_rendezvous(dynamic_rendezvous: Any) -> None:
    current_delay = getattr(dynamic_rendezvous, "_delay", None)
    if callable(current_delay) and not isinstance(current_delay, JoinJitterSwitch):
        dynamic_rendezvous._delay = JoinJitterSwitch(current_delay)
    elif not callable(current_delay):
        logger.debug("torch's dynamic rendezvous has no _delay; join jitter left as is")
    current_lookup = getattr(dynamic_rendezvous, "get_method_name", None)
    if callable(current_lookup) and not isinstance(current_lookup, MethodNameLookup):
        dynamic_rendezvous.get_method_name = MethodNameLookup(current_lookup)


def _unpatch_dynamic_rendezvous(dynamic_rendezvous: Any) -> None:
    for attribute, patch_class in (("_delay", JoinJitterSwitch), ("get_method_name", MethodNameLookup)):
        patch = getattr(dynamic_rendezvous, attribute, None)
        if isinstance(patch, patch_class):
            setattr(dynamic_rendezvous, attribute, patch.original)


def _import(module_name: str) -> Any:
    try:
        return __import__(module_name, fromlist=["_"])
    except Exception:  # an older or trimmed torch without this module: that patch is skipped
        return None


# ---- the public switch -------------------------------------------------------------------------


def apply() -> bool:
    """Put every patch into torch's modules (those already in stay). False if torch is missing."""
    with _apply_lock:
        metrics_api = _import(_METRICS_API)
        events = _import("torch.distributed.elastic.events")
        handlers = _import("torch.distributed.elastic.events.handlers")
        if metrics_api is None or events is None or handlers is None:
            return False
        _tap_metric_stream(metrics_api)
        log_tap = _tap_rendezvous_events(events, handlers)
        _swap_recorders(events, log_tap)
        dynamic_rendezvous = _import(_DYNAMIC_RENDEZVOUS)
        if dynamic_rendezvous is not None:
            _patch_dynamic_rendezvous(dynamic_rendezvous)
    state.undo_on_reset(remove)
    return True


def remove() -> None:
    """Give torch back what ``apply()`` replaced (where ours is still in place)."""
    with _apply_lock:
        metrics_api = sys.modules.get(_METRICS_API)
        if metrics_api is not None:
            _untap_metric_stream(metrics_api)
        events = sys.modules.get("torch.distributed.elastic.events")
        handlers = sys.modules.get("torch.distributed.elastic.events.handlers")
        if events is not None and handlers is not None:
            _untap_rendezvous_events(events, handlers)
        _restore_recorders()
        dynamic_rendezvous = sys.modules.get(_DYNAMIC_RENDEZVOUS)
        if dynamic_rendezvous is not None:
            _unpatch_dynamic_rendezvous(dynamic_rendezvous)


def applied() -> bool:
    """True while torch's rendezvous events and metrics flow into the pipeline."""
    handlers = sys.modules.get("torch.distributed.elastic.events.handlers")
    metrics_api = sys.modules.get(_METRICS_API)
    if handlers is None or metrics_api is None:
        return False
    return (isinstance(handlers._log_handlers.get(_RDZV_DESTINATION), RendezvousLogTap)
            and _is_metric_tap(metrics_api._default_metrics_handler))
