"""A 24-encoder network in one process (issue 11; the real-process run is
`test_scale_e2e.py`, heavy): every round finalizes, and a round is final only with a
certificate over a non-empty result attested by enough stake, every encoder counted."""

from __future__ import annotations

from pathlib import Path

from innet import InNet
from test_innet import MINILM, agreed, encoders, keys, network, outcome, run, settled

from dlnet.node.report import ranking
from dlnet.protocol.consensus import finality_reached
from dlnet.protocol.result import result_digest

pytestmark = MINILM  # its honest encoders run MiniLM (tests/test_innet.py)
PER_NODE = 8


def test_24_encoders_finalize_every_round_with_a_full_certificate(tmp_path: Path) -> None:
    vals, good, bad = keys(3, 1), keys(16, 100), keys(8, 140)
    cfg, items = network(tmp_path, vals, good)
    kinds = {k.public_key.hex(): "honest" for k in good} | {
        k.public_key.hex(): "noise" for k in bad
    }

    async def scenario(net: InNet) -> None:
        validators = [await net.start(f"v{i}", validator=k) for i, k in enumerate(vals)]
        # Eight encoder identities to a node, as test_scale_e2e groups them eight to a process
        # (`dlnet run --encoders-file`): each still commits, reveals and is scored as its own
        # encoder, while the network simulates 6 nodes instead of 27.
        await encoders(net, "honest", good, PER_NODE)
        await encoders(net, "noise", bad, PER_NODE)
        await settled(net, 1)
        for rnd in (0, 1):  # every node is up 5 s before genesis: round 0 is a whole round
            res = agreed(validators, rnd).result
            for v in validators:
                assert outcome(v, rnd) == (True, result_digest(res)), (v.name, rnd)
            assert len(res.encoders) == 24, (rnd, len(res.encoders))
            attested = sum(cfg.stake_of(v) for v, _ in res.agreement)
            assert finality_reached(cfg, attested), rnd
            ranked = [row["kind"] for row in ranking(res, kinds)]
            assert ranked == ["honest"] * 16 + ["noise"] * 8, (rnd, ranked)

    run(cfg, items, tmp_path, scenario)
