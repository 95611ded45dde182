"""Elastiscope's agent: a torchelastic-compatible elastic agent with telemetry built in.

``agent.api`` mirrors ``torch.distributed.elastic.agent.server.api`` and calls out to the
modules that hold what Elastiscope adds to it: ``agent.run_events`` (the agent's own events),
``agent.torchelastic_metrics`` (the path of torch's agent metrics), ``agent.exit_barrier``,
``agent.hostname`` and ``agent.torch_patches`` (every change made inside torch, applied when an
agent is constructed). ``agent.local`` runs host-local worker processes; ``agent.cli`` is
``elastiscope run``. Nothing is imported here, so ``import agent`` stays free.
"""
