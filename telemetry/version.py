"""Elastiscope's version, in a leaf that imports nothing, so every module may read it without
importing the ``telemetry`` package (whose ``__init__`` loads the composition root)."""

__version__ = "0.1.0"
