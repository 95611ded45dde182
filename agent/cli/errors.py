"""How ``elastiscope`` ends: its exit statuses and the two errors that become one line on stderr."""

from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED", "UsageError", "JobError",
           "first_line"]

# torchrun's statuses: 0 every worker succeeded, 1 the job failed; 2 is argparse's for bad input.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


class UsageError(ValueError):
    """Bad input: one line on stderr and exit status 2 on the command line.

    A ValueError, because that is what torch's launcher raises for bad input when it is called
    from code (``torch.distributed.run.main(args)``), and ``agent.run.main`` raises this.
    """


class JobError(Exception):
    """The job could not run (rendezvous failed, ...): one line on stderr, exit status 1."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (the rest is a traceback nobody is shown)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
