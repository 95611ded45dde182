"""The worker side of ``--run-path``: run the training script in the worker's own interpreter.

The workers import this module to find the function they were handed, so it stays a leaf and
the package's ``__init__`` stays light: a worker pays for nothing of the launcher.
"""

from __future__ import annotations

import runpy
import sys

__all__ = ["run_script_path"]


def run_script_path(training_script: str, *training_script_args: str) -> None:
    """Entry point for --run-path: run the script in this (the worker) interpreter."""
    sys.argv = [training_script, *training_script_args]
    runpy.run_path(training_script, run_name="__main__")
