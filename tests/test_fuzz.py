"""Fuzz harness: seeded random inputs (random bytes, mutated valid messages, deep nesting, huge
integers, wrong types) through every decoder and through the node's own intake functions
(gossip, commit bundles, sync answers and requests, reveal pushes and their acks).

Asserts 0 untyped exceptions (decoders raise only `Reject`, result/px decoding only
`ValueError`, the sync server only `BadRequest`) and 0 invalid messages accepted (anything a
decoder or the ingest accepts re-encodes to the same bytes and, if signed, verifies)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import trio

from dlnet.node.commits import admit_bundle, bundle_body, check_bundle, parse_bundle
from dlnet.node.discovery import PeerExchange, decode_px, encode_px
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.reveals import parse_ack, parse_push, push_body, receive
from dlnet.node.store import Store
from dlnet.node.sync import BadRequest, answer, parse_items
from dlnet.node.transport import Verdict
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.result import RoundResult, decode_result, encode_result
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import (
    Certificate,
    Kind,
    Reject,
    decode,
    encode,
    make_embedding,
    message_id,
    sign_attestation,
    sign_commit,
    sign_vote,
    signature_valid,
)

GENESIS = 1_800_000_000
VALIDATOR = SigningKey.from_seed(b"\x01" * 32)
ENCODER = SigningKey.from_seed(b"\x02" * 32)
N_PER_SEED = 1001  # mutations per seed; 10 seeds: 10,010 inputs, each through ~25 paths
ODD_VALUES: list[Any] = [
    -1,
    2**63,
    2**64 - 1,
    2**32,
    1.5,
    float("nan"),
    None,
    True,
    "x",
    b"",
    [],
    {"k": 1},
    [[[]]],
]


@pytest.fixture(scope="module")
def cfg() -> NetworkConfig:
    return default_config(
        [ValidatorEntry(VALIDATOR.public_key, 1)],
        GENESIS,
        dataset_sha256=bytes(32),
        dim=16,
        registration=RegistrationParams(difficulty=0),  # any nonce: no proof to compute
    )


def valid_messages(cfg: NetworkConfig) -> list[tuple[Kind, bytes]]:
    net, rnd = cfg.network_id, 3
    n = cfg.shards_per_round * cfg.slots_per_shard
    hashes = tuple(bytes([i]) * 32 for i in range(n))
    vec = np.linspace(-1, 1, cfg.dim).astype(np.float32)
    emb = make_embedding(ENCODER, net, rnd, 1, 1, bytes(range(16)), vec)
    cells = cfg.shards_per_round
    att = sign_attestation(
        VALIDATOR, net, rnd, (ENCODER.public_key,), bytes(2 * cells), bytes(cells), bytes(32)
    )
    weighted = tuple(vec.tobytes() for _ in range(cfg.shards_per_round))
    result = RoundResult(
        net, rnd, (), (), (), (), (), weighted, (), bytes(32), (bytes(32),) * len(weighted)
    )
    return [
        (
            Kind.COMMIT,
            encode(sign_commit(ENCODER, net, rnd, hashes)),
        ),
        (Kind.EMBEDDING, encode(emb)),
        (Kind.ATTESTATION, encode(att)),
        (Kind.VOTE, encode(sign_vote(VALIDATOR, net, rnd, bytes(32)))),
        (Kind.CERTIFICATE, encode(Certificate(net, rnd, result, ()))),
    ]


def mutations(rng: random.Random, data: bytes) -> Iterator[bytes]:
    """Random bytes, byte flips, truncations, insertions, deep nesting, field swaps."""
    try:
        fields = msgpack.unpackb(data, raw=False)
    except ValueError:
        fields = [data]  # not msgpack (peer exchange): swapped fields give wrong types
    if not isinstance(fields, list):
        fields = [fields]
    for _ in range(N_PER_SEED):
        op = rng.randrange(7)
        if op == 0:
            yield rng.randbytes(rng.randrange(0, 300))
        elif op == 1:
            b = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield bytes(b)
        elif op == 2:
            yield data[: rng.randrange(len(data))]
        elif op == 3:
            i = rng.randrange(len(data))
            yield data[:i] + rng.randbytes(rng.randrange(1, 9)) + data[i:]
        elif op == 4:
            depth = rng.choice([8, 9, 64, 500, 2000, 100_000])
            yield b"\x91" * depth + rng.choice([b"\xc0", data])
        else:
            f = list(fields)
            f[rng.randrange(len(f))] = rng.choice(ODD_VALUES)
            try:
                yield bytes(msgpack.packb(f, use_bin_type=True))
            except (ValueError, TypeError, OverflowError):
                yield data


def accepted_is_valid(msg: Any, data: bytes) -> None:
    assert encode(msg) == data
    if not isinstance(msg, Certificate):
        assert signature_valid(msg)


def drive(cfg: NetworkConfig, store: Store, ingest: Ingest, now: float, data: bytes) -> None:
    """One input through every decoder and intake path; only typed errors may escape them."""
    for k in (None, *Kind):
        with contextlib.suppress(Reject):
            accepted_is_valid(decode(data, cfg, k), data)
    with contextlib.suppress(ValueError):
        assert encode_result(decode_result(data)) == data
    with contextlib.suppress(ValueError):
        assert encode_px(decode_px(data)) == data
    with contextlib.suppress(BadRequest):
        assert parse_items(answer(store, cfg, now, data)) is not None
    parsed = parse_items(data)
    assert parsed is None or all(type(i) is bytes for i in parsed)
    push = parse_push(data)
    pushed = receive(ingest, data)  # a reveal push's body
    assert isinstance(pushed, str) or (not isinstance(push, str) and len(pushed) == len(push.items))
    items = [] if isinstance(push, str) else push.items
    for item, outcome in zip(items, [] if isinstance(pushed, str) else pushed, strict=True):
        if outcome is Outcome.NEW:
            accepted_is_valid(decode(item, cfg, Kind.EMBEDDING), item)
    for n in (0, 1, 2):
        ack = parse_ack(data, n)
        assert ack is None or (len(ack) == n and all(type(h) is bool for h in ack))
    verdict = trio.run(check_bundle, ingest, data)  # the commit topic's gossip payload
    bundle = parse_bundle(data)
    assert verdict is Verdict.REJECT or bundle is not None
    if verdict is Verdict.ACCEPT:
        assert bundle is not None
        admit_bundle(ingest, bundle)
        for item in bundle:
            if ingest.store.has(message_id(item)):
                accepted_is_valid(decode(item, cfg, Kind.COMMIT), item)
    for k in (Kind.COMMIT, Kind.EMBEDDING, Kind.ATTESTATION, Kind.VOTE):
        ingest.check(k, data)
        if ingest.admit_fetched(data, k, lambda m: True) is Outcome.NEW:
            accepted_is_valid(decode(data, cfg, k), data)
        if ingest.admit(data, k, window=False) is Outcome.NEW:
            accepted_is_valid(decode(data, cfg, k), data)


def fuzz_seeds(cfg: NetworkConfig) -> list[tuple[str, bytes]]:
    """The valid inputs the mutations start from: one message of each kind, a peer exchange,
    a sync request, a reveal push of two reveals and a bare round result."""
    seeds = valid_messages(cfg)
    px = encode_px(PeerExchange(2, False, ("/ip4/127.0.0.1/tcp/1/p2p/QmPeer",)))
    sync_req = bytes(msgpack.packb(["round", 1, 3], use_bin_type=True))
    push = push_body([seeds[1][1], seeds[1][1]], frozenset({"QmPeer"}))  # two reveals
    bundle = bundle_body([seeds[0][1]])  # the commit topic's framing of one commit
    result_bytes = encode_result(decode(seeds[-1][1], cfg, Kind.CERTIFICATE).result)  # type: ignore[union-attr]
    return [
        *((kind.name.lower(), data) for kind, data in seeds),
        ("px", px),
        ("sync_request", sync_req),
        ("push", push),
        ("bundle", bundle),
        ("result", result_bytes),
    ]


SEED_NAMES = ("commit", "embedding", "attestation", "vote", "certificate", "px",
              "sync_request", "push", "bundle", "result")  # fmt: skip


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_fuzz_decoders_and_intake(cfg: NetworkConfig, tmp_path: Path, seed_name: str) -> None:
    """N_PER_SEED mutations of one seed (10 seeds, one test each so that pytest-xdist spreads
    them: 10,010 inputs in all) through every decoder and intake path."""
    seeds = dict(fuzz_seeds(cfg))
    assert tuple(seeds) == SEED_NAMES
    rng = random.Random(f"20261128/{seed_name}")
    store = Store.open(tmp_path / "fuzz.sqlite", synced=False)  # a throwaway store
    now = round_times(cfg, 3).start + 1
    ingest = Ingest(cfg, store, lambda: now)
    inputs = 0
    # One transaction for the seed's inputs (as sync answers and reveal pushes are stored): a
    # commit per rejected input's counter bump was half the test's time, and checked nothing.
    with store.batch():
        for data in mutations(rng, seeds[seed_name]):
            inputs += 1
            drive(cfg, store, ingest, now, data)
    store.close()
    assert inputs == N_PER_SEED


def test_fuzz_seeds_are_valid(cfg: NetworkConfig) -> None:
    """The harness can tell valid from invalid: every message seed is accepted and valid."""
    for kind, seed in valid_messages(cfg):
        accepted_is_valid(decode(seed, cfg, kind), seed)
