"""The parsers of ``elastiscope run`` and ``elastiscope events``: every flag, defined once.

``run`` takes every flag of torch 2.13's ``torchrun`` with the same spellings, defaults and
``PET_<DEST>`` environment variables, plus our observability flags, which read
``ELASTISCOPE_<DEST>`` instead. A value given on the command line wins over the variable.
Parsing imports neither torch nor the web stack, so bad input is refused at once.
"""

from __future__ import annotations

import argparse
import difflib
import os

from agent.cli.errors import UsageError
from agent.cli.messages import PROG

__all__ = ["build_run_parser", "build_events_parser", "build_stacks_parser", "is_off", "DEFAULT_RUNS_DIR",
           "DEFAULT_METRICS_LINGER", "NPROC_NAMES", "NUMA_MODES"]

DEFAULT_RUNS_DIR = "runs"
DEFAULT_METRICS_LINGER = 5.0
NPROC_NAMES = ("auto", "cpu", "gpu", "xpu")
# torch 2.13's torch.numa.binding.AffinityMode values; checked against torch when used.
NUMA_MODES = ("node", "socket", "exclusive", "core-complex")
_OFF_WORDS = {"off", "none", "no", "false", "disabled"}


def is_off(value: str) -> bool:
    """Whether a flag's value turns its feature off (``--metrics-port off``, ``--event-log none``)."""
    return value.strip().lower() in _OFF_WORDS


_UNRECOGNIZED = "unrecognized arguments: "


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting, and suggests the
    flag a misspelt one probably meant."""

    def error(self, message: str):  # type: ignore[override]
        if message.startswith(_UNRECOGNIZED):
            message += "".join(self._suggestions(message[len(_UNRECOGNIZED):].split()))
        raise UsageError(message)

    def _suggestions(self, unknown: list[str]) -> list[str]:
        known = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        hints = []
        for word in unknown:
            flag = word.split("=", 1)[0]
            if not flag.startswith("--"):
                continue
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
            if close:
                hints.append(f"; did you mean {close[0]}?" if len(unknown) == 1
                             else f"; {flag}: did you mean {close[0]}?")
        return hints


class _EnvValue(argparse.Action):
    """An option whose default comes from an environment variable when it is set.

    String defaults go through ``type`` like command-line values, so a bad variable is reported
    by argparse naming the flag.
    """

    def __init__(self, option_strings, dest, env_prefix="PET_", default=None, required=False, **kw):
        self.env_var = f"{env_prefix}{dest.upper()}"
        value = os.environ.get(self.env_var)
        if value is not None:
            default, required = value, False
        super().__init__(option_strings, dest, default=default, required=required, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


class _EnvFlag(argparse.Action):
    """A switch that is also on when its environment variable holds a non-zero integer."""

    def __init__(self, option_strings, dest, env_prefix="PET_", default=False, **kw):
        self.env_var = f"{env_prefix}{dest.upper()}"
        raw = os.environ.get(self.env_var)
        if raw is not None:
            try:
                default = bool(int(raw))
            except ValueError:
                raise UsageError(f"{self.env_var} must be 0 or 1, not {raw!r}") from None
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)


class _OurEnvValue(_EnvValue):
    """Our own options read ELASTISCOPE_* variables instead of torchrun's PET_*."""

    def __init__(self, *args, **kw):
        super().__init__(*args, env_prefix="ELASTISCOPE_", **kw)


class _OurEnvFlag(_EnvFlag):
    """Our own switches read ELASTISCOPE_* variables instead of torchrun's PET_*."""

    def __init__(self, *args, **kw):
        super().__init__(*args, env_prefix="ELASTISCOPE_", **kw)


def _port_or_off(value: str) -> int | None:
    if is_off(value):
        return None
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number or 'off', not {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {port}")
    return port


def _non_negative_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {value!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return seconds


def _ratio_over_one(value: str) -> float:
    try:
        ratio = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {value!r}") from None
    if not 1.0 < ratio < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 1, not {value}")
    return ratio


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return number


def _comma_list(value: str) -> list[str]:
    # torchrun's format: items split on ',', and ',,' stands for a literal comma.
    return [part.replace("\0", ",") for part in value.replace(",,", "\0").split(",")]


def _add_size_flags(p: argparse.ArgumentParser) -> None:
    size = p.add_argument_group("workers and nodes (torchrun)")
    size.add_argument("--nnodes", action=_EnvValue, type=str, default="1:1",
                      help="number of nodes, or MIN:MAX for an elastic range (default 1:1)")
    size.add_argument("--nproc-per-node", "--nproc_per_node", action=_EnvValue, type=str,
                      default="1",
                      help="workers per node: an integer, or auto, cpu, gpu, xpu (default 1)")


def _add_rendezvous_flags(p: argparse.ArgumentParser) -> None:
    env = _EnvValue
    rdzv = p.add_argument_group("rendezvous (torchrun)")
    rdzv.add_argument("--rdzv-backend", "--rdzv_backend", action=env, type=str, default="static",
                      help="rendezvous backend from torch's registry: static, c10d, etcd, etcd-v2")
    rdzv.add_argument("--rdzv-endpoint", "--rdzv_endpoint", action=env, type=str, default="",
                      help="rendezvous endpoint, HOST[:PORT]")
    rdzv.add_argument("--rdzv-id", "--rdzv_id", action=env, type=str, default="none",
                      help="job id shared by all nodes")
    rdzv.add_argument("--rdzv-conf", "--rdzv_conf", action=env, type=str, default="",
                      help="extra rendezvous settings, KEY=VALUE,KEY2=VALUE2")
    rdzv.add_argument("--standalone", action=_EnvFlag,
                      help="single node on an embedded c10d store at a free port (also the default "
                      "for one node without --rdzv-endpoint or --master-port)")


def _add_supervision_flags(launch) -> None:
    """What the workers run and how the agent watches them."""
    env, flag = _EnvValue, _EnvFlag
    launch.add_argument("--max-restarts", "--max_restarts", action=env, type=int, default=0,
                        help="worker group restarts before the job fails (default 0)")
    launch.add_argument("--monitor-interval", "--monitor_interval", action=env, type=float,
                        default=0.1, help="seconds between worker checks (default 0.1)")
    launch.add_argument("--start-method", "--start_method", action=env, type=str, default="spawn",
                        choices=["spawn", "fork", "forkserver"],
                        help="multiprocessing start method for function entry points")
    launch.add_argument("--event-log-handler", "--event_log_handler", action=env, type=str,
                        default="null", help="extra destination for torch-style events "
                        "(null, console, framework_logger, ...); all events reach the event log")
    launch.add_argument("--role", action=env, type=str, default="default",
                        help="role of the workers (default 'default')")
    launch.add_argument("-m", "--module", action=flag,
                        help="run the script as a module, like python -m")
    launch.add_argument("--no-python", "--no_python", action=flag,
                        help="run the script as a program, without the Python interpreter")
    launch.add_argument("--run-path", "--run_path", action=flag,
                        help="run the script with runpy.run_path in the worker process "
                        "(takes precedence over --no-python)")


def _add_worker_output_flags(launch) -> None:
    """Where the workers' stdout and stderr go."""
    env = _EnvValue
    launch.add_argument("--log-dir", "--log_dir", action=env, type=str, default=None,
                        help="base directory for worker log files")
    launch.add_argument("-r", "--redirects", action=env, type=str, default="0",
                        help="redirect worker stdout/stderr to log files: 0-3, or "
                        "LOCAL_RANK:N,... (1 out, 2 err, 3 both)")
    launch.add_argument("-t", "--tee", action=env, type=str, default="0",
                        help="copy worker streams to log files and the console (as --redirects)")
    launch.add_argument("--local-ranks-filter", "--local_ranks_filter", action=env, type=str,
                        default="", help="only show these local ranks on the console, e.g. 0,1")
    launch.add_argument("--duplicate-stdout-filters", "--duplicate_stdout_filters", action=env,
                        type=_comma_list, default=[],
                        help="also write stdout lines containing any of these strings to a file")
    launch.add_argument("--duplicate-stderr-filters", "--duplicate_stderr_filters", action=env,
                        type=_comma_list, default=[],
                        help="also write stderr lines containing any of these strings to a file")


def _add_node_flags(launch) -> None:
    """Where this node is, and how its workers are placed and stopped."""
    env = _EnvValue
    launch.add_argument("--node-rank", "--node_rank", action=env, type=int, default=0,
                        help="rank of this node (static rendezvous only)")
    launch.add_argument("--master-addr", "--master_addr", action=env, type=str,
                        default="127.0.0.1", help="address of node rank 0 (static rendezvous)")
    launch.add_argument("--master-port", "--master_port", action=env, type=int, default=None,
                        help="port on node rank 0 (static rendezvous; default 29500)")
    launch.add_argument("--local-addr", "--local_addr", action=env, type=str, default=None,
                        help="address of this node (default: its FQDN)")
    launch.add_argument("--logs-specs", "--logs_specs", type=str, default=None,
                        help="name of a torchrun.logs_specs entry point to use for worker logs")
    launch.add_argument("--numa-binding", "--numa_binding", type=str, default=None,
                        choices=NUMA_MODES, help="bind workers to CPUs near their GPUs")
    launch.add_argument("--signals-to-handle", "--signals_to_handle", action=env, type=str,
                        default="SIGTERM,SIGINT,SIGHUP,SIGQUIT",
                        help="signals the agent forwards to the workers before stopping")
    launch.add_argument("--shutdown-timeout", "--shutdown_timeout", action=env, type=int,
                        default=None, help="seconds between the stop signal and SIGKILL "
                        "(default TORCH_ELASTIC_SHUTDOWN_TIMEOUT or 30)")
    launch.add_argument("--virtual-local-rank", "--virtual_local_rank", action=_EnvFlag,
                        help="LOCAL_RANK=0 in every worker, each seeing only its own GPU")


def _add_endpoint_flags(obs) -> None:
    value = _OurEnvValue
    obs.add_argument("--metrics-host", action=value, type=str, default="127.0.0.1",
                     metavar="HOST", help="address of the HTTP endpoint (default 127.0.0.1)")
    obs.add_argument("--metrics-port", action=value, type=_port_or_off, default="0",
                     metavar="PORT", help="port of the HTTP endpoint: 0 for a free one (default), off to disable")
    obs.add_argument("--metrics-linger", action=value, type=_non_negative_seconds,
                     default=str(DEFAULT_METRICS_LINGER), metavar="SECONDS",
                     help="if /metrics was scraped during the run, keep the endpoint up after "
                     "the job ends until the next scrape, at most this many seconds; never "
                     f"scraped: no wait (default {DEFAULT_METRICS_LINGER:g})")


def _add_telemetry_flags(obs) -> None:
    value = _OurEnvValue
    obs.add_argument("--event-log", action=value, type=str, default=None, metavar="PATH",
                     help="JSON Lines event log: a file, a directory (one file per run), or off "
                     f"(default ./{DEFAULT_RUNS_DIR}/<time>-<run id>.jsonl)")
    obs.add_argument("--otlp-endpoint", action=value, type=str, default=None, metavar="URL",
                     help="send traces and events over OTLP/HTTP to this base URL")
    obs.add_argument("--pushgateway", action=value, type=str, default=None, metavar="URL",
                     help="push the final metrics to this Prometheus pushgateway")
    obs.add_argument("--log-format", action=value, type=str, default="auto",
                     choices=["auto", "json", "console"],
                     help="agent log lines: console, json, or auto (console on a terminal)")


def _add_access_flags(obs) -> None:
    value, flag = _OurEnvValue, _OurEnvFlag
    obs.add_argument("--token", action=value, type=str, default=None, metavar="TOKEN",
                     help="bearer token required by the endpoint (not by /healthz, /readyz)")
    obs.add_argument("--no-token-required", action=flag,
                     help="allow a non-loopback --metrics-host without --token")
    obs.add_argument("--no-warm-standby", action=flag,
                     help="start every attempt's workers cold instead of from interpreters kept "
                          "ready for a restart (workers then show their own command line in /proc)")
    obs.add_argument("--no-progress", action=flag,
                     help="do not count each optimizer.step() as a training step (no hook in the "
                          "workers); steps reported through elastiscope.progress still count")


def _add_standby_flags(obs) -> None:
    value = _OurEnvValue
    obs.add_argument("--preload", action=value, type=str, default=None, metavar="MODULE,...",
                     help="modules the standbys import while they wait for a restart, on top of "
                          "torch and what a DDP job's first step imports (those only when the "
                          "workers use torch); 'none': nothing, not even those")
    obs.add_argument("--standby-memory-limit", action=value, type=int, default=None, metavar="MIB",
                     help="proportional memory all preloaded standbys may take; past it they are "
                          "replaced by bare interpreters (default 4096; 0: no limit)")


def _stall_timeout(value: str) -> float | str | None:
    """Seconds (> 0), ``auto``, or off (None)."""
    if is_off(value):
        return None
    if value.strip().lower() == "auto":
        return "auto"
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seconds, 'auto' or 'off', not {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
    return seconds


def _positive_seconds(value: str) -> float:
    seconds = _non_negative_seconds(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
    return seconds


def _add_stall_flags(obs) -> None:
    # Stalls (issue 14; agent/stalls.py has the rules, docs/reference.md says them in full).
    value = _OurEnvValue
    obs.add_argument("--stall-timeout", action=value, type=_stall_timeout, default="auto",
                     metavar="SECONDS|auto|off",
                     help="a worker is stalled after this long without progress; auto (default): "
                          "max(60s, 10 x p99 of its step times), once 10 steps are known")
    obs.add_argument("--first-step-timeout", action=value, type=_positive_seconds, default=600.0,
                     metavar="SECONDS",
                     help="stalled before its first step after this long, for a worker known to "
                          "report progress (default 600)")
    obs.add_argument("--on-stall", action=value, type=str, default="report",
                     choices=("restart", "fail", "report"),
                     help="after keeping every worker's stack: restart (reason stall), fail, or "
                          "report only (default)")


def _add_straggler_flags(obs) -> None:
    # Defaults (None here) are agent.stragglers' (1.5 and 10), not imported: parsing stays lean.
    value = _OurEnvValue
    obs.add_argument("--straggler-threshold", action=value, type=_ratio_over_one, default=None,
                     metavar="RATIO", help="flag a worker whose DDP forward time stays over RATIO "
                     "times its local peers' median (default 1.5)")
    obs.add_argument("--straggler-steps", action=value, type=_positive_int, default=None,
                     metavar="STEPS", help="... for this many consecutive steps; it recovers after "
                     "as many steps back under (default 10)")


def build_run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} run",
        description="Launch and supervise a distributed PyTorch job, like torchrun, with metrics, "
        "events, traces and an HTTP endpoint.",
        epilog="torchrun's flags also read PET_<FLAG> environment variables; the observability "
        "flags read ELASTISCOPE_<FLAG> (e.g. ELASTISCOPE_METRICS_PORT, ELASTISCOPE_TOKEN).",
    )
    _add_size_flags(p)
    _add_rendezvous_flags(p)
    launch = p.add_argument_group("launching and supervising (torchrun)")
    _add_supervision_flags(launch)
    _add_worker_output_flags(launch)
    _add_node_flags(launch)
    obs = p.add_argument_group("observability (elastiscope)")
    _add_endpoint_flags(obs)
    _add_telemetry_flags(obs)
    _add_access_flags(obs)
    _add_standby_flags(obs)
    _add_stall_flags(obs)
    _add_straggler_flags(obs)
    p.add_argument("training_script", type=str,
                   help="the training script (or module with -m, or program with --no-python)")
    p.add_argument("training_script_args", nargs=argparse.REMAINDER,
                   help="arguments for the training script")
    return p


def build_stacks_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} stacks",
        description="Every worker's Python stack of a running job, read now without stopping it, "
        "and where each rank is (collective, data loading, user code file:line, not responding).",
    )
    p.add_argument("target", nargs="?", metavar="URL|path",
                   help="the run's endpoint URL, or its event log (a file, or a directory: its newest "
                   f"log; default ./{DEFAULT_RUNS_DIR}), which names the endpoint")
    p.add_argument("--token", action=_OurEnvValue, type=str, default=None, metavar="TOKEN",
                   help="the endpoint's bearer token, if it requires one")
    p.add_argument("--json", action="store_true", help="print the dump as JSON")
    return p


def build_events_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} events",
        description="Summarise a run from its event log: attempts, restarts and why, failures "
        "with rank, exit code and error, rendezvous and restart durations.",
    )
    p.add_argument("paths", nargs="*", metavar="path",
                   help="event log file, or a directory: its newest *.jsonl merged with the logs of "
                   f"the same job's other nodes (default ./{DEFAULT_RUNS_DIR}); several logs (one per "
                   "node) merge into one job timeline, root cause first")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--all", action="store_true", help="list every event in the timeline")
    return p
