"""Where the endpoint may listen, and its listening socket.

Bound before anything else starts, so a port in use or an exposed address without a token is
reported at once, as one line for a person (``EndpointError``).
"""

from __future__ import annotations

import errno
import ipaddress
import socket

__all__ = ["EndpointError", "is_loopback", "check_exposure", "bind_socket", "url_of"]


class EndpointError(ValueError):
    """The endpoint cannot start as configured; the message is one line meant for a person."""


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    # An IPv6 address may carry a zone ("fe80::1%eth0"); ip_address() does not take it.
    return bool(addresses) and all(
        ipaddress.ip_address(address.split("%", 1)[0]).is_loopback for address in addresses
    )


def check_exposure(host: str, token: str | None, token_required: bool = True) -> None:
    """EndpointError unless ``host`` is loopback, a token is set, or the token is waived."""
    if not token and token_required and not is_loopback(host):
        raise EndpointError(
            f"--metrics-host {host} is not a loopback address: set --token "
            "(or ELASTISCOPE_TOKEN), or pass --no-token-required to expose it without one"
        )


def bind_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = ephemeral), or EndpointError saying why not."""
    if not 0 <= port <= 65535:
        raise EndpointError(f"metrics port {port} is out of range (0-65535)")
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise EndpointError(f"cannot resolve metrics host {host!r}: {e.strerror}") from None
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        # Lets a restarted agent reuse its port while old connections sit in TIME_WAIT; on
        # Linux it does not allow two listeners on one port, so "in use" is still detected.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise EndpointError(f"metrics port {port} on {host} is already in use") from None
        raise EndpointError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket, with an IPv6 host in brackets."""
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
