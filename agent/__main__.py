"""``python -m agent`` is the ``elastiscope`` command."""

import sys

from agent.cli import main

sys.exit(main())
