"""The worker spawner: a bare interpreter that forks the agent's program workers.

Why a separate process is told in :mod:`agent.processes`; what the agent sees of it is
:class:`~agent.processes.spawner_client.ProgramSpawner`. This module is the process itself,
kept apart so that it costs next to nothing to keep running: it runs as ``python -I -S`` from
its cached bytecode (see ``spawner_client.spawner_command``), not imported as part of its
package, and imports only built-in or tiny modules (``os``, ``_signal``, ``select``,
``fcntl``, ``marshal``, ``time``, and ``ctypes`` for ``prctl``). No ``subprocess``,
``pickle``, ``logging``, ``typing`` or ``multiprocessing``: with them the process was twice
the size of a bare interpreter, and it lives as long as the job. It imports nothing of ours
either, so it needs no ``sys.path``.

Wire protocol, both ways: a 4-byte big-endian length, then that many bytes of ``marshal``
data (both ends are the same interpreter, ``sys.executable``).

* in: ``("spawn", [request, ...])``, ``("standby", [request, ...])``, ``("dismiss", [pid,
  ...])`` and ``("quit",)``; EOF means the agent is gone.
* out: ``("spawned", [result, ...])`` and ``("standbys", [result, ...])`` in request order,
  and ``("exited", [(pid, returncode, epoch seconds), ...])`` whenever children exit. A result
  is ``("ok", pid, epoch seconds)`` or ``("error", description)`` (see :func:`describe_error`).

A request is a dict: ``argv``, ``env``, ``cwd``, ``stdout`` and ``stderr`` ("" to share the
spawner's stream, else a file to create); a standby request has ``display`` (arguments shown
after the job fd, so that ps says what the standby is for) instead of the streams; a spawn
request may name a waiting ``standby`` pid and the ``job`` to hand it.

Each child is forked here and set up between fork and exec the way ``subprocess.Popen(...,
start_new_session=True, preexec_fn=...)`` would: parent-death signal (then a check that the
parent is still this process), a session of its own, streams, ignored signals back to their
defaults, cwd, then ``execvpe`` (``PATH`` from the child's own environment). A failure before
exec comes back on a close-on-exec pipe and is reported as an ``("error", ...)`` result.

The agent imports this module too, for the framing (:func:`send`, :func:`recv`),
:func:`die_with_parent` and :func:`signal_group`.
"""

import ctypes  # for prctl: the only way to ask for a parent-death signal from Python
import marshal
import os
import select
import time

try:
    import _signal as signal  # the C module: signal.py adds enum classes worth ~0.7 MiB here
except ImportError:  # pragma: no cover - an interpreter without it
    import signal

_PR_SET_PDEATHSIG = 1
_HEADER = 4


def _load_prctl():
    """libc's prctl, or None where there is none (not Linux: no parent-death signal)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    fn.restype = ctypes.c_int
    return fn


# Loaded before any fork, so that a forked child only has to call it.
_PRCTL = _load_prctl()


def die_with_parent(expected_parent):
    """Have the kernel SIGKILL this process when its parent dies; die now if it already has.

    The request only covers a parent that dies *after* it is made, so the check that follows
    closes the window between fork and this call: a parent that died in it has already
    handed us to another process. ``expected_parent`` None skips the check (the forkserver
    start method, where the parent is not the agent).
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), signal.SIGKILL)


# ---- framing (shared with the agent's side) ----------------------------------------------------


def send(fd, message):
    """Write one framed message; blocks until all of it is in the pipe."""
    data = marshal.dumps(message)
    view = memoryview(len(data).to_bytes(_HEADER, "big") + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, size):
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(fd):
    """Read one framed message; EOFError when the other end has closed."""
    size = int.from_bytes(_read_exact(fd, _HEADER), "big")
    return marshal.loads(_read_exact(fd, size)) if size else None


def describe_error(exc):
    """A marshal-able description of why a child did not start (see the agent's rebuild)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        filename = exc.filename if isinstance(exc.filename, str) else None
        return ("OSError", exc.errno, exc.strerror or "", filename)
    return ("RuntimeError", f"{type(exc).__name__}: {exc}")


# ---- the children ------------------------------------------------------------------------------


def signal_group(pid, sig):
    """Signal the child's whole process group; the child alone if it has no group yet."""
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_RESTORE = [getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)]


def _become(request, keep_fd, error_w, parent):
    """In the forked child: set up, then exec. Never returns."""
    try:
        die_with_parent(parent)
        signal.set_wakeup_fd(-1)
        for sig in _RESTORE:  # the interpreter ignores these; a program expects the defaults
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # its own process group, so that a stop reaches the worker's children too
        for fd, path in ((1, request.get("stdout")), (2, request.get("stderr"))):
            if path:
                target = os.open(path, _O_CREATE, 0o666)
                os.dup2(target, fd)
                os.close(target)
        if keep_fd is not None:
            os.set_inheritable(keep_fd, True)
        os.chdir(request["cwd"])
        argv = request["argv"]
        try:
            os.execvpe(argv[0], argv, request["env"])
        except OSError as exc:  # named as the request named it, not as the last PATH entry tried
            raise OSError(exc.errno, exc.strerror, argv[0]) from None
    except BaseException as exc:  # noqa: BLE001 - anything, as long as the parent hears of it
        try:
            send(error_w, describe_error(exc))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(127)


class Spawner:
    """The spawner's children: running programs, and standbys waiting for a job."""

    def __init__(self):
        self.me = os.getpid()
        self.children = set()  # pids not yet reaped
        self.standby_pipes = {}  # standby pid -> write end of its job pipe

    def start(self, requests, keep_fds=None):
        """Fork every request's child, then collect each one's exec outcome, in order.

        Forking them all before waiting lets the children's set-up and exec overlap.
        """
        started = []
        for i, request in enumerate(requests):
            keep_fd = keep_fds[i] if keep_fds else None
            try:
                error_r, error_w = os.pipe()
            except OSError as exc:
                started.append(("error", describe_error(exc)))
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                os.close(error_r)
                os.close(error_w)
                started.append(("error", describe_error(exc)))
                continue
            if pid == 0:
                os.close(error_r)
                _become(request, keep_fd, error_w, self.me)
            os.close(error_w)
            started.append((pid, error_r))
        results = []
        for item in started:
            if item[0] == "error":
                results.append(item)
                continue
            pid, error_r = item
            try:
                failure = recv(error_r)
            except EOFError:  # closed by a successful exec
                failure = None
            finally:
                os.close(error_r)
            if failure is None:
                self.children.add(pid)
                results.append(("ok", pid, time.time()))
            else:
                os.waitpid(pid, 0)  # it exits at once; never reported as a worker exit
                results.append(("error", failure))
        return results

    def spawn(self, requests):
        results = [None] * len(requests)
        cold = []
        for i, request in enumerate(requests):
            standby = request.get("standby")
            if standby is not None and self._hand_job(standby, request["job"]):
                results[i] = ("ok", standby, time.time())
            else:
                cold.append(i)
        for i, result in zip(cold, self.start([requests[i] for i in cold])):
            results[i] = result
        return results

    def start_standbys(self, requests):
        pipes, prepared = [], []
        for request in requests:
            job_r, job_w = os.pipe()
            try:
                # Imported here, not above: only standbys need it, and a spawner that never
                # starts one (no restart possible) would hold its memory for the job's life.
                import fcntl

                # Room for the whole job, so that handing it over never blocks this loop.
                fcntl.fcntl(job_w, fcntl.F_SETPIPE_SZ, 1 << 20)
            except (ImportError, AttributeError, OSError):  # no fcntl, no F_SETPIPE_SZ, or not allowed
                pass
            os.set_blocking(job_w, False)
            pipes.append((job_r, job_w))
            prepared.append(dict(request, argv=[*request["argv"], str(job_r), *request["display"]],
                                 stdout="", stderr=""))
        results = self.start(prepared, [job_r for job_r, _ in pipes])
        for (job_r, job_w), result in zip(pipes, results):
            os.close(job_r)
            if result[0] == "ok":
                self.standby_pipes[result[1]] = job_w
            else:
                os.close(job_w)
        return results

    def _hand_job(self, pid, job):
        job_w = self.standby_pipes.pop(pid, None)
        if job_w is None:
            return False
        data = marshal.dumps(job)
        try:
            written = os.write(job_w, data)
        except OSError:  # it died while waiting
            written = -1
        os.close(job_w)
        if written == len(data):
            return True
        signal_group(pid, signal.SIGKILL)  # half a job is no job
        return False

    def dismiss(self, pid):
        job_w = self.standby_pipes.pop(pid, None)
        if job_w is not None:
            os.close(job_w)  # EOF without a job: the standby exits 0

    def reap(self):
        done = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            done.append((pid, os.waitstatus_to_exitcode(status), time.time()))
            self.children.discard(pid)
            self.dismiss(pid)
        return done

    def kill_all(self):
        for pid in list(self.standby_pipes):
            self.dismiss(pid)
        for pid in self.children:
            signal_group(pid, signal.SIGKILL)


def main(agent_pid, request_fd, reply_fd):
    """The spawner's loop: fork on request, report every exit the moment it happens."""
    die_with_parent(agent_pid)
    # Passed in by the agent, so inheritable: no worker may hold the agent's pipes open.
    os.set_inheritable(request_fd, False)
    os.set_inheritable(reply_fd, False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    state = Spawner()
    poller = select.poll()
    poller.register(request_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    handlers = {"spawn": ("spawned", state.spawn), "standby": ("standbys", state.start_standbys)}

    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                exits = state.reap()
                if exits:
                    send(reply_fd, ("exited", exits))
                continue
            try:
                kind, *payload = recv(request_fd)
            except EOFError:
                kind, payload = "quit", []
            if kind == "quit":
                state.kill_all()
                return
            if kind in handlers:
                reply, handler = handlers[kind]
                send(reply_fd, (reply, handler(payload[0])))
            elif kind == "dismiss":
                for pid in payload[0]:
                    state.dismiss(pid)
