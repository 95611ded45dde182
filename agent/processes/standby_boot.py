"""The boot of a standby interpreter: wait for a job, then become that worker.

A standby runs as ``python <the worker's flags> -c LOADER <this file> <preload> <job fd>
<display...>`` (see ``standby.standby_argv``): ``preload`` names the modules to import while
it waits, comma-separated (may be empty); the display arguments are the worker's script (or
``-m module``) and arguments, so that ps shows what the standby is for. LOADER runs this module from its cached bytecode in a namespace of its own,
never as ``agent.processes.standby_boot``: the worker must find neither our package in
``sys.modules`` nor anything else a plain ``python script.py`` would not have. So this module
imports nothing of ours, and only what the interpreter has loaded at start-up anyway; the one
exception is what a cold worker of the same job also loads at start-up: Elastiscope's
sitecustomize and the optimizer-step hook it installs (see ``_arrange_progress_hook``).

Before it waits it imports the preload modules with ``sys.path`` as the worker will have it
(the script's directory first, or the working directory for ``-m``), in the worker's
environment minus the per-attempt values (the agent started it so), so that they find what
a cold worker's imports would find and read what they would read. A module that fails to
import is left for the script to import (and fail on) itself.

It reads its job from the pipe (a marshal'd dict, see ``standby.standby_job``), becomes the
worker (cwd, environment, log files, argv, ``sys.path[0]``) and runs the program in a clean
``__main__`` laid out as ``python script.py`` or ``python -m module`` lays it out. EOF without
a job means "not needed": it exits quietly.
"""

import marshal
import os
import sys

# sys.argv is ["-c", <this file>, <preload>, <job fd>, <script> | -m <module>, ...].
_PRELOAD_ARG = 2
_JOB_FD_ARG = 3
_DISPLAY_ARG = 4


def main():
    _preload(sys.argv[_PRELOAD_ARG], sys.argv[_DISPLAY_ARG:])
    job = _read_job(int(sys.argv[_JOB_FD_ARG]))
    if job is None:
        os._exit(0)
    _become_worker(job)
    _arrange_progress_hook()
    namespace = _fresh_main_namespace()
    if job["module"]:
        _run_module(job)  # runpy fills the emptied __main__ itself
    else:
        _run_script(job, namespace)


def _preload(modules, display):
    """Import ``modules`` (comma-separated) from where the worker's imports will look."""
    if not modules:
        return
    if not sys.flags.safe_path:
        first = os.getcwd() if display[0] == "-m" else os.path.dirname(os.path.realpath(display[0]))
        sys.path[0] = first
    for name in modules.split(","):
        try:
            __import__(name)
        except BaseException:  # noqa: BLE001 - the script meets the same error if it imports it
            pass


def _read_job(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return marshal.loads(b"".join(chunks)) if chunks else None


def _become_worker(job):
    """The worker's cwd, environment and standard streams, as a cold start would have them."""
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    for fd, path, stream in ((1, job["stdout"], sys.stdout), (2, job["stderr"], sys.stderr)):
        if path:
            stream.flush()
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
    if job["stdout"]:
        # Started on the agent's stream; a file (or a terminal) buffers as it would at start-up.
        sys.stdout.reconfigure(line_buffering=os.isatty(1))


def _arrange_progress_hook():
    """What Elastiscope's sitecustomize does at a cold worker's start-up (the agent put it on
    the worker's PYTHONPATH), done now: this interpreter started before that PYTHONPATH was
    known. Same modules as a cold worker: our sitecustomize when no other ran at start-up;
    when one did, ours would have chained to it, so only the hook is installed."""
    site_dir = os.environ.get("ELASTISCOPE_PROGRESS_SITE")
    if not site_dir or sys.flags.ignore_environment or sys.flags.no_site:
        return
    try:
        if "sitecustomize" in sys.modules:
            for name in ("elastiscope.failure_exit", "elastiscope.progress_hook", "elastiscope.stack_dump"):
                __import__(name)
                sys.modules[name].install()
        else:
            sys.path.insert(0, site_dir)  # ours takes its directory off sys.path again
            __import__("sitecustomize")
    except Exception:  # progress is telemetry: the worker runs without it
        pass


def _fresh_main_namespace():
    """``__main__``'s namespace emptied to what an interpreter starts a program with."""
    namespace = sys.modules["__main__"].__dict__
    builtins = namespace["__builtins__"]
    namespace.clear()
    namespace.update(__name__="__main__", __doc__=None, __package__=None, __spec__=None,
                     __annotations__={}, __builtins__=builtins)
    return namespace


def _run_module(job):
    # Only ``-m`` loads runpy, as only ``python -m`` does.
    import runpy

    if not sys.flags.safe_path:
        sys.path[0] = os.getcwd()
    sys.argv[:] = ["-m", *job["args"]]
    # The entry the interpreter itself calls for ``python -m``: it runs the module in the real
    # __main__ and sets argv[0] to the module's file. The public run_module would run it in a
    # temporary module instead, which a worker could tell apart.
    runpy._run_module_as_main(job["module"], alter_argv=True)


def _run_script(job, namespace):
    script = job["script"]
    if not sys.flags.safe_path:
        sys.path[0] = os.path.dirname(os.path.realpath(script))
    sys.argv[:] = [script, *job["args"]]
    loaders = sys.modules["_frozen_importlib_external"]
    namespace.update(__file__=script, __cached__=None,
                     __loader__=loaders.SourceFileLoader("__main__", script))
    with open(script, "rb") as f:
        source = f.read()
    exec(compile(source, script, "exec", dont_inherit=True), namespace)
