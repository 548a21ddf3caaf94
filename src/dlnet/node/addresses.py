"""Checking the libp2p addresses an operator passes (``--listen``, ``--bootstrap``) before a
host starts, so that a mistake is one line (``AddressError``) instead of a libp2p traceback or a
node that runs unreachable."""

from __future__ import annotations

import socket

import multiaddr
from multiaddr.exceptions import Error as MultiaddrError

LISTEN_EXAMPLE = "/ip4/127.0.0.1/tcp/9000"
BOOTSTRAP_EXAMPLE = "/ip4/127.0.0.1/tcp/9000/p2p/<peer id>"
_IP = {"ip4": socket.AF_INET, "ip6": socket.AF_INET6}


class AddressError(Exception):
    """A ``--listen`` or ``--bootstrap`` address is unusable; the text is one line saying why
    and how to fix it."""


def _parse(option: str, text: str, example: str) -> multiaddr.Multiaddr:
    hint = f"expected a multiaddr such as {example}"
    if "/" not in text and ":" in text:
        host, _, port = text.rpartition(":")
        hint = f"write it as a multiaddr: /ip4/{host or '127.0.0.1'}/tcp/{port or '9000'}"
    try:
        addr = multiaddr.Multiaddr(text)
    except (MultiaddrError, ValueError, TypeError):
        raise AddressError(f"{option} {text}: not a multiaddr — {hint}") from None
    names = [p.name for p in addr.protocols()]
    if len(names) < 2 or names[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or names[1] != "tcp":
        raise AddressError(f"{option} {text}: needs a host and a TCP port — {hint}")
    return addr


def check_listen(text: str) -> tuple[str, int]:
    """The (ip, port) of a ``--listen`` multiaddr such as ``/ip4/0.0.0.0/tcp/9000``."""
    addr = _parse("--listen", text, LISTEN_EXAMPLE)
    names = [p.name for p in addr.protocols()]
    if names[0] not in _IP or len(names) != 2:
        raise AddressError(
            f"--listen {text}: expected /ip4/<address>/tcp/<port> or /ip6/<address>/tcp/<port>,"
            f" e.g. {LISTEN_EXAMPLE} (port 0 = any free port)"
        )
    return addr.value_for_protocol(names[0]), int(addr.value_for_protocol("tcp"))


def check_bootstrap(text: str) -> str:
    """A ``--bootstrap`` multiaddr, which must end in ``/p2p/<peer id>``."""
    addr = _parse("--bootstrap", text, BOOTSTRAP_EXAMPLE)
    if "p2p" not in [p.name for p in addr.protocols()]:
        raise AddressError(
            f"--bootstrap {text}: no /p2p/<peer id> — append the peer id the bootstrap node "
            f"prints at start (or its node.json 'addrs'), e.g. {BOOTSTRAP_EXAMPLE}"
        )
    return text


def check_port_free(text: str) -> None:
    """Bind the ``--listen`` address once and release it: a busy port or an address this
    machine does not have is one line now, not a node that runs unreachable."""
    ip, port = check_listen(text)
    if port == 0:
        return
    try:
        with socket.socket(_IP["ip6" if ":" in ip else "ip4"], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
    except OSError as exc:
        raise AddressError(
            f"--listen {text}: cannot listen there ({exc.strerror or exc}) — stop whatever "
            "uses the port, or pick another port (0 = any free port)"
        ) from None
