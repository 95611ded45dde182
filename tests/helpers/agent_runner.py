"""Runs one LocalElasticAgent in its own process and logs its events to a JSON Lines file.

    agent_runner.py EVENTS_FILE NPROC SHUTDOWN_TIMEOUT SCRIPT [ARGS...]

For tests that need to signal or kill the agent. The event file is written through a tiny
synchronous sink (one line per event, flushed at once) so that nothing is lost when the agent
dies. Exit status: 0 succeeded, 1 failed, 128+N after signal N.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_agent import script_spec  # noqa: E402
from telemetry.pipeline import Pipeline  # noqa: E402
from telemetry.sink import Sink  # noqa: E402
from telemetry.state import set_pipeline  # noqa: E402


class JsonLinesSink(Sink):
    name = "test-jsonl"
    synchronous = True
    metrics = False

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)

    def emit(self, record) -> None:
        self._file.write(record.serialize() + "\n")


def main() -> int:
    events, nproc, shutdown_timeout, script, *args = sys.argv[1:]
    set_pipeline(Pipeline([JsonLinesSink(events)]))
    from torch.distributed.elastic.multiprocessing import SignalException

    from agent.local import LocalElasticAgent

    spec = script_spec(script, *args, nproc=int(nproc))
    agent = LocalElasticAgent(spec, shutdown_timeout=int(shutdown_timeout))
    try:
        result = agent.run()
    except SignalException as e:
        return 128 + int(e.sigval)
    return 1 if result.is_failed() else 0


if __name__ == "__main__":
    sys.exit(main())
