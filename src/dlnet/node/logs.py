"""The node's log: one handler on the root logger, as text or as one JSON object per line.

libp2p (``libp2p/utils/logging.py``) detaches its ``libp2p`` logger from the root at import
time (``propagate = False``, no handler), so its warnings reached stderr through Python's
last-resort handler with neither timestamp nor level; ``setup_logging`` hands them back to
the root handler (`adopt_libp2p_logging`, when a host starts), unless ``LIBP2P_DEBUG`` asked
libp2p to run its own logging.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Final, TextIO

LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is kept.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (Unix seconds), time (UTC, ISO 8601), level, logger,
    msg, the ``extra=`` fields, and ``exc`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in out:
                out[name] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route every logger (dlnet's, libp2p's, hypercorn's) through one root handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    if level != "debug":
        # libp2p logs routine state at info (e.g. AUTO_CONNECTOR_STATE); keep its warnings
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith("libp2p"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if "libp2p" in sys.modules:  # else the host adopts it when it imports libp2p
        adopt_libp2p_logging()


def adopt_libp2p_logging() -> None:
    """Undo libp2p's import-time detaching (after it was imported): its records go to the
    root handler, at warning and above; not when ``LIBP2P_DEBUG`` runs libp2p's own logging.
    Commands that run no node never import libp2p (~1.5 s), so never call this."""
    if os.environ.get("LIBP2P_DEBUG"):
        return
    lp = logging.getLogger("libp2p")
    lp.handlers.clear()
    lp.propagate = True
    lp.setLevel(logging.WARNING)
    logging.getLogger("libp2p.pubsub.gossipsub").addFilter(_known_noise_at_debug)


KNOWN_NOISE = (
    # A peer grafted within 10 s of pruning us: hubs with more topic peers than D_high do that
    # every back-off, harmlessly; ~500 per validator in a 3-minute 100-encoder testnet.
    "GRAFT flood detected",
    # A connected peer not (yet) subscribed to a topic gets the topic's messages queued for
    # the identify race, 100 at most: a peer that never joins the topic (an encoder process
    # and the commit topic) overflows it on every message; ~300 per keeper in that testnet.
    "pending message queue for peer",
)
"""py-libp2p 0.8.1 warnings that say nothing wrong about a dlnet network (docs/FINDINGS.md)."""


def _known_noise_at_debug(record: logging.LogRecord) -> bool:
    """A `KNOWN_NOISE` warning is kept, at debug."""
    if isinstance(record.msg, str) and record.msg.startswith(KNOWN_NOISE):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return True
