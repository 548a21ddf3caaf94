"""Data in, embeddings out, with real processes on 127.0.0.1: a bootstrap, 3 validators and 4
honest encoders; `dlnet submit` sends a file of texts to a validator's API, `dlnet embeddings`
waits for their round to be final and verifies the certificate offline; each consensus
embedding is the honest model's embedding of its text (cosine >= 0.99).

8 node processes: run it under the machine-wide lock (HELPERS.md):
``flock /work/testnet.lock python -m pytest tests/test_submissions_e2e.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from netutil import Nodes, dlnet, wait_json

from dlnet.node.models import load_model
from dlnet.protocol.config import NetworkConfig, parse_config
from dlnet.protocol.rounds import round_times
from dlnet.protocol.submissions import verify_answer

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(600)]

ROUND_SECONDS = 40
GENESIS_IN = 75  # 8 processes load torch (4 of them MiniLM) on 2 cores before round 0
ENCODERS = 4
TEXTS = [
    "A lighthouse keeper watches the ships pass through the storm at night.",
    "Fresh bread from the bakery smells of butter and warm crust.",
]


def test_submit_texts_and_get_certified_consensus_embeddings(tmp_path: Path, nodes: Nodes) -> None:
    """The full network (8 processes): under the machine-wide lock."""
    run_network(tmp_path, nodes, validators=3, encoders=ENCODERS, bootstrap=True)


@pytest.mark.heavy
def test_small_network_one_validator(tmp_path: Path, nodes: Nodes) -> None:
    """The same with 5 processes (a validator that is the bootstrap, 4 encoders: a shard needs
    3 checked voices for an embedding, and 4 leave one to spare)."""
    run_network(tmp_path, nodes, validators=1, encoders=4, bootstrap=False)


def run_network(
    tmp_path: Path, nodes: Nodes, *, validators: int, encoders: int, bootstrap: bool
) -> None:
    names = [f"v{i}" for i in range(validators)] + [f"e{i}" for i in range(encoders)]
    for name in names:
        dlnet("keygen", "--out", f"{name}.key", cwd=tmp_path)
    dlnet(
        "init",
        *(a for i in range(validators) for a in ("--validator", f"@v{i}.key:100")),
        *("--out", "network.toml", "--genesis-in", str(GENESIS_IN)),
        *("--round-seconds", str(ROUND_SECONDS)),
        cwd=tmp_path,
    )
    cfg = parse_config((tmp_path / "network.toml").read_text())
    boot = nodes.start("boot", "--api", "127.0.0.1:0")["addrs"][0] if bootstrap else None
    for i in range(validators):
        info = nodes.start(
            f"v{i}",
            *("--key", f"v{i}.key", "--role", "validator", "--api", "127.0.0.1:0"),
            *(("--bootstrap", boot) if boot else ()),
        )
        boot = boot or info["addrs"][0]
    assert boot is not None
    for i in range(encoders):
        nodes.start(
            f"e{i}",
            *("--key", f"e{i}.key", "--role", "encoder", "--bootstrap", boot),
            *("--model", "dlnet.node.models.kinds:honest", "--model-option", f"seed={i}"),
        )
    api = wait_json(tmp_path / "v0" / "node.json", 5)["api"]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))

    # Submit once every encoder has committed in a round: a round whose shards are embedded by
    # fewer than min_encoders_for_lof (3) checked encoders certifies no embedding (zeros).
    wait_committed(tmp_path, [f"e{i}" for i in range(encoders)], nodes)
    out = dlnet(
        *("submit", "--file", "texts.jsonl", "--api", api, "--config", "network.toml"),
        *("--out", "receipt.json"),
        cwd=tmp_path,
    )
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert len(receipt["submissions"]) == 1 and out.stdout.startswith(
        receipt["submissions"][0]["id"]
    )
    sid = receipt["submissions"][0]["id"]
    rnd = receipt["submissions"][0]["round"]
    assert (tmp_path / "dlnet-submitter.key").exists()

    wait = round_time_left(cfg, rnd)
    try:
        dlnet(
            *("embeddings", "--receipt", "receipt.json", "--config", "network.toml"),
            *("--wait", str(wait), "--out", "answer.json"),
            cwd=tmp_path,
            timeout=wait + 60,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{nodes.logs()}") from None
    nodes.stop()

    answer = json.loads((tmp_path / "answer.json").read_text())[0]
    assert answer["state"] == "final" and answer["verified"] and answer["id"] == sid
    # The saved answer verifies offline, from the genesis alone, and a tampered one does not.
    dlnet("embeddings", "--verify", "answer.json", "--config", "network.toml", cwd=tmp_path)
    proven = verify_answer(
        cfg,
        bytes.fromhex(answer["submission"]),
        bytes.fromhex(answer["certificate"]),
        answer["shards"],
    )
    assert [p.shard for p in proven] == [0, 1] and not any(p.empty for p in proven)
    tampered = dict(answer, embeddings=[dict(e) for e in answer["embeddings"]])
    tampered["embeddings"].reverse()
    (tmp_path / "tampered.json").write_text(json.dumps([tampered]))
    refused = dlnet(
        *("embeddings", "--verify", "tampered.json", "--config", "network.toml"),
        cwd=tmp_path,
        expect=1,
    )
    assert "does not verify" in refused.stderr

    # The consensus embeddings are the honest model's embeddings of the submitted texts.
    model = load_model(None, cfg, {})
    own = model.embed([" ".join(t.split()) for t in TEXTS])
    for row, emb in zip(own, answer["embeddings"], strict=True):
        got = np.array(emb["embedding"], dtype=np.float64)
        cos = float(row @ got / (np.linalg.norm(row) * np.linalg.norm(got)))
        assert cos >= 0.99, (emb["text"], cos)


def wait_committed(cwd: Path, names: list[str], nodes: Nodes, timeout: float = 300) -> None:
    """Until each encoder's log says it committed in some round."""
    end = time.time() + timeout
    while time.time() < end:
        logs = [(cwd / f"{n}.log").read_text(errors="replace") for n in names]
        if all("committed to" in log for log in logs):
            return
        time.sleep(2)
    raise AssertionError(f"not every encoder committed within {timeout} s\n{nodes.logs()}")


def round_time_left(cfg: NetworkConfig, rnd: int) -> int:
    """Seconds from now until round ``rnd``'s finality deadline, plus a margin."""
    return int(round_times(cfg, rnd).finality_deadline - time.time()) + 60
