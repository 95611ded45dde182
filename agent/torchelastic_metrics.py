"""The agent's torchelastic metrics: the one path for what torch's agent puts on torch's stream.

There is one path per purpose for a metric data point:

* **The agent's torchelastic metrics** (``workers.<role>.*`` from ``agent.api.put_metric``, and
  the ``<Class>.<method>.success/failure/duration.ms`` timings of ``agent.api.prof``):
  :func:`publish` here. The point goes into the pipeline, and to the handler configured on
  torch's metric stream (``torch.distributed.elastic.metrics.configure``), which is where torch's
  agent would have sent it. If that handler is our tap on torch's stream, the one behind the tap
  gets the point instead: the pipeline already has it.
* **Elastiscope's own metrics** (worker resource usage and the like): ``telemetry.events.put_metric``,
  into the pipeline only; torch's stream never carried them.
* **Whatever else calls torch's own ``put_metric``**: torch's stream, which ``agent.torch_patches``
  taps into the pipeline.

torch is never imported here: if torch's metrics module was never loaded, nobody can have
configured a handler on it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from agent.torch_patches import configured_metric_handler
from telemetry import state

__all__ = ["publish", "TORCHELASTIC_GROUP"]

TORCHELASTIC_GROUP = "torchelastic"

logger = logging.getLogger(__name__)


def publish(name: str, value: Any, group: str = TORCHELASTIC_GROUP) -> None:
    """One of the agent's torchelastic data points: into the pipeline and torch's handler. Never raises.

    The run loop calls this four times per monitor pass, ten passes a second, for the whole job,
    so it is written flat: straight to the pipeline (what ``telemetry.events.put_metric`` does,
    one call less), which builds no record for the repeats every sink declines, then torch's
    handler, in place.
    """
    state.get_pipeline().publish_metric(group, name, value)
    torch_metrics = sys.modules.get("torch.distributed.elastic.metrics.api")
    if torch_metrics is None:  # torch's metrics never imported: nobody can have configured one
        return
    try:
        handler = configured_metric_handler(torch_metrics, group)
        if handler is None or isinstance(handler, torch_metrics.NullMetricHandler):
            return
        handler.emit(torch_metrics.MetricData(time.time(), group, name, value))
    except Exception:
        logger.debug("torch metric handler failed", exc_info=True)
