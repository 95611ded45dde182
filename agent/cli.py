"""The ``elastiscope`` command: ``run`` (a drop-in for ``torchrun``) and ``events`` (read a run's log).

``elastiscope run [torchrun flags] [observability flags] SCRIPT [ARGS]`` takes every flag of
torch 2.13's ``torchrun`` with the same meaning, defaults and ``PET_*`` environment variables,
plus its own flags (each also read from an ``ELASTISCOPE_*`` variable)::

    --metrics-host HOST      where the HTTP endpoint listens (127.0.0.1)
    --metrics-port PORT|off  its port; 0 picks a free one, off disables the endpoint (0)
    --metrics-linger SECS    keep the endpoint up this long after the job ends, or until the
                             next /metrics scrape, so the final state gets scraped (5)
    --event-log PATH|off     JSON Lines event log (default: ./runs/<time>-<run id>.jsonl)
    --otlp-endpoint URL      OpenTelemetry traces and logs over OTLP/HTTP
    --pushgateway URL        push the final metrics to a Prometheus pushgateway
    --log-format FMT         auto | json | console
    --token TOKEN            bearer token the endpoint requires (all routes but the probes)
    --no-token-required      allow a non-loopback --metrics-host without a token
    --no-warm-standby        start every attempt's workers cold (no interpreters kept ready)

Like ``torchrun``, a single-node job with no rendezvous endpoint runs on an embedded c10d store
(``--standalone``); nothing needs to be started by hand. Exit status: 0 when every worker
succeeded, 1 when the job failed (as ``torchrun``), 2 for bad input (one line on stderr).

Start-up is kept lean: argument checking imports neither torch nor the web stack. The endpoint's
socket listens before rendezvous, but FastAPI and uvicorn load on its own thread only at the
first request or a second after the workers are running, so they never delay a job's start.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import time
import uuid
from typing import Any, Callable, Sequence

__all__ = ["main", "build_run_parser", "build_events_parser", "run_script_path", "UsageError"]

log = logging.getLogger("agent.cli")

PROG = "elastiscope"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_RUNS_DIR = "runs"
DEFAULT_METRICS_LINGER = 5.0
# Seconds after the workers turn HEALTHY before the endpoint loads its web stack (if no request
# made it load sooner): long enough to stay out of the workers' own start-up.
ENDPOINT_WARM_UP_DELAY = 1.0
NPROC_NAMES = ("auto", "cpu", "gpu", "xpu")
# torch 2.13's torch.numa.binding.AffinityMode values; checked against torch when used.
NUMA_MODES = ("node", "socket", "exclusive", "core-complex")
_OFF = {"off", "none", "no", "false", "disabled"}


class UsageError(Exception):
    """Bad input from the person at the keyboard: one line on stderr, exit status 2."""


class JobError(Exception):
    """The job could not run (rendezvous failed, ...): one line on stderr, exit status 1."""


# ---- argument parsing ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


class _EnvValue(argparse.Action):
    """An option whose default comes from an environment variable when it is set.

    torchrun's flags read ``PET_<DEST>`` and ours ``ELASTISCOPE_<DEST>``; a value given on the
    command line wins. String defaults go through ``type`` like command-line values, so a bad
    variable is reported by argparse naming the flag.
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


def _ours(action):
    """Our own flags read ELASTISCOPE_* variables instead of torchrun's PET_*."""

    def make(*args, **kw):
        return action(*args, env_prefix="ELASTISCOPE_", **kw)

    return make


def _port_or_off(value: str) -> int | None:
    if value.strip().lower() in _OFF:
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


def _comma_list(value: str) -> list[str]:
    # torchrun's format: items split on ',', and ',,' stands for a literal comma.
    return [part.replace("\0", ",") for part in value.replace(",,", "\0").split(",")]


def build_run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} run",
        description="Launch and supervise a distributed PyTorch job, like torchrun, with metrics, "
        "events, traces and an HTTP endpoint.",
        epilog="torchrun's flags also read PET_<FLAG> environment variables; the observability "
        "flags read ELASTISCOPE_<FLAG> (e.g. ELASTISCOPE_METRICS_PORT, ELASTISCOPE_TOKEN).",
    )
    env, flag = _EnvValue, _EnvFlag

    size = p.add_argument_group("workers and nodes (torchrun)")
    size.add_argument("--nnodes", action=env, type=str, default="1:1",
                      help="number of nodes, or MIN:MAX for an elastic range (default 1:1)")
    size.add_argument("--nproc-per-node", "--nproc_per_node", action=env, type=str, default="1",
                      help="workers per node: an integer, or auto, cpu, gpu, xpu (default 1)")

    rdzv = p.add_argument_group("rendezvous (torchrun)")
    rdzv.add_argument("--rdzv-backend", "--rdzv_backend", action=env, type=str, default="static",
                      help="rendezvous backend from torch's registry: static, c10d, etcd, etcd-v2")
    rdzv.add_argument("--rdzv-endpoint", "--rdzv_endpoint", action=env, type=str, default="",
                      help="rendezvous endpoint, HOST[:PORT]")
    rdzv.add_argument("--rdzv-id", "--rdzv_id", action=env, type=str, default="none",
                      help="job id shared by all nodes")
    rdzv.add_argument("--rdzv-conf", "--rdzv_conf", action=env, type=str, default="",
                      help="extra rendezvous settings, KEY=VALUE,KEY2=VALUE2")
    rdzv.add_argument("--standalone", action=flag,
                      help="single node on an embedded c10d store at a free port (also the default "
                      "for one node without --rdzv-endpoint or --master-port)")

    launch = p.add_argument_group("launching and supervising (torchrun)")
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
    launch.add_argument("--virtual-local-rank", "--virtual_local_rank", action=flag,
                        help="LOCAL_RANK=0 in every worker, each seeing only its own GPU")

    ours_value, ours_flag = _ours(env), _ours(flag)
    obs = p.add_argument_group("observability (elastiscope)")
    obs.add_argument("--metrics-host", action=ours_value, type=str, default="127.0.0.1",
                     metavar="HOST", help="address of the HTTP endpoint (default 127.0.0.1)")
    obs.add_argument("--metrics-port", action=ours_value, type=_port_or_off, default="0",
                     metavar="PORT", help="port of the HTTP endpoint: 0 for a free one (default), off to disable")
    obs.add_argument("--metrics-linger", action=ours_value, type=_non_negative_seconds,
                     default=str(DEFAULT_METRICS_LINGER), metavar="SECONDS",
                     help="seconds the endpoint stays up after the job ends, unless /metrics is "
                     f"scraped sooner (default {DEFAULT_METRICS_LINGER:g})")
    obs.add_argument("--event-log", action=ours_value, type=str, default=None, metavar="PATH",
                     help="JSON Lines event log: a file, a directory (one file per run), or off "
                     f"(default ./{DEFAULT_RUNS_DIR}/<time>-<run id>.jsonl)")
    obs.add_argument("--otlp-endpoint", action=ours_value, type=str, default=None, metavar="URL",
                     help="send traces and events over OTLP/HTTP to this base URL")
    obs.add_argument("--pushgateway", action=ours_value, type=str, default=None, metavar="URL",
                     help="push the final metrics to this Prometheus pushgateway")
    obs.add_argument("--log-format", action=ours_value, type=str, default="auto",
                     choices=["auto", "json", "console"],
                     help="agent log lines: console, json, or auto (console on a terminal)")
    obs.add_argument("--token", action=ours_value, type=str, default=None, metavar="TOKEN",
                     help="bearer token required by the endpoint (not by /healthz, /readyz)")
    obs.add_argument("--no-token-required", action=ours_flag,
                     help="allow a non-loopback --metrics-host without --token")
    obs.add_argument("--no-warm-standby", action=ours_flag,
                     help="start every attempt's workers cold instead of from interpreters kept "
                          "ready for a restart (workers then show their own command line in /proc)")

    p.add_argument("training_script", type=str,
                   help="the training script (or module with -m, or program with --no-python)")
    p.add_argument("training_script_args", nargs=argparse.REMAINDER,
                   help="arguments for the training script")
    return p


def build_events_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"{PROG} events",
        description="Summarise a run from its event log: attempts, restarts and why, failures "
        "with rank, exit code and error, rendezvous and restart durations.",
    )
    p.add_argument("path", nargs="?", default=DEFAULT_RUNS_DIR,
                   help=f"event log file, or a directory: its newest *.jsonl (default ./{DEFAULT_RUNS_DIR})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--all", action="store_true", help="list every event in the timeline")
    return p


# ---- checking the request before anything starts ------------------------------------------


def _parse_nnodes(text: str) -> tuple[int, int]:
    parts = text.split(":")
    try:
        if len(parts) == 1:
            low = high = int(parts[0])
        elif len(parts) == 2:
            low, high = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise UsageError(f"--nnodes must be N or MIN:MAX, not {text!r}") from None
    if not 0 < low <= high:
        raise UsageError(f"--nnodes needs 0 < MIN <= MAX, got {text!r}")
    return low, high


def _check_nproc(text: str) -> None:
    try:
        n = int(text)
    except ValueError:
        if text not in NPROC_NAMES:
            raise UsageError(
                f"--nproc-per-node must be a positive integer or one of {', '.join(NPROC_NAMES)}, "
                f"not {text!r}"
            ) from None
        return
    if n < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, not {n}")


def _resolve_nproc(text: str) -> int:
    """torchrun's rules for auto/cpu/gpu/xpu (torch is imported only for the named values)."""
    try:
        return int(text)
    except ValueError:
        pass
    import torch

    if text == "cpu" or (text == "auto" and not torch.accelerator.is_available()):
        return torch._utils.cpu_count()
    if text == "auto":
        return torch.accelerator.device_count()
    device = {"gpu": torch.cuda, "xpu": torch.xpu}[text]
    if not device.is_available():
        raise UsageError(f"--nproc-per-node {text}: no {text.upper()} is available on this host")
    return device.device_count()


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[^:]*))?$")


def _parse_endpoint(endpoint: str, flag: str = "--rdzv-endpoint") -> tuple[str, int | None]:
    """HOST[:PORT] or [IPv6][:PORT]; the port, when present, must be 0-65535."""
    m = _HOST_PORT.match(endpoint.strip())
    if not m:
        raise UsageError(f"{flag} must be HOST[:PORT], not {endpoint!r}")
    host = m.group("v6") or m.group("host")
    port_text = m.group("port")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"{flag} {endpoint!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def _parse_rdzv_conf(text: str) -> dict[str, str]:
    conf: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--rdzv-conf must be KEY=VALUE,..., not {text!r}")
        conf[key.strip()] = value.strip()
    return conf


def _parse_ranks_filter(text: str) -> set[int] | None:
    if not text:
        return None
    try:
        ranks = {int(r) for r in text.split(",")}
    except ValueError:
        raise UsageError(
            f"--local-ranks-filter must be a comma-separated list of integers, not {text!r}"
        ) from None
    return ranks


def _check_entrypoint(args: argparse.Namespace) -> None:
    script = args.training_script
    if args.module:
        if args.no_python and not args.run_path:
            raise UsageError("--no-python and --module cannot be used together")
        return
    if args.no_python and not args.run_path:
        if not (shutil.which(script) or (os.path.isfile(script) and os.access(script, os.X_OK))):
            raise UsageError(f"program not found or not executable: {script}")
        return
    if not os.path.isfile(script):
        raise UsageError(f"training script not found: {script}")


def _standalone(args: argparse.Namespace) -> bool:
    """torchrun's rule: --standalone, or one static node with no endpoint and no master port."""
    if args.standalone:
        return True
    _, max_nodes = _parse_nnodes(args.nnodes)
    return (
        args.rdzv_backend == "static"
        and not args.rdzv_endpoint
        and args.master_port is None
        and max_nodes == 1
    )


def check_run_args(args: argparse.Namespace) -> None:
    """Every check that needs neither torch nor the network; UsageError on the first problem."""
    _parse_nnodes(args.nnodes)
    _check_nproc(args.nproc_per_node)
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts must be >= 0, not {args.max_restarts}")
    if not args.monitor_interval > 0:
        raise UsageError(f"--monitor-interval must be > 0, not {args.monitor_interval}")
    if args.shutdown_timeout is not None and args.shutdown_timeout < 0:
        raise UsageError(f"--shutdown-timeout must be >= 0, not {args.shutdown_timeout}")
    if args.rdzv_endpoint and not args.standalone:
        _, port = _parse_endpoint(args.rdzv_endpoint)
        if port is None and args.rdzv_backend == "static":
            raise UsageError(f"--rdzv-endpoint {args.rdzv_endpoint!r} needs a port for static "
                             "rendezvous")
    _parse_rdzv_conf(args.rdzv_conf)
    _parse_ranks_filter(args.local_ranks_filter)
    if args.master_port is not None and not 0 <= args.master_port <= 65535:
        raise UsageError(f"--master-port must be between 0 and 65535, not {args.master_port}")
    _check_entrypoint(args)


# ---- what to launch --------------------------------------------------------------------------


def run_script_path(training_script: str, *training_script_args: str) -> None:
    """Entry point for --run-path: run the script in this (the worker) interpreter."""
    import runpy

    sys.argv = [training_script, *training_script_args]
    runpy.run_path(training_script, run_name="__main__")


def _entrypoint(args: argparse.Namespace) -> tuple[Callable | str, list[str]]:
    if args.run_path:
        return run_script_path, [args.training_script, *args.training_script_args]
    if args.no_python:
        return args.training_script, list(args.training_script_args)
    cmd_args = ["-u"] + (["-m"] if args.module else []) + [args.training_script]
    return os.getenv("PYTHON_EXEC", sys.executable), cmd_args + list(args.training_script_args)


def _entrypoint_name(entrypoint: Callable | str, args: list[str]) -> str:
    if callable(entrypoint):
        return entrypoint.__name__
    if entrypoint == sys.executable or entrypoint == os.getenv("PYTHON_EXEC"):
        return next((a for a in args if not a.startswith("-")), "")
    return entrypoint


def _logs_specs_class(name: str | None):
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

    if name is None:
        return DefaultLogsSpecs
    from importlib import metadata

    found = metadata.entry_points().select(group="torchrun.logs_specs", name=name)
    if not found:
        raise UsageError(f"--logs-specs {name!r}: no such torchrun.logs_specs entry point")
    return next(iter(found)).load()


def _default_event_log(run_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    return os.path.join(DEFAULT_RUNS_DIR, f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}.jsonl")


def _event_log_setting(args: argparse.Namespace, run_id: str) -> str | None:
    value = args.event_log
    if value is None:
        return _default_event_log(run_id)
    if value.strip().lower() in _OFF:
        return None
    return value


class _StatusBoard:
    """The endpoint's status provider: the agent's snapshot once it exists, INIT before."""

    def __init__(self, run_id: str, role: str, max_restarts: int) -> None:
        self.agent: Any = None
        self._before = {
            "run_id": run_id, "role": role, "state": "INIT", "restarts_used": 0,
            "remaining_restarts": max_restarts, "max_restarts": max_restarts, "workers": [],
        }

    def __call__(self) -> dict[str, Any]:
        agent = self.agent
        return agent.status_snapshot() if agent is not None else dict(self._before)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# ---- elastiscope run ------------------------------------------------------------------------


class _Run:
    """One invocation of ``elastiscope run``, from checked arguments to exit status.

    The order matters for start-up time and for clean failures: the endpoint's socket is bound
    first and its web stack loads on its own thread while this one imports torch and builds the
    spec; telemetry is configured (creating the event log) only once the request is known to be
    good, so bad input leaves no files behind; the endpoint is announced before rendezvous.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.endpoint: Any = None
        self.status: _StatusBoard | None = None
        self.event_log: str | None = None
        self.started = False  # the agent was handed the job

    def prepare(self) -> None:
        """Identity and endpoint: everything that needs neither torch nor the telemetry config."""
        args = self.args
        if _standalone(args):
            args.rdzv_backend = "c10d"
            args.rdzv_endpoint = "localhost:0"
            args.rdzv_id = str(uuid.uuid4())
        if args.master_port is None:
            args.master_port = 29500
        self.status = _StatusBoard(args.rdzv_id, args.role, args.max_restarts)
        self.check_telemetry()
        if args.metrics_port is None:
            return
        from telemetry import get_pipeline, server

        try:
            server.check_exposure(args.metrics_host, args.token, not args.no_token_required)
            sock = server.bind_socket(args.metrics_host, args.metrics_port)
        except server.EndpointError as e:
            raise UsageError(str(e)) from None
        # configure() carries this ring over into the pipeline it builds, so the app can hold it
        # now. Lazy: the web stack loads at the first request or once the workers run.
        self.endpoint = server.serve_app(
            sock, self.status, get_pipeline().find("memory"), token=args.token, lazy=True
        )

    def launch(self) -> int:
        args = self.args
        # The agent reads these from the environment, as torch's launcher sets them.
        os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = args.signals_to_handle
        # torch >= 2.4 shares the agent's c10d TCPStore with the workers across restarts, and
        # keys left by the previous attempt make the restarted workers' init_process_group
        # connect to dead peers (pytorch/pytorch#135712). A fresh store per round avoids it.
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")

        nproc = _resolve_nproc(args.nproc_per_node)
        if nproc < 1:
            raise UsageError(f"--nproc-per-node {args.nproc_per_node} resolved to {nproc} workers")
        spec, agent_kwargs, entry_name = self._build_spec(nproc)
        self._configure_telemetry()
        self._announce()
        if "OMP_NUM_THREADS" not in os.environ and nproc > 1:
            os.environ["OMP_NUM_THREADS"] = "1"
            log.warning("OMP_NUM_THREADS not set: using 1 per worker (set it to tune)")

        from agent.local import LocalElasticAgent

        agent = LocalElasticAgent(spec=spec, **agent_kwargs)
        self.status.agent = agent
        self.started = True
        return self._supervise(agent, spec, entry_name)

    def _telemetry_env(self):
        if self.event_log is None:  # "off" must not fall back to the variable that said so
            return {k: v for k, v in os.environ.items() if k != "ELASTISCOPE_EVENT_LOG"}
        return os.environ

    def check_telemetry(self) -> None:
        """Validate the telemetry settings now, before torch loads; nothing is created yet."""
        from telemetry.config import ConfigError, resolve_settings

        args = self.args
        self.event_log = _event_log_setting(args, args.rdzv_id)
        try:
            resolve_settings(event_log=self.event_log, log_format=args.log_format,
                             otlp_endpoint=args.otlp_endpoint, pushgateway=args.pushgateway,
                             run_id=args.rdzv_id, role=args.role, env=self._telemetry_env())
        except ConfigError as e:
            raise UsageError(str(e)) from None

    def _configure_telemetry(self) -> None:
        import telemetry

        args = self.args
        env = self._telemetry_env()
        extra_sinks = []
        if self.endpoint is not None:
            from telemetry.server import WarmUpWhenHealthy

            extra_sinks.append(WarmUpWhenHealthy(self.endpoint, delay=ENDPOINT_WARM_UP_DELAY))
        try:
            pipeline = telemetry.configure(
                event_log=self.event_log,
                log_format=args.log_format,
                otlp_endpoint=args.otlp_endpoint,
                pushgateway=args.pushgateway,
                run_id=args.rdzv_id,
                role=args.role,
                env=env,
                extra_sinks=extra_sinks,
            )
        except telemetry.ConfigError as e:
            raise UsageError(str(e)) from None
        jsonl = pipeline.find("jsonl")
        if jsonl is not None and getattr(jsonl, "path", None) is not None:
            self.event_log = str(jsonl.path)

    def _announce(self) -> None:
        from telemetry.events import Event, EventSource, emit

        args = self.args
        if self.endpoint is not None:
            url = self.endpoint.url
            from agent.api import _get_fq_hostname

            emit(Event("elastiscope.endpoint.started", EventSource.AGENT, metadata={
                "run_id": args.rdzv_id, "role": args.role, "group_rank": None,
                "hostname": _get_fq_hostname(), "url": url,
                "host": str(self.endpoint.host), "port": int(self.endpoint.port),
                "token_required": bool(args.token), "pid": os.getpid(),
            }))
            log.info("endpoint listening on %s", url)
            _say(f"metrics {url}/metrics  status {url}/status  events {url}/events")
        if self.event_log:
            _say(f"event log {self.event_log}")

    def _build_spec(self, nproc: int):
        from torch.distributed.elastic.multiprocessing import Std
        from torch.distributed.elastic.rendezvous import RendezvousParameters
        from torch.distributed.elastic.rendezvous import registry as rdzv_registry

        from agent.api import WorkerSpec

        args = self.args
        min_nodes, max_nodes = _parse_nnodes(args.nnodes)
        rdzv_conf: dict[str, Any] = _parse_rdzv_conf(args.rdzv_conf)
        rdzv_conf.setdefault("timeout", 900)
        endpoint = args.rdzv_endpoint
        master_addr = master_port = None
        if args.rdzv_backend == "static":
            rdzv_conf["rank"] = args.node_rank
            if not endpoint:
                endpoint = f"{args.master_addr}:{args.master_port}"
            master_addr, master_port = _parse_endpoint(endpoint)
            if master_port is None:
                raise UsageError(f"--rdzv-endpoint {endpoint!r} needs a port for static rendezvous")
        elif args.node_rank != 0:
            log.warning("--node-rank is only used by static rendezvous; ignored for %s",
                        args.rdzv_backend)

        try:
            redirects, tee = Std.from_str(args.redirects), Std.from_str(args.tee)
        except ValueError:
            raise UsageError(f"--redirects/--tee must be 0-3 or LOCAL_RANK:N,..., not "
                             f"{args.redirects!r}/{args.tee!r}") from None
        logs_specs = _logs_specs_class(args.logs_specs)(
            log_dir=args.log_dir, redirects=redirects, tee=tee,
            local_ranks_filter=_parse_ranks_filter(args.local_ranks_filter),
        )

        numa_options = None
        if args.numa_binding is not None:
            from torch.numa.binding import AffinityMode, NumaOptions

            numa_options = NumaOptions(affinity_mode=AffinityMode(args.numa_binding))

        params = RendezvousParameters(
            backend=args.rdzv_backend, endpoint=endpoint, run_id=args.rdzv_id,
            min_nodes=min_nodes, max_nodes=max_nodes, local_addr=args.local_addr, **rdzv_conf,
        )
        try:
            handler = rdzv_registry.get_rendezvous_handler(params)
        except ValueError as e:  # unknown backend, bad configuration value
            raise UsageError(f"rendezvous: {_first_line(e)}") from None
        except Exception as e:  # cannot reach the store, ...
            # torch's message ends "See inner exception for details": name the endpoint and
            # give that inner exception, since the traceback holding it is not shown.
            cause = e.__cause__
            message = _first_line(e)
            if cause is not None:
                message = f"{message.rstrip('. ')}: {type(cause).__name__}: {_first_line(cause)}"
            raise JobError(f"rendezvous: {args.rdzv_backend} at {endpoint}: "
                           f"{type(e).__name__}: {message}") from None

        entrypoint, cmd_args = _entrypoint(args)
        spec = WorkerSpec(
            role=args.role, local_world_size=nproc, entrypoint=entrypoint, args=tuple(cmd_args),
            rdzv_handler=handler, max_restarts=args.max_restarts,
            monitor_interval=args.monitor_interval, master_addr=master_addr,
            master_port=master_port, local_addr=args.local_addr,
            event_log_handler=args.event_log_handler, numa_options=numa_options,
            duplicate_stdout_filters=args.duplicate_stdout_filters,
            duplicate_stderr_filters=args.duplicate_stderr_filters,
            virtual_local_rank=args.virtual_local_rank,
        )
        shutdown_timeout = args.shutdown_timeout
        if shutdown_timeout is None:
            shutdown_timeout = int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30"))
        agent_kwargs = dict(
            logs_specs=logs_specs, start_method=args.start_method,
            log_line_prefix_template=os.getenv("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"),
            shutdown_timeout=shutdown_timeout,
            warm_standby=not args.no_warm_standby,
        )
        return spec, agent_kwargs, _entrypoint_name(entrypoint, cmd_args)

    def _supervise(self, agent, spec, entry_name: str) -> int:
        from torch.distributed.elastic.multiprocessing import SignalException
        from torch.distributed.elastic.multiprocessing.errors import (
            ChildFailedError,
            get_error_handler,
        )

        from telemetry.events import record

        errors = get_error_handler()
        errors.initialize()
        close_rendezvous = True
        try:
            result = agent.run()
            record(agent.get_event_succeeded(), spec.event_log_handler)
            if result is None:  # the rendezvous was closed gracefully: nothing left to do
                _say("rendezvous closed: the job is over on this node")
                return EXIT_OK
            if result.is_failed():
                failure = ChildFailedError(name=entry_name, failures=result.failures)
                _, first = failure.get_first_failure()
                if first.error_file and os.path.isfile(first.error_file):
                    errors.dump_error_file(first.error_file, first.exitcode)
                print(failure.format_msg(), file=sys.stderr, flush=True)
                return EXIT_FAILED
            return EXIT_OK
        except SignalException as e:
            # A signalled agent leaves the rendezvous open, so the job can scale back in.
            close_rendezvous = False
            record(agent.get_event_failed(), spec.event_log_handler)
            _say(f"stopped by {e.sigval.name}")
            return EXIT_FAILED
        except Exception as e:
            record(agent.get_event_failed(), spec.event_log_handler)
            errors.record_exception(e)
            log.debug("agent failed", exc_info=True)
            raise JobError(f"{type(e).__name__}: {_first_line(e)}") from None
        finally:
            if close_rendezvous:
                try:
                    spec.rdzv_handler.shutdown()
                except Exception:
                    log.debug("rendezvous shutdown failed", exc_info=True)

    def finish(self, status: int) -> None:
        """Summary line, the endpoint's linger, and a flushed event log."""
        if self.started:
            snapshot = self.status() if self.status is not None else {}
            restarts = snapshot.get("restarts_used") or 0
            _say(f"run {snapshot.get('state', 'UNKNOWN')} (exit {status}), {restarts} restart(s)"
                 + (f"; timeline: {PROG} events {self.event_log}" if self.event_log else ""))
        if self.endpoint is not None:
            if self.started:
                self._linger()
            self.endpoint.stop(timeout=0)
        import telemetry

        telemetry.shutdown(timeout=5.0)

    def _linger(self) -> None:
        linger = self.args.metrics_linger
        if linger <= 0 or self.endpoint.error is not None:
            return
        self.endpoint.warm_up()  # a short job may end before anything asked for the app
        _say(f"endpoint stays up {linger:g}s for a final scrape (--metrics-linger)")
        try:
            self.endpoint.wait_for_scrape(after=time.monotonic(), timeout=linger)
        except KeyboardInterrupt:
            pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_command(argv: Sequence[str]) -> int:
    args = build_run_parser().parse_args(list(argv))
    check_run_args(args)
    run = _Run(args)
    status = EXIT_FAILED
    try:
        run.prepare()
        status = run.launch()
    except JobError as e:
        _say(f"error: {e}")
        status = EXIT_FAILED
    except UsageError:
        status = EXIT_USAGE
        raise
    finally:
        run.finish(status)
    return status


# ---- elastiscope events ---------------------------------------------------------------------


def events_command(argv: Sequence[str]) -> int:
    args = build_events_parser().parse_args(list(argv))
    from telemetry import timeline

    try:
        path = timeline.resolve_log_path(args.path)
        runs = timeline.read_runs(path)
    except timeline.TimelineError as e:
        raise UsageError(str(e)) from None
    if args.json:
        import json

        print(json.dumps(timeline.summaries_as_json(runs, path), indent=2))
    else:
        print(timeline.render(runs, path, show_all=args.all))
    return EXIT_OK


# ---- entry point -------------------------------------------------------------------------------

COMMANDS = {"run": run_command, "events": events_command}
USAGE = f"""usage: {PROG} run [torchrun flags] [observability flags] SCRIPT [ARGS...]
       {PROG} events [PATH] [--json] [--all]

  run      launch and supervise a distributed PyTorch job (a drop-in for torchrun)
  events   summarise a run from its event log

'{PROG} COMMAND --help' describes each command."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_USAGE
    if argv[0] == "--version":
        from telemetry import __version__

        print(f"{PROG} {__version__}")
        return EXIT_OK
    command, rest = argv[0], argv[1:]
    prefix = f"{PROG} {command}" if command in COMMANDS else PROG
    try:
        if command not in COMMANDS:
            raise UsageError(f"unknown command {command!r} (expected one of: {', '.join(COMMANDS)})")
        return COMMANDS[command](rest)
    except UsageError as e:
        print(f"{prefix}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # `elastiscope events | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return EXIT_OK


def entry() -> None:
    """The console script: ``main()``, then a hard exit once output is flushed.

    When ``run`` returns, torch's daemon threads (rendezvous keep-alive, store clients) may
    still be inside C++ calls, and interpreter finalization can force-unwind them through a C++
    catch-all that does not rethrow: the process aborts ("FATAL: exception not rethrown", exit
    134) after a job that succeeded. By then telemetry is flushed and closed and no user code
    runs in this process, so finalization has nothing left to do and is skipped.
    """
    try:
        code = main()
    except BrokenPipeError:  # the reader of our output left (`elastiscope --version | head -0`)
        code = EXIT_OK
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken pipe: nothing more can be said on it anyway
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
