"""What pruning costs a node once a round, against writing the round (node/retention.py).

    python scripts/bench_store.py [--encoders 10] [--rounds 64] [--keep 52]

Fills a store (`Store.put_message`, in the node's batches) with ``--rounds`` rounds of what a
validator holds with the default parameters: per encoder a commit and 20 + 32 reveals of
4,312 bytes (1,024-d float32 with its envelope), then for the next ``--rounds`` rounds
writes a round and prunes the oldest one, as a running node does with ``--keep-rounds``.
Reports the time to write a round (the floor: what the node must spend anyway), the time to
prune one, their ratio, and the database's size in use and free after each phase: once the
rounds kept are reached, the file stops growing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from dlnet.node.store import Store
from dlnet.protocol.wire import Kind

REVEAL_BYTES = 4312
SLOTS = 20 + 32  # shard slots and probe halves


def write_round(store: Store, rnd: int, encoders: int) -> None:
    """One round's commits and reveals, each a message of its own place and id."""
    blob = os.urandom(REVEAL_BYTES)
    with store.batch():
        for e in range(encoders):
            signer = hashlib.sha256(b"encoder %d" % e).digest()
            commit = b"commit %d %d" % (rnd, e) + bytes(SLOTS * 32)
            store.put_message(
                int(Kind.COMMIT),
                hashlib.sha256(commit).digest(),
                rnd,
                signer,
                None,
                None,
                None,
                commit,
            )
            for slot in range(SLOTS):
                data = b"%d %d %d" % (rnd, e, slot) + blob
                mid = hashlib.sha256(data).digest()
                shard, at = (4, slot - 20) if slot >= 20 else divmod(slot, 5)
                store.put_message(int(Kind.EMBEDDING), mid, rnd, signer, shard, at, mid, data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=64)
    ap.add_argument("--keep", type=int, default=52)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "node.sqlite")
        began = time.perf_counter()
        for r in range(args.rounds):
            write_round(store, r, args.encoders)
        fill = (time.perf_counter() - began) / args.rounds
        used, free = store.size()
        print(
            f"{args.rounds} rounds x {args.encoders} encoders x {SLOTS + 1} messages: "
            f"{fill * 1000:.1f} ms a round to write; {used / 1e6:.1f} MB in use, "
            f"{free / 1e6:.1f} MB free"
        )
        writes, prunes, dropped = [], [], 0
        for r in range(args.rounds, 2 * args.rounds):
            t0 = time.perf_counter()
            write_round(store, r, args.encoders)
            t1 = time.perf_counter()
            dropped += store.prune(r + 1 - args.keep)
            t2 = time.perf_counter()
            writes.append(t1 - t0)
            prunes.append(t2 - t1)
        used2, free2 = store.size()
        write_ms = 1000 * sorted(writes)[len(writes) // 2]
        prune_ms = 1000 * sorted(prunes)[len(prunes) // 2]
        print(
            f"steady state, keep {args.keep}: write a round {write_ms:.1f} ms (median), prune "
            f"one {prune_ms:.1f} ms (median; first {1000 * prunes[0]:.0f} ms, dropping "
            f"{args.rounds - args.keep} rounds at once) = {prune_ms / write_ms:.2f} x the "
            f"write; {dropped} messages dropped"
        )
        print(
            f"after {2 * args.rounds} rounds: {used2 / 1e6:.1f} MB in use, {free2 / 1e6:.1f} MB "
            f"free, file {(used2 + free2) / 1e6:.1f} MB (after {args.rounds}: "
            f"{(used + free) / 1e6:.1f} MB)"
        )
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
