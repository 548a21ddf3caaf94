"""Round seed, shard items, units and masks: the portable derivation every node repeats.

Everything random here comes from SHA-256 in counter mode (``Drbg``), never from a library RNG
whose stream could change between versions or platforms; the only float operation is the
IEEE-754 product ``mask_fraction * n`` (identical on every conforming platform).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dlnet.protocol.canonical import sha256, u64be
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.result import text_digest

SEED_TAG = b"dlnet/v1/seed"
SHARDS_TAG = b"dlnet/v1/shards"
MASK_TAG = b"dlnet/v1/mask"

WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
"""The unit separators: exactly the characters for which Python 3.11's ``str.isspace()`` holds.

Pinned explicitly so that a later Unicode database cannot move unit boundaries."""

_UNIT = re.compile("[^" + re.escape(WHITESPACE) + "]+")


def round_seed(network_id: bytes, r: int) -> bytes:
    """``SHA-256(b"dlnet/v1/seed" || network_id || u64be(r))``."""
    return sha256(SEED_TAG, network_id, u64be(r))


class Drbg:
    """Deterministic byte stream: block i = SHA-256(seed || tag || u64be(i)), i = 0, 1, ...

    Draws consume the stream 8 bytes at a time (4 draws per block), in order.
    """

    def __init__(self, seed: bytes, tag: bytes) -> None:
        self._prefix = seed + tag
        self._counter = 0
        self._buffer = b""

    def next_u64(self) -> int:
        """The next 8 stream bytes as a big-endian unsigned integer."""
        if not self._buffer:
            self._buffer = sha256(self._prefix, u64be(self._counter))
            self._counter += 1
        word, self._buffer = self._buffer[:8], self._buffer[8:]
        return int.from_bytes(word, "big")

    def randbelow(self, n: int) -> int:
        """Uniform integer in [0, n) by rejection sampling (1 <= n <= 2**64).

        With b = bit length of n - 1: draw x = next_u64() >> (64 - b) until x < n. n = 1 returns
        0 and draws nothing.
        """
        if not 1 <= n <= 1 << 64:
            raise ValueError(f"randbelow: n must be in [1, 2**64], got {n}")
        bits = (n - 1).bit_length()
        if bits == 0:
            return 0
        while True:
            x = self.next_u64() >> (64 - bits)
            if x < n:
                return x

    def sample(self, population: int, k: int) -> list[int]:
        """k distinct values of range(population), in draw order (partial Fisher-Yates).

        ``a = [0..population-1]; for i in 0..k-1: j = i + randbelow(population - i);
        swap a[i], a[j]``; returns a[:k].
        """
        if not 0 <= k <= population:
            raise ValueError(f"sample: need 0 <= k <= population, got k={k}, {population}")
        moved: dict[int, int] = {}  # sparse view of a: a[x] == moved.get(x, x)
        out: list[int] = []
        for i in range(k):
            j = i + self.randbelow(population - i)
            a_i, a_j = moved.get(i, i), moved.get(j, j)
            moved[j] = a_i
            out.append(a_j)
        return out


def split_units(text: str) -> tuple[str, ...]:
    """The words of ``text``: maximal runs of non-``WHITESPACE`` characters (= ``str.split()``)."""
    return tuple(_UNIT.findall(text))


@functools.lru_cache(maxsize=4)
def _item_units(
    items: tuple[str, ...],
) -> tuple[tuple[tuple[str, ...], ...], tuple[int, ...]]:
    """``split_units`` of every item and the eligible items (>= 2 units), kept for the few data
    sets of a process: every role derives every round's tasks from the same items (4,000
    items take ~0.05 s to split)."""
    units = tuple(split_units(text) for text in items)
    return units, tuple(i for i, u in enumerate(units) if len(u) >= 2)


def split_by_mask(words: Sequence[str], hide: Sequence[int]) -> tuple[str, str]:
    """The kept and the hidden text of a mask hiding the units at ``hide``: each joins its units
    in text order by single spaces (a shard's mask and inverse slots, a probe's two halves)."""
    hidden = set(hide)
    return (
        " ".join(w for i, w in enumerate(words) if i not in hidden),
        " ".join(w for i, w in enumerate(words) if i in hidden),
    )


def hidden_count(n_units: int, mask_fraction: float) -> int:
    """Units a mask hides: ``floor(mask_fraction * n + 0.5)`` clamped to [1, n - 1] (n >= 2)."""
    return min(max(math.floor(mask_fraction * n_units + 0.5), 1), n_units - 1)


@dataclass(frozen=True)
class ShardTask:
    """What every encoder embeds for one shard, in slot order.

    Slot 0 is the full item (its units joined by single spaces), slot 2m+1 is mask m (the kept
    units), slot 2m+2 inverse m (exactly the hidden units); ``texts`` are the exact strings an
    encoder embeds and ``unit_counts`` their unit counts.
    """

    shard: int
    item: int
    texts: tuple[str, ...]
    unit_counts: tuple[int, ...]
    hidden: tuple[tuple[int, ...], ...]
    """Per mask, the ascending unit indices it hides (slot 2m+2 joins exactly these)."""


def derive_tasks(
    network_id: bytes,
    r: int,
    items: Sequence[str],
    *,
    shards_per_round: int,
    masks_per_shard: int,
    mask_fraction: float,
    submitted: Sequence[str | None] = (),
) -> tuple[ShardTask, ...]:
    """The shard tasks of round r (see ``round_tasks``), from explicit parameters.

    ``submitted[s]``, when given and not None, replaces shard s's corpus item (its ``item`` is
    then -1); its masks are derived exactly as a corpus item's (protocol/submissions.py).

    Eligible items are those with >= 2 units, by ascending index. Shard s takes the s-th value of
    ``Drbg(seed, b"dlnet/v1/shards").sample(len(eligible), shards_per_round)``. Mask m of shard s
    hides ``Drbg(seed, b"dlnet/v1/mask" || u64be(s) || u64be(m)).sample(n, hidden_count(n))``.
    Raises ValueError when fewer than ``shards_per_round`` items are eligible.
    """
    seed = round_seed(network_id, r)
    units, eligible = _item_units(tuple(items))
    if len(eligible) < shards_per_round:
        raise ValueError(
            f"data set has {len(eligible)} items with at least 2 words, the round needs "
            f"{shards_per_round} — use a larger data set or fewer shards_per_round"
        )
    picks = Drbg(seed, SHARDS_TAG).sample(len(eligible), shards_per_round)
    tasks: list[ShardTask] = []
    for shard, pick in enumerate(picks):
        item = eligible[pick]
        words = units[item]
        own = submitted[shard] if shard < len(submitted) else None
        if own is not None and len(split_units(own)) >= 2:
            item, words = -1, split_units(own)
        n = len(words)
        k = hidden_count(n, mask_fraction)
        texts = [" ".join(words)]
        counts = [n]
        hidden: list[tuple[int, ...]] = []
        for m in range(masks_per_shard):
            drbg = Drbg(seed, MASK_TAG + u64be(shard) + u64be(m))
            hide = tuple(sorted(drbg.sample(n, k)))
            texts.extend(split_by_mask(words, hide))
            counts += [n - k, k]
            hidden.append(hide)
        tasks.append(ShardTask(shard, item, tuple(texts), tuple(counts), tuple(hidden)))
    return tuple(tasks)


def round_tasks(
    cfg: NetworkConfig, items: Sequence[str], r: int, submitted: Sequence[str | None] = ()
) -> tuple[ShardTask, ...]:
    """The ``cfg.shards_per_round`` shard tasks of round r for the network ``cfg``; the
    round's scheduled submitted texts, if any, take shards 0, 1, ... (submissions.round_texts)."""
    return derive_tasks(
        cfg.network_id,
        r,
        items,
        shards_per_round=cfg.shards_per_round,
        masks_per_shard=cfg.masks_per_shard,
        mask_fraction=cfg.mask_fraction,
        submitted=submitted,
    )


GOLDEN_ITEMS = (
    "The quick brown fox jumps over the lazy dog",
    "single",
    "  Embeddings   compose:\tE(full) - E(mask) ≈ E(inverse)  ",
    "Ein Würfel hat sechs Seiten und acht Ecken",
    "",
    "two words",
    "日本語 の 文 も 単語 に 分けます",
)
"""A small data set for the golden vectors (with ineligible items and non-ASCII text)."""


def golden_vectors() -> dict[str, object]:
    """Test vectors of this module, as JSON-compatible data (bytes as hex).

    Inputs are fixed here; scripts/vectors.py pins the outputs in docs/PROTOCOL.md.
    """
    network_id = bytes(range(32))
    seed = round_seed(network_id, 7)
    drbg = Drbg(seed, SHARDS_TAG)
    bounds = [1, 2, 3, 10, 1000, 2**32 + 1, 2**64]
    return {
        "network_id": network_id.hex(),
        "round_seeds": {str(r): round_seed(network_id, r).hex() for r in (0, 1, 7, 2**40)},
        "drbg": {
            "seed": seed.hex(),
            "tag": SHARDS_TAG.hex(),
            "blocks": [sha256(seed, SHARDS_TAG, u64be(i)).hex() for i in range(2)],
            "randbelow": [[n, drbg.randbelow(n)] for n in bounds],
        },
        "split_units": [[text, list(split_units(text))] for text in GOLDEN_ITEMS],
        "tasks": {
            "round": 7,
            "items": list(GOLDEN_ITEMS),
            "shards_per_round": 3,
            "masks_per_shard": 2,
            "mask_fraction": 0.5,
            "shards": [
                {
                    "shard": t.shard,
                    "item": t.item,
                    "texts": list(t.texts),
                    "unit_counts": list(t.unit_counts),
                    "hidden": [list(h) for h in t.hidden],
                }
                for t in derive_tasks(
                    network_id,
                    7,
                    GOLDEN_ITEMS,
                    shards_per_round=3,
                    masks_per_shard=2,
                    mask_fraction=0.5,
                )
            ],
        },
    }


def text_digests(tasks: Sequence[ShardTask]) -> tuple[bytes, ...]:
    """Per shard, `result.text_digest` of its full text: what a round result names."""
    return tuple(text_digest(task.texts[0]) for task in tasks)
