"""Whole networks in one process (tests/innet.py): the roles of `dlnet run`, their stores and
admission, over an in-memory transport in trio's virtual time. The consensus scenarios of
issue 9 (finality threshold, byzantine validators, small pools, a validator killed or stopped
mid-round) run here in seconds; scripts/chaos.py runs them on real processes."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from innet import Encoder, InNet, Node
from threadpoolctl import threadpool_limits
from trio.testing import MockClock

from dlnet.node import reveals
from dlnet.node.byzantine import MODES
from dlnet.node.context import TrioClock
from dlnet.node.dataset_io import load_items, resolve_dataset_path
from dlnet.node.models.kinds import honest, noise
from dlnet.node.probing import grades, held_probe, probe_inputs
from dlnet.node.report import ranking
from dlnet.node.validator import round_view
from dlnet.protocol.config import DatasetRef, NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.consensus import verify_certificate
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.probes import GRADE_SCALE
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Attestation, Certificate, Commit, Kind, decode

GENESIS = 1_900_000_000
ROUND_SECONDS = 40
MINILM = pytest.mark.xdist_group("minilm")
"""For a test whose encoders run the default model (``honest``): under pytest-xdist the tests
of this group run on one worker, so that torch and MiniLM (~11 s) load in one process only
(as in tests/test_models.py); the tests of noise encoders spread over the workers."""


def keys(n: int, base: int) -> list[SigningKey]:
    return [SigningKey.from_seed(bytes([base + i]) * 32) for i in range(n)]


def network(
    tmp: Path,
    validators: list[SigningKey],
    seeds: list[SigningKey] = (),  # type: ignore[assignment]
) -> tuple[NetworkConfig, tuple[str, ...]]:
    ref = DatasetRef("builtin:corpus.txt", b"", "lines")
    data = resolve_dataset_path(ref, tmp).read_bytes()
    ref = DatasetRef(ref.path, hashlib.sha256(data).digest(), "lines")
    cfg = default_config(
        [ValidatorEntry(k.public_key, 100) for k in validators],
        GENESIS,
        dataset=ref,
        round_seconds=ROUND_SECONDS,
        registration=RegistrationParams(difficulty=0),
        seed_encoders=tuple(sorted(k.public_key for k in seeds)),
    )
    return cfg, load_items(cfg.dataset, tmp)


def run(
    cfg: NetworkConfig,
    items: tuple[str, ...],
    tmp: Path,
    scenario: Callable[[InNet], Awaitable[None]],
) -> None:
    """Run ``scenario`` (it starts the nodes, waits on ``net.clock`` and asserts) from 5 s
    before genesis, in virtual time; every node stops when it returns.

    BLAS and OpenMP run on this one thread: the nodes already share one, and once MiniLM
    (torch's OpenMP pool) has run, OpenBLAS's own threads made scoring's small SVDs ~80x
    slower on 2 cores (87 ms instead of 1 ms for a 20 x 1024 matrix)."""

    async def main() -> None:
        clock = TrioClock(GENESIS - 5 - trio.current_time())
        async with trio.open_nursery() as nursery:
            await scenario(InNet(nursery, cfg, items, tmp, clock))
            nursery.cancel_scope.cancel()

    with threadpool_limits(limits=1):
        trio.run(main, clock=MockClock(autojump_threshold=0))


async def settled(net: InNet, rnd: int) -> None:
    """Until round ``rnd``'s finality deadline and the finalize loop's grace have passed."""
    await net.clock.sleep_until(round_times(net.cfg, rnd).finality_deadline + 8)


def outcome(node: Node, rnd: int) -> tuple[bool, bytes | None] | None:
    """(finalized, result digest) as the node recorded round ``rnd``; None: not settled."""
    held = {r: (fin, digest) for r, fin, digest in node.store.round_outcomes()}
    return held.get(rnd)


def certificate(node: Node, rnd: int) -> Certificate | None:
    held = node.store.certificates(rnd, rnd)
    if not held:
        return None
    cert = decode(held[0][1], node.ctx.cfg, Kind.CERTIFICATE)
    assert isinstance(cert, Certificate)
    verify_certificate(node.ctx.cfg, cert)
    return cert


def agreed(nodes: list[Node], rnd: int) -> Certificate:
    """The one certificate every node holds for ``rnd`` (each verifies)."""
    certs = [certificate(n, rnd) for n in nodes]
    assert all(c is not None for c in certs), (
        rnd,
        [n.name for n, c in zip(nodes, certs, strict=True) if not c],
    )
    assert len({c.result for c in certs if c is not None}) == 1, rnd
    cert = certs[0]
    assert cert is not None
    return cert


async def encoders(net: InNet, kind: str, ks: list[SigningKey], per_node: int = 1) -> None:
    """Encoders of ``kind`` (model seed = index in ``ks``), ``per_node`` identities to a node:
    nodes ``<kind>-0``, ``<kind>-1``, ..."""
    cfg = net.cfg
    factory = {"honest": honest, "noise": noise}[kind]
    for start in range(0, len(ks), per_node):
        group = [
            Encoder(k, factory(cfg.dim, cfg.projection_seed, seed=start + i))
            for i, k in enumerate(ks[start : start + per_node])
        ]
        await net.start(f"{kind}-{start // per_node}", encoders=group)


@MINILM
def test_three_validators_finalize_every_round_and_rank_honest_first(tmp_path: Path) -> None:
    vals, good, bad = keys(3, 1), keys(4, 20), keys(2, 40)
    cfg, items = network(tmp_path, vals, good)
    kinds = {k.public_key.hex(): "honest" for k in good} | {
        k.public_key.hex(): "noise" for k in bad
    }

    async def scenario(net: InNet) -> None:
        validators = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals)]
        await net.start("relay")
        await encoders(net, "honest", good)
        await encoders(net, "noise", bad)
        await settled(net, 2)
        for rnd in (0, 1, 2):
            cert = agreed(validators, rnd)
            ranked = [row["kind"] for row in ranking(cert.result, kinds)]
            assert ranked == ["honest"] * 4 + ["noise"] * 2, (rnd, ranked)
        # The validators' scoring went through SharedScoring (tests/innet.py): one scoring
        # per round for the three, not one each (a grading of a probe is shared too, and may
        # run again for a validator that holds more reveals of the round than another).
        scorings = [name for name, _ in net.scores if name == "score_on_one_thread"]
        assert len(scorings) == 3, sorted(name for name, _ in net.scores)

    run(cfg, items, tmp_path, scenario)


@MINILM
def test_every_validator_grades_each_probe_alike_and_scores_with_it(tmp_path: Path) -> None:
    """The validators take turns as prober (§2.8): every round's probe reaches every encoder,
    which embeds its halves beside the shards; once the key is out every validator holds the
    same reveals of them and grades each encoder alike, and attests the same scores. The
    default model links a text's halves far above chance (1/16 for each half ranked last, 0.21
    at random, s.d. 0.055 over a probe's 32 halves); noise vectors do not (under the 99.9th
    percentile of chance, 0.42), and rank last."""
    vals, good, bad = keys(3, 1), keys(3, 20), keys(1, 40)
    cfg, items = network(tmp_path, vals)

    async def scenario(net: InNet) -> None:
        validators = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals)]
        await encoders(net, "honest", good)
        await encoders(net, "noise", bad)
        await settled(net, 3)
        probers = set()
        for rnd in (1, 2, 3):
            probes = [held_probe(v.ctx, rnd) for v in validators]
            assert probes[0] is not None and probes.count(probes[0]) == 3, rnd
            probers.add(probes[0].validator)
            graded = [
                grades(inputs)
                for v in validators
                if (inputs := probe_inputs(v.ctx, round_view(v.ctx, rnd), rnd)) is not None
            ]
            assert len(graded) == 3 and graded.count(graded[0]) == 3, rnd
            q = graded[0]
            assert min(q[k.public_key] for k in good) > 0.4 * GRADE_SCALE, (rnd, q)
            assert q[bad[0].public_key] < 0.42 * GRADE_SCALE, (rnd, q)
            atts = [a.msg for a in validators[0].store.held(Attestation, rnd)]
            assert len(atts) == 3 and len({(a.encoders, a.scores) for a in atts}) == 1, rnd
            cert = agreed(validators, rnd)
            scores = dict(zip(cert.result.encoders, cert.result.encoder_scores, strict=True))
            assert min(scores[k.public_key] for k in good) > scores[bad[0].public_key], rnd
        assert probers == {k.public_key for k in vals}

    run(cfg, items, tmp_path, scenario)


@MINILM
def test_a_spoiled_probe_grades_nobody_and_the_other_probes_still_rank(tmp_path: Path) -> None:
    """A byzantine prober commits its Probe to a key it never publishes (`spoiled-probe`,
    docs/PROTOCOL.md §2.8): in its round no validator grades anyone (its key opens nothing), in
    the others every validator grades alike, every round finalizes with one result, and the
    honest encoders rank above noise throughout."""
    vals, good, bad = keys(3, 1), keys(3, 20), keys(1, 40)
    cfg, items = network(tmp_path, vals)

    async def scenario(net: InNet) -> None:
        validators = [await net.start("byz", validator=vals[0], byzantine="spoiled-probe")]
        validators += [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals[1:])]
        await encoders(net, "honest", good)
        await encoders(net, "noise", bad)
        await settled(net, 3)
        spoiled = []
        for rnd in (1, 2, 3):
            probe = held_probe(validators[1].ctx, rnd)
            assert probe is not None, rnd
            inputs = [probe_inputs(v.ctx, round_view(v.ctx, rnd), rnd) for v in validators]
            if probe.validator == vals[0].public_key:
                spoiled.append(rnd)
                assert inputs == [None, None, None], rnd
            else:
                graded = [grades(i) for i in inputs if i is not None]
                assert len(graded) == 3 and graded.count(graded[0]) == 3, rnd
            cert = agreed(validators, rnd)
            scores = dict(zip(cert.result.encoders, cert.result.encoder_scores, strict=True))
            assert min(scores[k.public_key] for k in good) > scores[bad[0].public_key], rnd
        assert len(spoiled) == 1, spoiled  # three validators probe in turn

    run(cfg, items, tmp_path, scenario)


@MINILM
def test_every_adversary_behaviour_ranks_below_every_honest_encoder(tmp_path: Path) -> None:
    """The encoder adversaries of node/adversaries.py against four honest encoders: each
    ranks below all of them; a copycat (others' reveals re-signed) and an equivocator (two
    embeddings per slot, pushed to one of the three validators) score 0."""
    vals, good = keys(3, 1), keys(4, 20)
    cheats = dict(zip(("fabricated", "copycat", "replay", "equivocator"), keys(4, 60), strict=True))
    cfg, items = network(tmp_path, vals, good)

    async def scenario(net: InNet) -> None:
        validators = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals)]
        await encoders(net, "honest", good)
        for i, (name, k) in enumerate(cheats.items()):
            factory = noise if name == "copycat" else honest
            model = factory(cfg.dim, cfg.projection_seed, seed=10 + i)
            await net.start(name, encoders=[Encoder(k, model, behaviour=name)])
        # The equivocator reaches one validator only: the others learn of its second reveals
        # from the evidence that one gossips (its pushes reach only the peers it has).
        net.net.cut("equivocator", "v1")
        net.net.cut("equivocator", "v2")
        await settled(net, 2)
        kinds = {k.public_key.hex(): "honest" for k in good} | {
            k.public_key.hex(): name for name, k in cheats.items()
        }
        # Replay re-signs the previous round's embeddings from round 1 on, and re-sends its
        # messages of both previous rounds from round 2 on.
        for rnd in (1, 2):
            rows = ranking(agreed(validators, rnd).result, kinds)
            ranked = [row["kind"] for row in rows]
            assert ranked[:4] == ["honest"] * 4, (rnd, rows)
            scores = {row["kind"]: row["score"] for row in rows}
            assert scores.get("copycat", 0.0) == scores.get("equivocator", 0.0) == 0.0, rows
        # Each validator counted the cells its attestations scored 0, by why: the forged
        # inverses too exact on all 4 shards of rounds 0-2, the replayed texts off the
        # consensus (or nearer another text) on those of rounds 1-2.
        for node in validators:
            cut = node.store.counters()
            assert cut.get("cut:too_exact", 0) >= 12, cut
            assert cut.get("cut:consensus", 0) + cut.get("cut:text", 0) >= 8, cut

    run(cfg, items, tmp_path, scenario)


@MINILM
def test_an_encoder_restarted_after_its_commit_reveals_what_it_committed_to(
    tmp_path: Path,
) -> None:
    """kill -9 an encoder after it committed in round 1, restart it on its data dir before the
    commit deadline: it reveals the embeddings it committed to, from its store (making new
    ones would be equivocation), and is scored like the others."""
    vals, good = keys(3, 1), keys(4, 20)
    cfg, items = network(tmp_path, vals, good)
    victim = good[0].public_key

    async def scenario(net: InNet) -> None:
        validators = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals)]
        await encoders(net, "honest", good)
        times = round_times(cfg, 1)
        await net.clock.sleep_until(times.start + 5)
        assert any(v.msg.encoder == victim for v in validators[0].store.held(Commit, 1))
        net.kill("honest-0")
        await net.clock.sleep_until(times.start + 8)
        await net.restart("honest-0")
        await settled(net, 1)
        result = agreed(validators, 1).result
        assert victim in result.encoders
        assert result.encoder_scores[result.encoders.index(victim)] > 0
        for v in validators:
            assert v.store.equivocators(1) == set(), v.name

    run(cfg, items, tmp_path, scenario)


def test_reveals_pushed_to_one_validator_reach_the_others_by_forwarding(tmp_path: Path) -> None:
    """Both encoder nodes are linked to v0 only: v0 forwards their pushed reveals to v1 and
    v2 (the only way anything is pushed to them), which hold every reveal and agree."""
    vals, encs = keys(3, 1), keys(2, 40)
    cfg, items = network(tmp_path, vals)

    async def scenario(net: InNet) -> None:
        v = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals)]
        for node in ("noise-0", "noise-1"):
            net.net.cut(node, "v1")
            net.net.cut(node, "v2")
        await encoders(net, "noise", encs)
        await settled(net, 1)
        # every slot of every shard, and every half of the round's probe
        expected = len(encs) * (
            cfg.shards_per_round * cfg.slots_per_shard + 2 * cfg.scoring.probe_texts
        )
        for rnd in (0, 1):
            held = [len(node.store.messages(Kind.EMBEDDING, rnd)) for node in v]
            assert held == [expected] * 3, (rnd, held)
            assert set(agreed(v, rnd).result.encoders) == {k.public_key for k in encs}
        counts = [node.store.counters() for node in v]
        assert counts[0]["push:forwarded"] >= 2 * 2 * expected  # to v1 and v2, both rounds
        assert counts[1]["push:received"] >= 2 and counts[2]["push:received"] >= 2

    run(cfg, items, tmp_path, scenario)


def test_a_keeper_that_never_forwards_costs_the_others_a_repair_not_a_reveal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder nodes (two identities each) are linked to v0 and v1, not v2; every push
    asks v1 to forward, and v1 never does (a byzantine keeper). Nothing is pushed to v2, and
    it still holds every reveal (fetched by commitment), and all agree."""
    vals, encs = keys(3, 1), keys(4, 40)
    cfg, items = network(tmp_path, vals)
    monkeypatch.setattr(reveals.random, "choice", lambda seq: "v1" if "v1" in seq else seq[0])
    offer = reveals.Forwarder.offer
    silent: list[object] = []

    def offer_unless_silent(
        self: reveals.Forwarder, source: str, items: list[bytes], skip: frozenset[str]
    ) -> None:
        if self.ingest not in silent:
            offer(self, source, items, skip)

    monkeypatch.setattr(reveals.Forwarder, "offer", offer_unless_silent)

    async def scenario(net: InNet) -> None:
        v = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals)]
        silent.append(v[1].ctx.ingest)
        for node in ("noise-0", "noise-1"):
            net.net.cut(node, "v2")
        await encoders(net, "noise", encs, per_node=2)
        await settled(net, 2)
        # every slot of every shard, and every half of the round's probe
        expected = len(encs) * (
            cfg.shards_per_round * cfg.slots_per_shard + 2 * cfg.scoring.probe_texts
        )
        for rnd in (0, 1, 2):
            held = [len(node.store.messages(Kind.EMBEDDING, rnd)) for node in v]
            assert held == [expected] * 3, (rnd, held)
            assert set(agreed(v, rnd).result.encoders) == {k.public_key for k in encs}
        counts = [node.store.counters() for node in v]
        assert "push:forwarded" not in counts[0] and "push:forwarded" not in counts[1]
        assert "push:received" not in counts[2]

    run(cfg, items, tmp_path, scenario)


def test_two_thirds_is_not_final_and_a_late_validator_cannot_change_that(
    tmp_path: Path,
) -> None:
    """Finality needs MORE than 2/3 of the stake: two of three equal validators record their
    rounds as not finalized (no result, no certificate); the third, started later, does not
    finalize them after the fact, and the first round it takes part in from the start is
    final with all three signatures."""
    vals, encs = keys(3, 1), keys(2, 40)
    cfg, items = network(tmp_path, vals)

    async def scenario(net: InNet) -> None:
        v0 = await net.start("v0", validator=vals[0])
        v1 = await net.start("v1", validator=vals[1])
        await encoders(net, "noise", encs)
        await settled(net, 0)
        assert outcome(v0, 0) == outcome(v1, 0) == (False, None)
        assert certificate(v0, 0) is None
        await net.clock.sleep_until(round_times(cfg, 1).start + 1)
        v2 = await net.start("v2", validator=vals[2])
        await settled(net, 2)
        for v in (v0, v1, v2):
            assert outcome(v, 0) in (None, (False, None)), v.name
            assert certificate(v, 0) is None, v.name
        cert = agreed([v0, v1, v2], 2)
        assert sorted(s for s, _ in cert.votes) == sorted(k.public_key for k in vals)
        assert set(cert.result.encoders) == {k.public_key for k in encs}

    run(cfg, items, tmp_path, scenario)


@pytest.mark.parametrize("mode", MODES)
def test_one_byzantine_validator_of_four_neither_voids_pads_nor_stalls_a_round(
    tmp_path: Path, mode: str
) -> None:
    vals, encs = keys(4, 1), keys(3, 40)
    cfg, items = network(tmp_path, vals)

    async def scenario(net: InNet) -> None:
        await net.start("byzantine", validator=vals[0], byzantine=mode)
        honest_vals = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals[1:])]
        await encoders(net, "noise", encs)
        await settled(net, 1)
        for rnd in (0, 1):
            cert = agreed(honest_vals, rnd)
            assert set(cert.result.encoders) == {k.public_key for k in encs}, (mode, rnd)

    run(cfg, items, tmp_path, scenario)


@MINILM
@pytest.mark.parametrize("count", [1, 2])
def test_a_pool_too_small_to_check_certifies_no_output(tmp_path: Path, count: int) -> None:
    """Fewer voices than `min_encoders_for_lof`: the round certifies scores of 0 and an
    all-zero weighted embedding, never one unchecked encoder's output."""
    vals, encs = keys(1, 1), keys(count, 20)
    cfg, items = network(tmp_path, vals, encs)

    async def scenario(net: InNet) -> None:
        v0 = await net.start("v0", validator=vals[0])
        await encoders(net, "honest", encs)
        await settled(net, 1)
        for rnd in (0, 1):
            result = agreed([v0], rnd).result
            assert len(result.encoders) == count, rnd
            assert set(result.encoder_scores) == {0}, (rnd, result.encoder_scores)
            assert all(w == bytes(4 * cfg.dim) for w in result.weighted), rnd

    run(cfg, items, tmp_path, scenario)


@pytest.mark.parametrize("fault", ["kill-restart", "stop-40s"])
def test_a_validator_killed_or_stopped_mid_round_comes_back_and_agrees(
    tmp_path: Path, fault: str
) -> None:
    """kill -9 one of four validators 1 s after round 1's commit deadline and restart it 3 s
    later on its data dir, or SIGSTOP it 5 s into round 1 for 40 s: the other three finalize
    every round; once back, it holds the same certificates and never a conflicting one."""
    vals, encs = keys(4, 1), keys(3, 40)
    cfg, items = network(tmp_path, vals)

    async def scenario(net: InNet) -> None:
        nodes = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals)]
        await encoders(net, "noise", encs)
        victim = nodes[1]
        if fault == "kill-restart":
            await net.clock.sleep_until(round_times(cfg, 1).commit_deadline + 1)
            net.kill(victim.name)
            await net.clock.sleep_until(net.clock.now() + 3)
            nodes[1] = await net.restart(victim.name)
        else:
            await net.clock.sleep_until(round_times(cfg, 1).start + 5)
            victim.host.pause()
            await net.clock.sleep_until(net.clock.now() + 40)
            victim.host.resume()
        await settled(net, 3)
        others = [n for n in nodes if n is not nodes[1]]
        for rnd in (0, 1, 2, 3):
            agreed(others, rnd)
        for rnd in (2, 3):  # back 5 s into round 2 at the latest: it finalized them as well
            agreed(nodes, rnd)
        for rnd in (0, 1):  # whatever it holds of the rounds it missed is the same
            mine = certificate(nodes[1], rnd)
            assert mine is None or mine.result == agreed(others, rnd).result

    run(cfg, items, tmp_path, scenario)
