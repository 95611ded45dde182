"""``python -m agent.cli`` is the ``elastiscope`` command, as it was when this was one module."""

from agent.cli import entry

entry()
