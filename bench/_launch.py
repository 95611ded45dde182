"""A minimal torchrun-like launcher for the benches: one LocalElasticAgent on this host.

    python bench/_launch.py [--standalone] --nproc-per-node 4 --max-restarts 1 script.py [args...]

It accepts the subset of torchrun's flags the benches use, with torchrun's meaning, so a bench
can swap it for ``elastiscope run`` (or torchrun) by changing one command prefix. Rendezvous is
torch's c10d handler on 127.0.0.1 with an ephemeral port (what ``--standalone`` sets up), or
torch's static handler with ``--rdzv-backend static``.

Exit status: 0 when the workers succeed, 1 when they fail, 128+N after signal N, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import uuid


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, no usage dump
        sys.stderr.write(f"_launch.py: error: {message}\n")
        sys.exit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _OneLineParser(prog="_launch.py", allow_abbrev=False)
    p.add_argument("--standalone", action="store_true", help="accepted for torchrun parity")
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1)
    p.add_argument("--max-restarts", "--max_restarts", type=int, default=0)
    p.add_argument("--monitor-interval", "--monitor_interval", type=float, default=0.1)
    p.add_argument("--rdzv-backend", "--rdzv_backend", choices=("c10d", "static"), default="c10d")
    p.add_argument("--role", default="default")
    p.add_argument("--shutdown-timeout", type=int, default=30)
    p.add_argument("--no-warm-standby", action="store_true", help="always start workers cold")
    p.add_argument("training_script")
    p.add_argument("training_script_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.nproc_per_node < 1:
        p.error("--nproc-per-node must be at least 1")
    if args.max_restarts < 0:
        p.error("--max-restarts must not be negative")
    if args.monitor_interval <= 0:
        p.error("--monitor-interval must be positive")
    return args


def build_agent(args: argparse.Namespace):
    """The LocalElasticAgent these arguments describe (heavy imports happen here)."""
    import torch.distributed.elastic.rendezvous.registry as rdzv_registry
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.utils.distributed import get_free_port

    from agent.api import WorkerSpec
    from agent.local import LocalElasticAgent

    run_id = str(uuid.uuid4())
    if args.rdzv_backend == "static":
        params = RendezvousParameters(
            backend="static", endpoint=f"127.0.0.1:{get_free_port()}", run_id=run_id,
            min_nodes=1, max_nodes=1, rank=0,
        )
    else:
        params = RendezvousParameters(
            backend="c10d", endpoint="127.0.0.1:0", run_id=run_id, min_nodes=1, max_nodes=1,
        )
    rdzv_handler = rdzv_registry.get_rendezvous_handler(params)
    spec = WorkerSpec(
        role=args.role,
        local_world_size=args.nproc_per_node,
        entrypoint=sys.executable,
        # torchrun runs scripts unbuffered; so do we, so both produce the same worker.
        args=("-u", args.training_script, *args.training_script_args),
        rdzv_handler=rdzv_handler,
        max_restarts=args.max_restarts,
        monitor_interval=args.monitor_interval,
        local_addr="127.0.0.1",
    )
    return LocalElasticAgent(
        spec, shutdown_timeout=args.shutdown_timeout, warm_standby=not args.no_warm_standby
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from torch.distributed.elastic.multiprocessing import SignalException

    agent = build_agent(args)
    try:
        result = agent.run()
    except SignalException as e:
        return 128 + int(e.sigval)
    finally:
        agent.get_worker_group().spec.rdzv_handler.shutdown()
    return 1 if result.is_failed() else 0


if __name__ == "__main__":
    sys.exit(main())
