"""Which key grades a round's probe at a node (node/probing.py `opening_key`, docs/PROTOCOL.md
§2.8 rules 2 and 7): only the prober's key that opens the Probe's commitment, and none once the
prober is caught equivocating in the round. In-process: a store and its admission, no network."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from dlnet.node.context import NodeContext
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.probing import ProbeLedger, opening_key, probe_inputs
from dlnet.node.store import Store
from dlnet.node.sync import SyncClient
from dlnet.node.transport import Transport
from dlnet.node.validator import round_view
from dlnet.protocol.canonical import sha256
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.probes import key_hash, prober
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Kind, Message, encode, sign_commit, sign_probe, sign_probe_key

VALIDATORS = [SigningKey.from_seed(sha256(b"probing validator%d" % i)) for i in range(3)]
RND = 4
HALVES = ("a b", "c", "d e", "f") * 8  # 2 x the default 16 texts


def node(tmp: Path) -> tuple[NetworkConfig, NodeContext, SigningKey]:
    """A node of a 3-validator network, its clock 3 s after round RND's commit deadline (a
    probe key is admitted), and RND's prober."""
    cfg = default_config(
        [ValidatorEntry(k.public_key, 10) for k in VALIDATORS],
        1_700_000_000,
        dataset_sha256=sha256(b"data"),
        registration=RegistrationParams(difficulty=0),  # any nonce: no proof to compute
    )
    now = round_times(cfg, RND).commit_deadline + 3.0
    store = Store.open(tmp / "store.sqlite")
    ingest = Ingest(cfg, store, lambda: now)
    # opening_key reads the store only: no transport, no sync.
    ctx = NodeContext(cfg, (), store, ingest, cast(Transport, None), cast(SyncClient, None))
    who = prober(cfg, RND)
    return cfg, ctx, next(k for k in VALIDATORS if k.public_key == who)


def admit(ctx: NodeContext, kind: Kind, msg: Message) -> Outcome:
    return ctx.ingest.admit(encode(msg), kind)


def test_the_key_that_opens_the_probe_grades_it(tmp_path: Path) -> None:
    cfg, ctx, key = node(tmp_path)
    probe_key = sign_probe_key(key, cfg.network_id, RND)
    probe = sign_probe(key, cfg.network_id, RND, HALVES, key_hash(probe_key.signature))
    assert opening_key(ctx, RND) is None
    assert admit(ctx, Kind.PROBE_KEY, probe_key) is Outcome.NEW
    assert opening_key(ctx, RND) is None  # no probe held yet
    assert admit(ctx, Kind.PROBE, probe) is Outcome.NEW
    assert opening_key(ctx, RND) == probe_key


def test_a_key_that_does_not_open_the_probe_grades_nothing(tmp_path: Path) -> None:
    """A prober committed to another key (a signature it could make with another nonce, or
    none): its valid deterministic signature opens nothing, so nobody grades the round and the
    prober has nothing left to choose once the reveals are public."""
    cfg, ctx, key = node(tmp_path)
    probe_key = sign_probe_key(key, cfg.network_id, RND)
    other = sha256(b"a key of another signing")
    assert admit(ctx, Kind.PROBE, sign_probe(key, cfg.network_id, RND, HALVES, other)) is (
        Outcome.NEW
    )
    assert admit(ctx, Kind.PROBE_KEY, probe_key) is Outcome.NEW
    assert opening_key(ctx, RND) is None


def test_a_prober_caught_equivocating_grades_nobody(tmp_path: Path) -> None:
    """Two Probes of one round (to split the encoders, or the validators): the second is
    evidence, and a node holding it grades the round with no key at all."""
    cfg, ctx, key = node(tmp_path)
    probe_key = sign_probe_key(key, cfg.network_id, RND)
    opens = key_hash(probe_key.signature)
    assert admit(ctx, Kind.PROBE, sign_probe(key, cfg.network_id, RND, HALVES, opens)) is (
        Outcome.NEW
    )
    assert admit(ctx, Kind.PROBE_KEY, probe_key) is Outcome.NEW
    assert opening_key(ctx, RND) == probe_key
    second = sign_probe(key, cfg.network_id, RND, ("g h", *HALVES[1:]), opens)
    assert admit(ctx, Kind.PROBE, second) is Outcome.EQUIVOCATION
    assert opening_key(ctx, RND) is None


def test_a_ledger_forgets_a_round_whose_key_lost_its_standing() -> None:
    ledger = ProbeLedger()
    a, b = b"a" * 32, b"b" * 32
    ledger.record(1, a, {b"e": 60000})
    ledger.record(2, b, {b"e": 30000})
    assert ledger.factors(2, [b"e"], 12) == {b"e": 45000 / 65535}
    ledger.forget(2)
    assert not ledger.has(2) and ledger.factors(2, [b"e"], 12) == {b"e": 60000 / 65535}


def test_an_encoder_that_skipped_the_probe_is_not_graded_and_loses_the_round(
    tmp_path: Path,
) -> None:
    """A commit without the probe's halves (an encoder that joined mid-round, or saved the
    work): it is left out of the grading inputs, so no grade enters its history (no 0 to
    drag the rounds after), and the validator scores the encoders left out 0 in this round."""
    cfg, ctx, key = node(tmp_path)
    probe_key = sign_probe_key(key, cfg.network_id, RND)
    probe = sign_probe(key, cfg.network_id, RND, HALVES, key_hash(probe_key.signature))
    admit(ctx, Kind.PROBE, probe)
    admit(ctx, Kind.PROBE_KEY, probe_key)
    answered, skipped = (SigningKey.from_seed(sha256(b"encoder%d" % i)) for i in range(2))
    shards = cfg.shards_per_round * cfg.slots_per_shard
    for enc, listed in ((answered, shards + len(HALVES)), (skipped, shards)):
        commit = sign_commit(enc, cfg.network_id, RND, (b"h" * 32,) * listed)
        ctx.ingest.admit_own(commit, encode(commit))  # held from before the deadline
    view = round_view(ctx, RND)
    inputs = probe_inputs(ctx, view, RND)
    assert inputs is not None and set(inputs[1]) == {answered.public_key}
    encoders = [answered.public_key, skipped.public_key]
    assert set(encoders) - set(inputs[1]) == {skipped.public_key}
