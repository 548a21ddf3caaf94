"""Commit bundles (node/commits.py): framing, the commit topic's verdicts, gathering."""

from __future__ import annotations

import itertools
from pathlib import Path

import msgpack
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from dlnet.node import counters as C
from dlnet.node.commits import (
    BUNDLE_BYTES,
    BUNDLE_ITEMS,
    COMMIT_GATHER,
    CommitGroup,
    admit_bundle,
    bundle_body,
    bundles,
    check_bundle,
    gossip_payload,
    parse_bundle,
)
from dlnet.node.ingest import Ingest
from dlnet.node.store import Store
from dlnet.node.transport import Verdict
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Kind, encode, sign_commit, topic


@pytest.fixture
def cfg() -> NetworkConfig:
    return default_config(
        [ValidatorEntry(SigningKey.from_seed(b"\x01" * 32).public_key, 1)],
        1_800_000_000,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=0),
    )


def node(cfg: NetworkConfig, path: Path) -> Ingest:
    t = round_times(cfg, 5).start + 1
    return Ingest(cfg, Store.open(path), lambda: t)


def commits(cfg: NetworkConfig, n: int, rnd: int = 5, seed: int = 0) -> list[bytes]:
    """``n`` commits of ``n`` distinct encoders."""
    slots = cfg.shards_per_round * cfg.slots_per_shard
    out = []
    for i in range(n):
        key = SigningKey.from_seed(bytes([seed, i]) * 16)
        hashes = tuple(bytes([seed, i, s]) + bytes(29) for s in range(slots))
        out.append(encode(sign_commit(key, cfg.network_id, rnd, hashes)))
    return out


@given(st.lists(st.integers(1, 20_000), max_size=200))
def test_bundles_keep_order_and_each_fits(sizes: list[int]) -> None:
    items = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    parts = bundles(items)
    assert [i for p in parts for i in p] == items
    for part in parts:
        assert 1 <= len(part) <= BUNDLE_ITEMS
        assert len(part) == 1 or sum(map(len, part)) <= BUNDLE_BYTES
    # Greedy: a bundle is cut only when the next item would not fit.
    for a, b in itertools.pairwise(parts):
        assert len(a) == BUNDLE_ITEMS or sum(map(len, a)) + len(b[0]) > BUNDLE_BYTES


@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=BUNDLE_ITEMS, unique=True))
def test_a_bundle_parses_back_to_its_items(items: list[bytes]) -> None:
    assert parse_bundle(bundle_body(items)) == items


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgpack.packb([]),
        msgpack.packb([b"x"] * (BUNDLE_ITEMS + 1)),
        msgpack.packb([b"x", b"x"]),  # the same commit twice
        msgpack.packb([b"x", "text"]),
        msgpack.packb({"a": b"x"}),
        msgpack.packb(b"a raw commit, not a bundle"),
        b"\x91" * 500 + b"\xc0",  # nested past the depth bound
    ],
)
def test_malformed_bundles_parse_to_none(body: bytes) -> None:
    assert parse_bundle(body) is None


def test_only_commits_are_framed_as_bundles(cfg: NetworkConfig) -> None:
    data = commits(cfg, 1)[0]
    assert parse_bundle(gossip_payload(Kind.COMMIT, data)) == [data]
    assert gossip_payload(Kind.ATTESTATION, data) is data


def test_a_bundle_is_accepted_once_and_its_commits_stored(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    ingest = node(cfg, tmp_path / "v.sqlite")
    items = commits(cfg, 5)
    body = bundle_body(items)
    assert trio.run(check_bundle, ingest, body) is Verdict.ACCEPT
    admit_bundle(ingest, items)
    assert sorted(ingest.store.messages(Kind.COMMIT, 5)) == sorted(items)
    assert ingest.counters.get(C.ACCEPTED, "commit") == 5
    # The same bundle again carries nothing new: not relayed.
    assert trio.run(check_bundle, ingest, body) is Verdict.IGNORE
    # Another bundle with one new commit among held ones is relayed for the new one.
    new = commits(cfg, 1, seed=7)
    mixed = [*items[:3], *new]
    assert trio.run(check_bundle, ingest, bundle_body(mixed)) is Verdict.ACCEPT
    admit_bundle(ingest, mixed)
    assert sorted(ingest.store.messages(Kind.COMMIT, 5)) == sorted(items + new)


def test_a_bundle_item_judged_old_or_held_is_neither_decoded_again_nor_counted_twice(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    ingest = node(cfg, tmp_path / "v.sqlite")
    held, new = commits(cfg, 1, seed=1), commits(cfg, 1, seed=2)
    old = commits(cfg, 1, rnd=1, seed=3)  # round 1 is out of the window at round 5
    assert trio.run(check_bundle, ingest, bundle_body(held)) is Verdict.ACCEPT
    admit_bundle(ingest, held)
    mixed = [*held, *new, *old]
    assert trio.run(check_bundle, ingest, bundle_body(mixed)) is Verdict.ACCEPT
    admit_bundle(ingest, mixed)
    assert sorted(ingest.store.messages(Kind.COMMIT, 5)) == sorted(held + new)
    assert ingest.verifies[Kind.COMMIT] == 3  # held, new, old: each once
    assert ingest.counters.get(C.IGNORED, "duplicate") == 1
    assert ingest.counters.get(C.IGNORED, "old_round") == 1
    assert ingest.counters.get(C.ACCEPTED, "commit") == 2


def test_one_invalid_commit_rejects_the_bundle_and_its_valid_ones_stay_new(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    """A peer wraps honest commits with a forged one ahead of their own bundle: the bundle is
    rejected whole and nothing of it kept, so the honest bundle still brings them new and is
    relayed (kept, they would have made it a duplicate here)."""
    ingest = node(cfg, tmp_path / "v.sqlite")
    good = commits(cfg, 2)
    forged = bytearray(commits(cfg, 1, seed=3)[0])
    forged[-1] ^= 1  # the signature no longer verifies
    assert trio.run(check_bundle, ingest, bundle_body([*good, bytes(forged)])) is Verdict.REJECT
    assert ingest.counters.get(C.REJECTED, "bad_signature") == 1
    assert ingest.store.messages(Kind.COMMIT, 5) == []
    assert not ingest._checked
    assert trio.run(check_bundle, ingest, bundle_body(good)) is Verdict.ACCEPT
    admit_bundle(ingest, good)
    assert sorted(ingest.store.messages(Kind.COMMIT, 5)) == sorted(good)


def test_a_malformed_bundle_is_rejected_and_counted(cfg: NetworkConfig, tmp_path: Path) -> None:
    ingest = node(cfg, tmp_path / "v.sqlite")
    raw = commits(cfg, 1)[0]  # a commit not framed as a bundle
    assert trio.run(check_bundle, ingest, raw) is Verdict.REJECT
    assert ingest.counters.get(C.REJECTED, "malformed_bundle") == 1
    assert ingest.store.messages(Kind.COMMIT, 5) == []


class Publisher:
    """A transport that records what is published (the only call a `CommitGroup` makes)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, name: str, data: bytes) -> None:
        await trio.sleep(0.01)
        self.sent.append((name, data))


def test_the_commits_of_a_process_go_out_as_one_bundle(cfg: NetworkConfig) -> None:
    """Commits published within COMMIT_GATHER of the first are one gossip message; one
    published later is the next gathering's."""
    host = Publisher()
    group = CommitGroup(host, cfg.network_id)  # type: ignore[arg-type]
    items = commits(cfg, 30)

    async def main() -> None:
        async def one(i: int, after: float) -> None:
            await trio.sleep(after)
            await group.publish(items[i])

        async with trio.open_nursery() as nursery:
            for i in range(29):
                nursery.start_soon(one, i, i * COMMIT_GATHER / 40)
            nursery.start_soon(one, 29, 3 * COMMIT_GATHER)

    trio.run(main, clock=MockClock(autojump_threshold=0))
    assert [name for name, _ in host.sent] == [topic(cfg.network_id, Kind.COMMIT)] * 2
    assert [parse_bundle(body) for _, body in host.sent] == [items[:29], items[29:]]
