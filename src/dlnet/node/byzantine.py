"""TEST-ONLY byzantine validator behaviours (`dlnet run --byzantine MODE`,
`dlnet testnet --byzantine N:MODE`): hooks `ValidatorRole` and its prober call, so the honest
code path stays free of them. They exist to show that validators holding < 1/3 of the stake
cannot void, pad or stall a round (docs/PROTOCOL.md §5).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import numpy as np

from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.result import U16_MAX
from dlnet.protocol.rounds import RoundTimes
from dlnet.protocol.wire import Attestation, listed_limit, sign_attestation

MODES: Final = ("fake-encoders", "inverted", "late-attest", "spoiled-probe")
# spoiled-probe: as a round's prober, commit the Probe to a key it never publishes.
# late-attest: how long after the attest deadline the attestation is published.
LATE_ATTEST_SECONDS: Final = 0.15


def fake_keys(rnd: int, n: int) -> list[bytes]:
    """``n`` made-up 32-byte encoder keys for round ``rnd`` (no encoder holds them)."""
    return [hashlib.sha256(b"dlnet/fake-encoder/%d/%d" % (rnd, i)).digest() for i in range(n)]


@dataclass(frozen=True)
class Byzantine:
    """One test-only behaviour; ``mode`` is one of MODES."""

    mode: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown byzantine mode {self.mode!r}: one of {', '.join(MODES)}")

    def attestation(self, cfg: NetworkConfig, key: SigningKey, att: Attestation) -> Attestation:
        """The attestation this validator publishes instead of its honest one ``att``."""
        shards = cfg.shards_per_round
        scores = att.score_matrix(shards).astype(np.int64)
        flags = att.outlier_matrix(shards).astype(np.uint8)
        encoders = list(att.encoders)
        if self.mode == "inverted":
            scores = U16_MAX - scores
        elif self.mode == "fake-encoders":
            limit = listed_limit(cfg)
            fakes = fake_keys(att.round, limit)[: limit - len(encoders)]
            encoders += fakes
            scores = np.hstack([scores, np.full((shards, len(fakes)), U16_MAX, np.int64)])
            flags = np.hstack([flags, np.zeros((shards, len(fakes)), np.uint8)])
            order = sorted(range(len(encoders)), key=lambda i: encoders[i])
            encoders = [encoders[i] for i in order]
            scores, flags = scores[:, order], flags[:, order]
        else:
            return att
        return sign_attestation(
            key,
            att.network_id,
            att.round,
            tuple(encoders),
            scores.astype("<u2").tobytes(),
            flags.astype(np.uint8).tobytes(),
            att.messages_digest,
        )

    def probe_key_hash(self, real: bytes) -> bytes:
        """The ``key_hash`` this validator puts in its Probe instead of its key's ``real``
        one: no key it publishes opens a spoiled probe (docs/PROTOCOL.md §2.8, limits)."""
        if self.mode == "spoiled-probe":
            return hashlib.sha256(b"dlnet/spoiled-probe" + real).digest()
        return real

    def attest_at(self, times: RoundTimes) -> float | None:
        """When to publish the attestation (None: as an honest validator does)."""
        return times.attest_deadline + LATE_ATTEST_SECONDS if self.mode == "late-attest" else None

    @property
    def votes(self) -> bool:
        return self.mode != "late-attest"
