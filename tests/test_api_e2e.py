"""What README's "Running nodes yourself" tells an operator to do, with real processes on
127.0.0.1, checked through each node's HTTP API: keygen, init, one node that is validator and
encoder at once, two encoder-only nodes; then status, rankings, the weighted embedding, the
raw certificate, /metrics and `dlnet results` once a round with all three encoders is final.
"""

from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from netutil import Nodes, dlnet, wait_json
from prometheus_client.parser import text_string_to_metric_families

from dlnet.protocol.config import parse_config
from dlnet.protocol.consensus import verify_certificate
from dlnet.protocol.result import result_digest
from dlnet.protocol.wire import Certificate, Kind, decode

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(420)]

ROUND_SECONDS = 30
GENESIS_IN = 40  # three processes load torch and their models on 2 cores before round 0
# Seconds from when every node is up (each writes its node.json after its registration proof
# and model load: 30-60 s on a loaded machine) until a round with all three encoders is final:
# the next round starts within one, and it is final ~0.6 rounds after its start.
FINAL_WITHIN = 3 * ROUND_SECONDS + 20.0


def wait_final_round(api: str, encoders: set[str], deadline: float) -> dict[str, Any]:
    """The first round whose certificate ranks all our encoders, polled over HTTP."""
    seen: set[int] = set()
    with httpx.Client(base_url=api, timeout=5) as client:
        while time.time() < deadline:
            for row in client.get("/v1/rounds").json()["rounds"]:
                if row["finalized"] and row["round"] not in seen:
                    seen.add(row["round"])
                    res: dict[str, Any] = client.get(f"/v1/rounds/{row['round']}").json()
                    if {r["encoder"] for r in res["ranking"]} == encoders:
                        return res
            time.sleep(1.0)
    raise AssertionError(f"no round ranking {len(encoders)} encoders was final; saw {seen}")


def test_operator_runs_nodes_and_reads_them_over_http(tmp_path: Path, nodes: Nodes) -> None:
    pubkeys = {k: dlnet("keygen", "--out", f"{k}.key", cwd=tmp_path).stdout.strip() for k in "vbc"}
    dlnet(
        "init",
        "--validator",
        "@v.key:100",
        "--out",
        "network.toml",
        "--genesis-in",
        str(GENESIS_IN),
        "--round-seconds",
        str(ROUND_SECONDS),
        cwd=tmp_path,
    )
    cfg = parse_config((tmp_path / "network.toml").read_text())
    api = "127.0.0.1:0"
    a = nodes.start(
        "a", *("--key", "v.key", "--role", "validator", "--role", "encoder", "--api", api)
    )
    boot = a["addrs"][0]
    for name, model in (
        ("b", ["--model", "dlnet.node.models.kinds:honest", "--model-option", "seed=1"]),
        ("c", ["--model", "dlnet.node.models.kinds:noise", "--model-option", "seed=2"]),
    ):
        nodes.start(
            name,
            *("--key", f"{name}.key", "--role", "encoder"),
            *("--bootstrap", boot, "--api", api, *model),
        )
    urls = {n: wait_json(tmp_path / n / "node.json", 5)["api"] for n in "abc"}
    assert all(u.startswith("http://127.0.0.1:") for u in urls.values()), urls
    try:
        result = wait_final_round(urls["a"], set(pubkeys.values()), time.time() + FINAL_WITHIN)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{nodes.logs()}") from None
    rnd = result["round"]

    with httpx.Client(base_url=urls["a"], timeout=5) as client:
        st = client.get("/v1/status").json()
        assert st["roles"] == ["encoder", "validator"]
        assert st["public_key"] == pubkeys["v"] and st["stake"] == 100
        assert st["network"]["id"] == cfg.network_id.hex()
        assert st["peer_id"] == a["peer_id"]
        assert st["peers"]["connected"] >= 2
        assert st["rounds"]["last_finalized"] >= rnd
        assert st["phase"] in ("commit", "reveal", "repair", "attest", "finality", "idle")
        assert st["counters"]["messages"]["accepted:commit"] >= 3

        assert result["signers"] == [pubkeys["v"]]
        assert result["signed_stake"] == result["total_stake"] == 100
        assert [r["score"] for r in result["ranking"]] == sorted(
            (r["score"] for r in result["ranking"]), reverse=True
        )
        noise = next(r for r in result["ranking"] if r["encoder"] == pubkeys["c"])
        assert noise["outlier"] or noise["score"] < result["ranking"][0]["score"], result

        emb = client.get(f"/v1/rounds/{rnd}/shards/0/embedding").json()
        assert len(emb["embedding"]) == cfg.dim == 1024
        assert all(math.isfinite(x) for x in emb["embedding"])
        assert len(base64.b64decode(emb["float32_le_base64"])) == 4 * cfg.dim

        raw = client.get(f"/v1/rounds/{rnd}/certificate")
        assert raw.headers["content-type"] == "application/octet-stream"
        cert = decode(raw.content, cfg, Kind.CERTIFICATE)
        assert isinstance(cert, Certificate)
        verify_certificate(cfg, cert)
        assert result_digest(cert.result).hex() == result["result_digest"] == emb["result_digest"]

        metrics = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for s in family.samples
        }
        assert metrics[("dlnet_rounds", (("outcome", "finalized"),))] >= 1
        assert metrics[("dlnet_messages_accepted_total", (("kind", "commit"),))] >= 3
        assert metrics[("dlnet_transport_published_total", ())] > 0
        # The other encoders' reveals reached this validator: each cost one dlnet verify
        # (tests/test_counters.py counts them exactly, in-process).
        assert metrics[("dlnet_signature_verifies_total", (("kind", "embedding"),))] > 0
        assert metrics[("dlnet_peers_connected", ())] >= 2

        error = client.get("/v1/rounds/999999")
        assert error.status_code == 404 and "error" in error.json()

    # An encoder-only node answers too; it holds no certificates (only validators assemble them).
    enc = httpx.get(f"{urls['b']}/v1/status", timeout=5).json()
    assert enc["roles"] == ["encoder"] and enc["public_key"] == pubkeys["b"]

    cli = json.loads(
        dlnet(
            *("results", "--data-dir", "a", "--config", "network.toml"),
            *("--round", str(rnd), "--json"),
            cwd=tmp_path,
        ).stdout
    )
    assert cli == result
    assert f"api       {urls['a']}" in dlnet("status", "--data-dir", "a", cwd=tmp_path).stdout

    codes = nodes.stop()
    assert codes == {"a": 0, "b": 0, "c": 0}, nodes.logs()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{urls['a']}/v1/status", timeout=2)
