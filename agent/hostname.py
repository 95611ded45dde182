"""This host's fully qualified name, as the agent reports it in events and on the endpoint.

One definition for every caller (torch-compatible events, Elastiscope's own events, the CLI's
endpoint announcement), so a node is named the same way everywhere a person looks for it.
"""

from __future__ import annotations

import socket

__all__ = ["fq_hostname"]


def fq_hostname() -> str:
    """The fully qualified domain name of this host (what torch's agent puts in its events)."""
    return socket.getfqdn(socket.gethostname())
