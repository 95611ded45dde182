"""``elastiscope run``: one run from checked arguments to exit status.

The order matters for start-up time and for clean failures: the endpoint's socket is bound
first and its web stack loads on its own thread (at the first request, or a second after the
workers are running) while this one imports torch and builds the spec; telemetry is configured
(creating the event log) only once the request is known to be good, so bad input leaves no files
behind; the endpoint is announced before rendezvous. At the end, if something scraped /metrics
during the run, the endpoint stays up until the next scrape (``--metrics-linger`` at most) so the
final state is seen; the event log is flushed.

torch (and the local agent, which imports it) is imported only where the job starts: checking
the arguments and binding the endpoint must not wait for it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from typing import Any, Mapping, Sequence

from agent.api import RunResult, WorkerSpec
from agent.cli.arguments import DEFAULT_RUNS_DIR, build_run_parser, is_off
from agent.cli.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, JobError,
                              UsageError, first_line)
from agent.cli.messages import PROG, say, say_block
from agent.cli.spec import plan_launch, resolve_nproc, settle_rendezvous
from agent.cli.validate import check_run_args
from agent.hostname import fq_hostname
from agent.page_peers import PagePeers, PublishPageAtRendezvous, page_url
from telemetry import state
from telemetry.config import ConfigError, configure, resolve_settings, shutdown
from telemetry.endpoint import EndpointError, EndpointServer, bind_socket, check_exposure, serve_app
from telemetry.endpoint.binding import url_of
from telemetry.events import emit, record
from telemetry.names import ENDPOINT_STARTED, INIT
from telemetry.records import Event, EventSource
from telemetry.sinks.endpoint_warm_up import WarmUpWhenHealthy

__all__ = ["run_command"]

log = logging.getLogger("agent.cli")

# Seconds after the workers turn HEALTHY before the endpoint loads its web stack (if no request
# made it load sooner): long enough to stay out of the workers' own start-up.
ENDPOINT_WARM_UP_DELAY = 1.0
TELEMETRY_SHUTDOWN_TIMEOUT = 5.0  # seconds to flush the event log and exporters at the end


def _default_event_log(run_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    return os.path.join(DEFAULT_RUNS_DIR, f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}.jsonl")


def _event_log_setting(args: argparse.Namespace) -> str | None:
    value = args.event_log
    if value is None:
        return _default_event_log(args.rdzv_id)
    if is_off(value):
        return None
    return value


def _event_log_origin(args: argparse.Namespace) -> str:
    """Where the event log's path came from, as errors should name it: the flag or its variable."""
    if args.event_log is not None and args.event_log == os.environ.get("ELASTISCOPE_EVENT_LOG"):
        return "ELASTISCOPE_EVENT_LOG"
    return "--event-log"


class StatusBoard:
    """The endpoint's status provider: the agent's snapshot once it exists, INIT before, with
    what the page shows besides (host, clock, event log, goodput, the other agents' pages)."""

    def __init__(self, run_id: str, role: str, max_restarts: int) -> None:
        self.agent: Any = None
        self.hostname: str | None = None  # looked up (DNS) only when the endpoint is on
        self.event_log: str | None = None
        self.peers: PagePeers | None = None  # set when the endpoint is on
        self._before_agent = {
            "run_id": run_id, "role": role, "state": INIT, "restarts_used": 0,
            "remaining_restarts": max_restarts, "max_restarts": max_restarts, "workers": [],
        }

    def __call__(self) -> dict[str, Any]:
        agent = self.agent
        snapshot = agent.status_snapshot() if agent is not None else dict(self._before_agent)
        summary = agent.goodput_summary() if hasattr(agent, "goodput_summary") else None
        ratio = summary.get("goodput_ratio") if summary and summary.get("progress_reported") else None
        return {**snapshot, "hostname": self.hostname, "time": time.time(), "event_log": self.event_log,
                "goodput_ratio": ratio, "peers": self.peers.peers() if self.peers is not None else None}

    def worker_group(self) -> Any:
        """The agent's current worker group (torch's public ``get_worker_group``), None before."""
        agent = self.agent
        return agent.get_worker_group() if agent is not None else None

    def stacks(self) -> dict[str, Any]:
        """The endpoint's /stacks: every worker's stack now (an error before the agent exists)."""
        agent = self.agent
        if agent is None:
            raise LookupError("no workers yet")
        return agent.stacks_snapshot()


class Run:
    """One invocation of ``elastiscope run``: prepare(), launch(), then finish() whatever happened."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.endpoint: EndpointServer | None = None
        self.status: StatusBoard | None = None
        self.event_log: str | None = None
        self.started = False  # the agent was handed the job
        self.stopped_by: str | None = None  # the signal's name, when a signal stopped the run

    # ---- before torch: identity, telemetry settings, endpoint ----

    def prepare(self) -> None:
        """Identity and endpoint: everything that needs neither torch nor the telemetry config."""
        args = self.args
        settle_rendezvous(args)
        self.status = StatusBoard(args.rdzv_id, args.role, args.max_restarts)
        self.check_telemetry()
        if args.metrics_port is not None:
            self.endpoint = self._open_endpoint()

    def _telemetry_env(self) -> Mapping[str, str]:
        if self.event_log is None:  # "off" must not fall back to the variable that said so
            return {k: v for k, v in os.environ.items() if k != "ELASTISCOPE_EVENT_LOG"}
        return os.environ

    def check_telemetry(self) -> None:
        """Validate the telemetry settings now, before torch loads; nothing is created yet."""
        args = self.args
        self.event_log = _event_log_setting(args)
        try:
            resolve_settings(event_log=self.event_log, log_format=args.log_format,
                             otlp_endpoint=args.otlp_endpoint, pushgateway=args.pushgateway,
                             run_id=args.rdzv_id, role=args.role, env=self._telemetry_env(),
                             event_log_name=_event_log_origin(args))
        except ConfigError as e:
            raise UsageError(str(e)) from None

    def _open_endpoint(self) -> EndpointServer:
        args = self.args
        try:
            check_exposure(args.metrics_host, args.token, not args.no_token_required)
            sock = bind_socket(args.metrics_host, args.metrics_port)
        except EndpointError as e:
            raise UsageError(str(e)) from None
        # The process's event ring outlives the pipelines configure() builds, so the app can
        # hold it now. Lazy: the web stack loads at the first request or once the workers run.
        self.status.hostname = fq_hostname()
        self.status.peers = PagePeers(page_url(url_of(sock), self.status.hostname),
                                      self.status.hostname, self.status.worker_group)
        return serve_app(sock, self.status, state.event_ring(), token=args.token, lazy=True,
                         stacks=self.status.stacks)

    # ---- the job ----

    def launch(self) -> int:
        args = self.args
        # The agent reads these from the environment, as torch's launcher sets them.
        os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = args.signals_to_handle
        # torch >= 2.4 shares the agent's c10d TCPStore with the workers across restarts, and
        # keys left by the previous attempt make the restarted workers' init_process_group
        # connect to dead peers (pytorch/pytorch#135712). A fresh store per round avoids it.
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")

        nproc = resolve_nproc(args.nproc_per_node)
        if nproc < 1:
            raise UsageError(f"--nproc-per-node {args.nproc_per_node} resolved to {nproc} workers")
        plan = plan_launch(args, nproc)
        self._configure_telemetry()
        self._announce()
        if "OMP_NUM_THREADS" not in os.environ and nproc > 1:
            os.environ["OMP_NUM_THREADS"] = "1"
            log.warning("OMP_NUM_THREADS not set: using 1 per worker (set it to tune)")

        # torch comes with it: loaded only once the request is known to be good.
        from agent.local import LocalElasticAgent

        agent = LocalElasticAgent(spec=plan.spec, **plan.agent_options)
        self.status.agent = agent
        self.started = True
        return self._supervise(agent, plan.spec, plan.entry_name)

    def _configure_telemetry(self) -> None:
        args = self.args
        extra_sinks = []
        if self.endpoint is not None:
            extra_sinks.append(WarmUpWhenHealthy(self.endpoint, delay=ENDPOINT_WARM_UP_DELAY))
        if self.status.peers is not None:
            extra_sinks.append(PublishPageAtRendezvous(self.status.peers))
        try:
            pipeline = configure(
                event_log=self.event_log,
                log_format=args.log_format,
                otlp_endpoint=args.otlp_endpoint,
                pushgateway=args.pushgateway,
                run_id=args.rdzv_id,
                role=args.role,
                env=self._telemetry_env(),
                extra_sinks=extra_sinks,
            )
        except ConfigError as e:
            raise UsageError(str(e)) from None
        jsonl = pipeline.find("jsonl")
        if jsonl is not None and getattr(jsonl, "path", None) is not None:
            self.event_log = str(jsonl.path)
        self.status.event_log = self.event_log

    def _announce(self) -> None:
        args = self.args
        if self.endpoint is not None:
            url = self.endpoint.url
            emit(Event(ENDPOINT_STARTED, EventSource.AGENT, metadata={
                "run_id": args.rdzv_id, "role": args.role, "group_rank": None,
                "hostname": self.status.hostname, "url": url,
                "host": str(self.endpoint.host), "port": int(self.endpoint.port),
                "token_required": bool(args.token), "pid": os.getpid(),
            }))
            say(f"metrics {url}/metrics  status {url}/status  events {url}/events  page {url}/", url=url)
        if self.event_log:
            say(f"event log {self.event_log}", event_log=self.event_log)

    def _supervise(self, agent: Any, spec: WorkerSpec, entry_name: str) -> int:
        from torch.distributed.elastic.multiprocessing import SignalException
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        errors = get_error_handler()
        errors.initialize()
        close_rendezvous = True
        try:
            result = agent.run()
            record(agent.get_event_succeeded(), spec.event_log_handler)
            return self._report(result, entry_name, errors)
        except SignalException as e:
            # A signalled agent leaves the rendezvous open, so the job can scale back in.
            close_rendezvous = False
            record(agent.get_event_failed(), spec.event_log_handler)
            self.stopped_by = e.sigval.name  # said once, in the summary line
            return EXIT_FAILED
        except Exception as e:
            record(agent.get_event_failed(), spec.event_log_handler)
            errors.record_exception(e)
            log.debug("agent failed", exc_info=True)
            raise JobError(f"{type(e).__name__}: {first_line(e)}") from None
        finally:
            if close_rendezvous:
                try:
                    spec.rdzv_handler.shutdown()
                except Exception:
                    log.debug("rendezvous shutdown failed", exc_info=True)

    @staticmethod
    def _report(result: RunResult | None, entry_name: str, errors: Any) -> int:
        """torchrun's report of a finished run: the first failure's error file and summary."""
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        if result is None:  # the rendezvous was closed gracefully: nothing left to do
            say("rendezvous closed: the job is over on this node")
            return EXIT_OK
        if result.is_failed():
            failure = ChildFailedError(name=entry_name, failures=result.failures)
            _, first = failure.get_first_failure()
            if first.error_file and os.path.isfile(first.error_file):
                errors.dump_error_file(first.error_file, first.exitcode)
            say_block(failure.format_msg())
            return EXIT_FAILED
        return EXIT_OK

    # ---- the end ----

    def finish(self, status: int) -> None:
        """Summary line, the endpoint's linger, and a flushed event log."""
        if self.started:
            self._summarise(status)
        if self.endpoint is not None:
            if self.started and self.stopped_by is None:  # whoever stopped it is not waiting
                self._linger()
            self.endpoint.stop(timeout=0)
        shutdown(timeout=TELEMETRY_SHUTDOWN_TIMEOUT)

    def _summarise(self, status: int) -> None:
        """The run's one summary line: how it ended, its exit status, restarts, the timeline."""
        snapshot = self.status() if self.status is not None else {}
        restarts = snapshot.get("restarts_used") or 0
        outcome = (f"stopped by {self.stopped_by}" if self.stopped_by
                   else str(snapshot.get("state", "UNKNOWN")))
        timeline = f"; timeline: {PROG} events {self.event_log}" if self.event_log else ""
        goodput, ratio = self._goodput()
        say(f"run {outcome} (exit {status}), {restarts} restart(s){goodput}{timeline}",
            outcome=outcome, exit_code=status, restarts=restarts, goodput_ratio=ratio,
            event_log=self.event_log)

    def _goodput(self) -> tuple[str, float | None]:
        """The summary line's goodput part and the ratio (agent/goodput.py)."""
        agent = self.status.agent if self.status is not None else None
        summary = agent.goodput_summary() if hasattr(agent, "goodput_summary") else None
        if not summary:
            return "", None
        ratio = summary.get("goodput_ratio")
        if not summary.get("progress_reported") or ratio is None:
            return ", goodput: no progress reported", None
        return f", goodput {100 * ratio:.1f} %", ratio

    def _linger(self) -> None:
        """Keep the endpoint up for one more scrape, if a scraper has been watching this run.

        A scraper that saw the run (Prometheus) should see its end too: wait for its next
        /metrics scrape, ``--metrics-linger`` seconds at most. Nobody scraped: nobody is
        waiting for the final state, so the job ends as soon as its work does.
        """
        linger = self.args.metrics_linger
        endpoint = self.endpoint
        if linger <= 0 or endpoint.error is not None or not endpoint.scraped:
            return
        say(f"endpoint stays up until the next /metrics scrape, at most {linger:g}s "
            "(--metrics-linger), for a final scrape")
        try:
            endpoint.wait_for_scrape(after=time.monotonic(), timeout=linger)
        except KeyboardInterrupt:
            pass


def run_command(argv: Sequence[str]) -> int:
    args = build_run_parser().parse_args(list(argv))
    check_run_args(args)
    run = Run(args)
    status = EXIT_FAILED
    try:
        run.prepare()
        status = run.launch()
    except JobError as e:
        say(f"error: {e}")
        status = EXIT_FAILED
    except UsageError:
        status = EXIT_USAGE
        raise
    except KeyboardInterrupt:  # Ctrl-C before the agent handles signals itself (rendezvous)
        if not run.started:
            raise  # nothing started: the command's "interrupted", as for any command
        run.stopped_by, status = "SIGINT", EXIT_INTERRUPTED
    finally:
        run.finish(status)
    return status
