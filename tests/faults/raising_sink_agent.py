"""``elastiscope run`` with two sinks that raise on every record.

    python raising_sink_agent.py [elastiscope run arguments...]

One is synchronous (it runs on the agent's own thread, inside every ``emit``), one is a
``record`` destination named ``raising`` (queued, selected with ``--event-log-handler raising``).
Both must be counted and contained: the job runs and exits as if they were not there.
"""

import sys

import agent.cli.run as cli_run
from agent.cli import main
from telemetry.sink import Sink
from telemetry.state import register_destination


class RaisingSink(Sink):
    def __init__(self, name: str, synchronous: bool) -> None:
        self.name = name
        self.synchronous = synchronous

    def emit(self, record):
        raise RuntimeError(f"sink {self.name} refuses {type(record).__name__}")


_configure = cli_run.configure


def configure_with_raising_sink(*args, **kwargs):
    pipeline = _configure(*args, **kwargs)
    pipeline.add_sink(RaisingSink("raising_sync", synchronous=True))
    return pipeline


# The CLI's own reference: patching telemetry.configure would not reach the name it imported.
cli_run.configure = configure_with_raising_sink
register_destination("raising", lambda: RaisingSink("raising", synchronous=False))

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
