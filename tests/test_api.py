"""The node's HTTP API against a real store holding real signed messages and certificates."""

from __future__ import annotations

import base64
import dataclasses
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dlnet.node import counters
from dlnet.node.api import NodeView, build_app, open_listener, phase, serve_api
from dlnet.node.ingest import Ingest
from dlnet.node.report import certificate_summary
from dlnet.node.store import Store
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.consensus import compute_result, verify_certificate
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.result import RoundResult, result_digest
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Certificate, Kind, decode, encode, sign_attestation, sign_vote

GENESIS = 1_800_000_000
ROUND = 3  # finalized with a valid certificate
NOT_FINALIZED = 2
LATENCY = 7.5  # ROUND was finalized this long after its reveal deadline
FORGED = 1  # recorded as finalized, but its certificate lacks 2/3 of the stake


@dataclasses.dataclass
class StubHost:
    peer_id: str = "12D3KooWStub"
    addrs: list[str] = dataclasses.field(
        default_factory=lambda: ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWStub"]
    )
    counters: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"published": 5, "delivered": 7, "rejected.bad_signature": 1}
    )

    def connected_peers(self) -> list[str]:
        return ["12D3KooWPeerA", "12D3KooWPeerB"]


@dataclasses.dataclass
class Node:
    cfg: NetworkConfig
    store: Store
    view: NodeView
    result: RoundResult
    cert_bytes: bytes
    validators: list[SigningKey]


def _certificate(
    cfg: NetworkConfig, rnd: int, result: RoundResult, signers: list[SigningKey]
) -> bytes:
    digest = result_digest(result)
    votes = sorted(
        (k.public_key, sign_vote(k, cfg.network_id, rnd, digest).signature) for k in signers
    )
    return encode(Certificate(cfg.network_id, rnd, result, tuple(votes)))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    validators = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    encoders = sorted(SigningKey.from_seed(bytes([50 + i]) * 32).public_key for i in range(3))
    cfg = default_config(
        [ValidatorEntry(k.public_key, 100) for k in validators], GENESIS, dataset_sha256=bytes(32)
    )
    now = round_times(cfg, ROUND).start + 5.0  # round 3, commit phase
    store = Store.open(tmp_path / "node.sqlite")
    ingest = Ingest(cfg, store, lambda: now)
    grid = np.array([[60000, 30000, 5]] * cfg.shards_per_round, dtype="<u2")
    flags = np.array([[0, 0, 1]] * cfg.shards_per_round, dtype=np.uint8)
    atts = [
        sign_attestation(
            k, cfg.network_id, ROUND, tuple(encoders), grid.tobytes(), flags.tobytes(), bytes(32)
        )
        for k in validators
    ]
    for att in atts:
        ingest.admit(encode(att), Kind.ATTESTATION)
    ingest.admit(b"\x93garbage", None)  # counted as rejected by reason
    rng = np.random.default_rng(0)
    fulls = {
        (s, e): rng.standard_normal(cfg.dim).astype(np.float32)
        for s in range(cfg.shards_per_round)
        for e in encoders
    }
    result = compute_result(cfg, ROUND, atts, fulls, texts=(bytes(32),) * cfg.shards_per_round)
    data = _certificate(cfg, ROUND, result, validators)
    store.put_certificate(ROUND, data)
    store.put_round_outcome(ROUND, True, result_digest(result))
    times = round_times(cfg, ROUND)
    store.put_finalized_at(ROUND, times.reveal_deadline + LATENCY, times)
    store.put_round_outcome(NOT_FINALIZED, False, None)
    forged = dataclasses.replace(result, round=FORGED)
    store.put_certificate(FORGED, _certificate(cfg, FORGED, forged, validators[:2]))
    store.put_round_outcome(FORGED, True, result_digest(forged))
    view = NodeView(
        cfg,
        store,
        StubHost(),
        frozenset({"validator", "encoder"}),
        validators[0].public_key,
        clock=lambda: now,
    )
    yield Node(cfg, store, view, result, data, validators)
    store.close()


def run(node: Node, check: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """Run ``check`` with a client of the app, on the trio thread like the node does."""

    async def main() -> None:
        transport = httpx.ASGITransport(app=build_app(node.view))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            await check(client)

    trio.run(main)


def get(node: Node, *paths: str) -> list[httpx.Response]:
    out: list[httpx.Response] = []

    async def check(client: httpx.AsyncClient) -> None:
        for p in paths:
            out.append(await client.get(p))

    run(node, check)
    return out


def error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for needle in needles:
        assert needle in body["error"], body
    assert "Traceback" not in response.text


def test_status(node: Node) -> None:
    (r,) = get(node, "/v1/status")
    assert r.status_code == 200
    st = r.json()
    assert st["peer_id"] == "12D3KooWStub"
    assert st["addrs"] == ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWStub"]
    assert st["roles"] == ["encoder", "validator"]
    assert st["public_key"] == node.validators[0].public_key.hex()
    assert st["stake"] == 100
    assert st["network"]["id"] == node.cfg.network_id.hex()
    assert (st["round"], st["phase"]) == (ROUND, "commit")
    assert st["phase_ends"] == round_times(node.cfg, ROUND).commit_deadline
    assert st["rounds"] == {"finalized": 2, "not_finalized": 1, "last_finalized": ROUND}
    assert st["peers"]["connected"] == 2
    assert st["counters"]["messages"]["accepted:attestation"] == 3
    assert st["counters"]["transport"]["published"] == 5


def test_phases_follow_the_round_clock(node: Node) -> None:
    cfg = node.cfg
    t = round_times(cfg, 4)
    assert phase(cfg, GENESIS - 1) == (-1, "genesis", GENESIS)
    assert phase(cfg, t.start) == (4, "commit", t.commit_deadline)
    assert phase(cfg, t.commit_deadline) == (4, "reveal", t.reveal_deadline)
    assert phase(cfg, t.repair_deadline + 0.5) == (4, "attest", t.attest_deadline)


def test_rounds_list_and_its_parameters(node: Node) -> None:
    default, ranged = get(node, "/v1/rounds", "/v1/rounds?from=2&to=3")
    listed = default.json()
    assert (listed["from"], listed["to"]) == (0, ROUND)
    assert [(r["round"], r["finalized"]) for r in listed["rounds"]] == [
        (FORGED, True),
        (NOT_FINALIZED, False),
        (ROUND, True),
    ]
    assert listed["rounds"][1]["result_digest"] is None
    assert listed["rounds"][2]["result_digest"] == result_digest(node.result).hex()
    # Only ROUND has a recorded finalization time; FORGED was recorded final without one.
    assert [r["latency"] for r in listed["rounds"]] == [None, None, LATENCY]
    assert not any(r["caught_up"] for r in listed["rounds"])
    assert [r["round"] for r in ranged.json()["rounds"]] == [2, 3]


def test_round_result_comes_from_the_verified_certificate(node: Node) -> None:
    r, latest = get(node, f"/v1/rounds/{ROUND}", "/v1/rounds/latest")
    assert r.status_code == 200
    res = r.json()
    assert res == latest.json()
    cert = decode(node.cert_bytes, node.cfg, Kind.CERTIFICATE)
    assert isinstance(cert, Certificate)
    assert res == certificate_summary(node.cfg, cert)
    assert res["result_digest"] == result_digest(node.result).hex()
    assert len(res["signers"]) == 3 and res["signed_stake"] == res["total_stake"] == 300
    n = len(res["encoders"])
    assert res["shards"] == node.cfg.shards_per_round
    assert [len(row) for row in res["consensus"]] == [n] * res["shards"]
    assert res["outliers"][0] == [False, False, True]
    ranking = res["ranking"]
    assert [row["encoder"] for row in ranking] == res["encoders"]  # 60000 > 30000 > 5
    assert ranking[0]["score"] == pytest.approx(60000 / 65535)
    assert ranking[2]["outlier"] is True
    assert set(res["agreement"]) == {k.public_key.hex() for k in node.validators}


@pytest.mark.parametrize(
    ("path", "status", "needles"),
    [
        ("/v1/rounds?from=two", 400, ("from", "'two'")),
        ("/v1/rounds?from=3&to=2", 400, ("after",)),
        ("/v1/rounds?from=0&to=5000", 400, ("at most 1000",)),
        ("/v1/rounds?since=1", 400, ("since",)),
        (f"/v1/rounds/{NOT_FINALIZED}", 404, ("not finalized",)),
        ("/v1/rounds/7", 404, ("round 7", "no valid certificate")),
        (f"/v1/rounds/{FORGED}", 404, (f"round {FORGED}", "no valid certificate")),
        ("/v1/rounds/three", 400, ("round must be a whole number",)),
        ("/v1/rounds/-1", 400, ("'-1'",)),
        (f"/v1/rounds/{2**64}", 400, ("round",)),
        ("/v1/rounds/9/certificate", 404, ("round 9",)),
        (f"/v1/rounds/{ROUND}/shards/4/embedding", 400, ("shard must be below 4",)),
        ("/v1/rounds/latest/shards/x/embedding", 400, ("shard",)),
        (f"/v1/rounds/{NOT_FINALIZED}/shards/0/embedding", 404, ("not finalized",)),
        ("/v2/status", 404, ("no such endpoint",)),
    ],
)
def test_bad_requests_get_a_json_error(
    node: Node, path: str, status: int, needles: tuple[str, ...]
) -> None:
    error(*get(node, path), status, *needles)


def test_raw_certificate_verifies_against_the_config(node: Node) -> None:
    (r,) = get(node, f"/v1/rounds/{ROUND}/certificate")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == node.cert_bytes
    cert = decode(r.content, node.cfg, Kind.CERTIFICATE)
    assert isinstance(cert, Certificate)
    verify_certificate(node.cfg, cert)


def test_weighted_embedding(node: Node) -> None:
    (ok,) = get(node, f"/v1/rounds/{ROUND}/shards/1/embedding")
    assert ok.status_code == 200
    body = ok.json()
    want = np.frombuffer(node.result.weighted[1], dtype="<f4")
    assert body["dim"] == node.cfg.dim == len(body["embedding"])
    assert np.array_equal(np.array(body["embedding"], dtype=np.float32), want)
    assert base64.b64decode(body["float32_le_base64"]) == node.result.weighted[1]
    assert body["result_digest"] == result_digest(node.result).hex()


def test_metrics_parse_and_carry_the_counters(node: Node) -> None:
    *_, r = get(node, "/v1/rounds/x", "/nowhere", "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("dlnet_messages_accepted_total", kind="attestation") == 3
    assert any(k[0] == "dlnet_messages_rejected_total" for k in samples)
    assert value("dlnet_transport_rejected_total", reason="bad_signature") == 1
    assert value("dlnet_transport_published_total") == 5
    assert value("dlnet_transport_px_dials_total") == 0  # declared, never counted
    families = {f.name for f in text_string_to_metric_families(r.text)}
    assert set(counters.DECLARED) <= families  # every declared counter is exported
    assert value("dlnet_rounds", outcome="finalized") == 2
    assert value("dlnet_rounds", outcome="not_finalized") == 1
    assert value("dlnet_last_finalized_round") == ROUND
    assert value("dlnet_current_round") == ROUND
    assert value("dlnet_peers_connected") == 2
    used, free = node.store.size()
    assert value("dlnet_store_bytes", state="used") == used > 0
    assert value("dlnet_store_bytes", state="free") == free
    assert value("dlnet_api_requests_total", route="round", status="400") == 1
    assert value("dlnet_api_requests_total", route="unmatched", status="404") == 1
    info = [k for k in samples if k[0] == "dlnet_node_info"]
    assert ("roles", "encoder,validator") in info[0][1]
    assert any(k[0] == "process_resident_memory_bytes" for k in samples)


def test_other_methods_and_failures_answer_json(node: Node) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        error(await client.post("/v1/status"), 405)
        node.store.close()  # every query now fails: the API answers 500, the node goes on
        error(await client.get("/v1/status"), 500, "internal error")

    run(node, check)


def test_served_over_tcp_and_stopped_by_cancellation(node: Node) -> None:
    threads = threading.active_count()

    async def main() -> str:
        sock, url = open_listener("127.0.0.1", 0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_api, build_app(node.view), sock)
            async with httpx.AsyncClient(base_url=url) as client:
                r = await client.get("/v1/status")
            assert r.json()["peer_id"] == "12D3KooWStub"
            assert threading.active_count() == threads  # hypercorn's trio worker: no threads
            nursery.cancel_scope.cancel()
        return url

    url = trio.run(main)
    port = int(url.rpartition(":")[2])
    assert url == f"http://127.0.0.1:{port}"
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    assert threading.active_count() == threads
