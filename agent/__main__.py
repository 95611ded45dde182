"""``python -m agent`` is the ``elastiscope`` command."""

from agent.cli import entry

entry()
