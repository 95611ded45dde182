"""Elastiscope's agent: a torchelastic-compatible elastic agent with telemetry built in.

``agent.api`` mirrors ``torch.distributed.elastic.agent.server.api``; ``agent.local`` runs
host-local worker processes; ``agent.cli`` is ``elastiscope run``. Nothing is imported here,
so ``import agent`` stays free.
"""
