"""The smallest real job through the library API: a SimpleElasticAgent subclass, two workers,
one gloo all-reduce, torch's static rendezvous on 127.0.0.1. Prints the events it produced.

    python examples/minimal_agent.py
"""

import os
import signal
import subprocess
import sys

import torch.distributed.elastic.rendezvous.registry as rdzv_registry
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.utils.distributed import get_free_port

from agent.api import RunResult, SimpleElasticAgent, WorkerSpec, WorkerState
from telemetry import get_pipeline

WORKER = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"rank {dist.get_rank()}/{dist.get_world_size()}: all_reduce -> {t.item()}", flush=True)
dist.destroy_process_group()
"""


class SubprocessAgent(SimpleElasticAgent):
    """Runs each worker as `python -c WORKER` with the torchelastic environment."""

    def __init__(self, spec):
        super().__init__(spec)
        self._procs = {}

    def _start_workers(self, worker_group):
        ids = {}
        for w in worker_group.workers:
            env = dict(os.environ, RANK=str(w.global_rank), LOCAL_RANK=str(w.local_rank),
                       WORLD_SIZE=str(w.world_size), MASTER_ADDR=str(worker_group.master_addr),
                       MASTER_PORT=str(worker_group.master_port), TORCHELASTIC_USE_AGENT_STORE="True")
            p = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
            self._procs[w.local_rank] = p
            ids[w.local_rank] = p.pid
        return ids

    def _stop_workers(self, worker_group):
        for p in self._procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def _monitor_workers(self, worker_group):
        codes = {w.global_rank: self._procs[w.local_rank].poll() for w in worker_group.workers}
        failures = {r: ProcessFailure(local_rank=r, pid=0, exitcode=c, error_file="<none>")
                    for r, c in codes.items() if c not in (None, 0)}
        if failures:  # one failed rank fails the group
            return RunResult(WorkerState.FAILED, failures=failures)
        if any(c is None for c in codes.values()):
            return RunResult(WorkerState.HEALTHY)
        return RunResult(WorkerState.SUCCEEDED, return_values={r: None for r in codes})

    def _shutdown(self, death_sig=signal.SIGTERM, timeout=30):
        self._stop_workers(self._worker_group)


def main():
    rdzv = rdzv_registry.get_rendezvous_handler(RendezvousParameters(
        backend="static", endpoint=f"127.0.0.1:{get_free_port()}", run_id="minimal",
        min_nodes=1, max_nodes=1, rank=0))
    spec = WorkerSpec(role="trainer", local_world_size=2, entrypoint=sys.executable,
                      rdzv_handler=rdzv, max_restarts=0, local_addr="127.0.0.1")
    result = SubprocessAgent(spec).run()
    for event in get_pipeline().find("memory").events():
        print(f"event {event.name:45s} state={event.metadata.get('state')}")
    print(f"result: {result.state.value}")
    sys.exit(1 if result.is_failed() else 0)


if __name__ == "__main__":
    main()
