"""``GET /v1/health``: 200 with peers and recent finality, 503 with the reasons otherwise."""

from __future__ import annotations

import dataclasses

from test_api import GENESIS, ROUND, Node, get, node  # noqa: F401  (the fixture)

from dlnet.node.api import HEALTH_LAG_ROUNDS
from dlnet.protocol.rounds import round_times


class NoPeers:
    peer_id = "12D3KooWAlone"
    addrs: list[str] = []  # noqa: RUF012
    counters: dict[str, int] = {}  # noqa: RUF012

    def connected_peers(self) -> list[str]:
        return []


def test_healthy_node(node: Node) -> None:  # noqa: F811
    (r,) = get(node, "/v1/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["problems"] == []
    assert (body["peers"], body["round"], body["last_finalized"]) == (2, ROUND, ROUND)


def test_no_peers_is_unhealthy(node: Node) -> None:  # noqa: F811
    node.view = dataclasses.replace(node.view, host=NoPeers())
    (r,) = get(node, "/v1/health")
    assert r.status_code == 503
    assert r.json()["problems"] == ["no peers connected"]


def test_a_validator_far_behind_is_unhealthy_a_relay_is_not(node: Node) -> None:  # noqa: F811
    late = round_times(node.cfg, ROUND + HEALTH_LAG_ROUNDS + 1).start + 1
    node.view = dataclasses.replace(node.view, clock=lambda: late)
    (r,) = get(node, "/v1/health")
    assert r.status_code == 503
    (problem,) = r.json()["problems"]
    assert f"last finalized round is {ROUND}" in problem
    node.view = dataclasses.replace(node.view, roles=frozenset({"encoder"}))
    assert get(node, "/v1/health")[0].status_code == 200
    node.view = dataclasses.replace(node.view, clock=lambda: GENESIS - 60.0)
    assert get(node, "/v1/health")[0].json()["phase"] == "genesis"
