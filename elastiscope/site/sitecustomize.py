"""Elastiscope's start-up hook for workers (this directory is put first on a worker's
PYTHONPATH by its agent): arrange the fast exit on an uncaught exception
(:mod:`elastiscope.failure_exit`), the optimizer-step hook and the stack dump the agent may ask
for (:mod:`elastiscope.stack_dump`), then run the ``sitecustomize`` that
would have run without us, if any, and leave no trace of ours on ``sys.path``.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
try:
    from elastiscope import progress_hook

    progress_hook.install()
except Exception:  # telemetry never breaks the job
    pass
try:  # apart: each works without the others
    from elastiscope import failure_exit

    failure_exit.install()
except Exception:
    pass
try:
    from elastiscope import stack_dump

    stack_dump.install()
except Exception:  # stacks are telemetry too
    pass
# The next sitecustomize on the path, as if this one were not there; without one, this one
# stays the sitecustomize module (the import machinery expects to find one).
_ours = sys.modules.pop(__name__)
try:
    import sitecustomize  # noqa: F401
except ModuleNotFoundError as error:
    sys.modules[__name__] = _ours
    if error.name != "sitecustomize":
        raise
