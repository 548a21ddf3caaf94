"""What a running node tells its operator between start and its first round: the countdown to
genesis in the log, and the live part of node.json (peers, round, phase, last finalized round)
that `dlnet status` shows."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

import trio

from dlnet.node.api import phase
from dlnet.node.report import INFO_FILE
from dlnet.node.store import Store
from dlnet.protocol.config import NetworkConfig

log = logging.getLogger("dlnet")

LIVE_EVERY: Final = 5.0
"""Seconds between two rewrites of node.json's ``live`` section."""
COUNTDOWN_MAX_STEP: Final = 60.0
COUNTDOWN_MIN_STEP: Final = 10.0


class Peers(Protocol):
    def connected_peers(self) -> list[str]: ...


def duration(seconds: float) -> str:
    """``1h 02m 03s``, ``4m 05s`` or ``6s``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h {m:02d}m {s:02d}s"
    return f"{m}m {s:02d}s" if m else f"{s}s"


def countdown_marks(wait: float) -> list[float]:
    """Seconds before genesis at which to log the time left, given ``wait`` seconds to go:
    every 10 % of the wait, but at least every minute and at most every 10 s."""
    step = min(COUNTDOWN_MAX_STEP, max(COUNTDOWN_MIN_STEP, wait / 10))
    marks, left = [], wait - step
    while left > 0.5:
        marks.append(left)
        left -= step
    return marks


async def genesis_countdown(cfg: NetworkConfig, clock: Callable[[], float]) -> None:
    """Log the time left until round 0 now and then; nothing once genesis has passed."""
    wait = cfg.genesis_time - clock()
    if wait <= 0:
        return
    start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cfg.genesis_time))
    log.info("waiting for genesis: round 0 starts in %s (%s)", duration(wait), start)
    for left in countdown_marks(wait):
        await trio.sleep(max(0.0, cfg.genesis_time - left - clock()))
        log.info("genesis in %s", duration(cfg.genesis_time - clock()))
    await trio.sleep(max(0.0, cfg.genesis_time - clock()))
    log.info("genesis: round 0 starts")


def live_info(cfg: NetworkConfig, store: Store, host: Peers, now: float) -> dict[str, Any]:
    """node.json's ``live`` section: what the node sees now."""
    rnd, name, ends = phase(cfg, now)
    peers = sorted(host.connected_peers())
    return {
        "updated": round(now, 3),
        "round": rnd,
        "phase": name,
        "phase_ends": ends,
        "last_finalized": store.outcome_summary().last_finalized,
        "peer_count": len(peers),
        "peers": peers,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


async def keep_live_info(
    data_dir: Path,
    info: dict[str, Any],
    cfg: NetworkConfig,
    store: Store,
    host: Peers,
    clock: Callable[[], float],
) -> None:
    """Rewrite node.json (``info`` plus ``live``) every LIVE_EVERY seconds, forever."""
    while True:
        write_json(data_dir / INFO_FILE, {**info, "live": live_info(cfg, store, host, clock())})
        await trio.sleep(LIVE_EVERY)
