"""Data in, embeddings out, with real processes on 127.0.0.1, on the smallest network that
certifies embeddings: one validator (which is also the bootstrap) and 4 honest encoders.
`dlnet submit` sends a file of texts to the validator's API, `dlnet embeddings` waits for
their round to be final and verifies the certificate offline; each consensus embedding is the
honest model's embedding of its text (cosine >= 0.99).

The default run submits to the README's testnet instead (tests/test_testnet_e2e.py), with the
same helpers (`submit_and_wait`, `check_answer` in tests/netutil.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from netutil import Nodes, check_answer, dlnet, submit_and_wait, wait_committed

from dlnet.protocol.config import parse_config

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(600)]

ROUND_SECONDS = 40
GENESIS_IN = 60  # 5 processes load torch (4 of them MiniLM) on 2 cores before round 0
ENCODERS = 4  # a shard needs 3 checked voices for an embedding, and 4 leave one to spare


@pytest.mark.heavy
def test_small_network_one_validator(tmp_path: Path, nodes: Nodes) -> None:
    names = ["v0"] + [f"e{i}" for i in range(ENCODERS)]
    for name in names:
        dlnet("keygen", "--out", f"{name}.key", cwd=tmp_path)
    dlnet(
        *("init", "--validator", "@v0.key:100", "--out", "network.toml"),
        *("--genesis-in", str(GENESIS_IN), "--round-seconds", str(ROUND_SECONDS)),
        cwd=tmp_path,
    )
    config = tmp_path / "network.toml"
    cfg = parse_config(config.read_text())
    info = nodes.start("v0", *("--key", "v0.key", "--role", "validator", "--api", "127.0.0.1:0"))
    for i in range(ENCODERS):
        nodes.start(
            f"e{i}",
            *("--key", f"e{i}.key", "--role", "encoder", "--bootstrap", info["addrs"][0]),
            *("--model", "dlnet.node.models.kinds:honest", "--model-option", f"seed={i}"),
        )
    # Submit once every encoder has committed in a round: a round whose shards are embedded by
    # fewer than min_encoders_for_lof (3) checked encoders certifies no embedding (zeros).
    try:
        wait_committed([tmp_path / f"e{i}.log" for i in range(ENCODERS)], 300)
        answer = submit_and_wait(tmp_path, info["api"], config, cfg)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{nodes.logs()}") from None
    nodes.stop()
    check_answer(tmp_path, config, cfg, answer)
