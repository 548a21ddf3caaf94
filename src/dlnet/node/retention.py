"""How many rounds of messages a node keeps (`dlnet run --keep-rounds`, docs/OPERATING.md
"Disk"). Every round brings each encoder's commit and reveals (about 220 KB an encoder with
the defaults) to every node that keeps reveals: unpruned, a validator's store grows by
gigabytes a day. Once a round, a node drops the messages of rounds older than the last
``keep`` (`Store.prune`: certificates, outcomes, submissions and schedules stay)."""

from __future__ import annotations

from typing import Final

from dlnet.node import counters as C
from dlnet.node.context import NodeContext
from dlnet.node.probing import LOOKBACK_FACTOR
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.rounds import round_at, round_times

DEFAULT_KEEP_ROUNDS: Final = 256
"""Rounds a node keeps by default (0 = all): about 0.7 GB for a validator of a 10-encoder
testnet (docs/OPERATING.md "Disk")."""


def min_keep_rounds(cfg: NetworkConfig) -> int:
    """The fewest rounds a node may keep: the probe look-back a restarted validator grades
    again from its store (§2.8) and the rounds whose messages are still accepted, with one to
    spare."""
    return LOOKBACK_FACTOR * cfg.scoring.probe_window + cfg.timing.round_window + 2


def check_keep_rounds(cfg: NetworkConfig, keep: int) -> None:
    """Raise ValueError (one line, with the fix) when ``keep`` is below `min_keep_rounds`."""
    least = min_keep_rounds(cfg)
    if keep != 0 and keep < least:
        raise ValueError(
            f"--keep-rounds {keep}: this network needs the last {least} rounds (the probe "
            f"look-back and the accepted window) — give {least} or more, or 0 to keep all"
        )


async def prune_rounds(ctx: NodeContext, keep: int) -> None:
    """From now on, at every round's start, drop what rounds before the last ``keep`` hold
    (0: never)."""
    if keep == 0:
        return
    cfg = ctx.cfg
    while True:
        rnd = round_at(cfg, ctx.clock.now())
        if rnd - keep > 0:
            dropped = ctx.store.prune(rnd - keep)
            if dropped:
                ctx.ingest.counters.add(C.PRUNED, n=dropped)
                ctx.log.debug("pruned %d messages of rounds before %d", dropped, rnd - keep)
        await ctx.clock.sleep_until(round_times(cfg, max(rnd + 1, 0)).start)
