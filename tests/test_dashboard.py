"""The dashboard's JSON (/v1/dashboard) and page (/dashboard), against the store of test_api."""

from __future__ import annotations

from typing import Any

import pytest
from test_api import FORGED, LATENCY, NOT_FINALIZED, ROUND, Node, error, get, node

from dlnet.node.report import ranking

__all__ = ["node"]  # the fixture, shared with test_api


def test_dashboard_rounds_come_from_verified_certificates(node: Node) -> None:
    (r,) = get(node, "/v1/dashboard")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    states = {row["round"]: row["state"] for row in body["rounds"]}
    assert states[ROUND] == "finalized"
    assert states[NOT_FINALIZED] == "failed"
    assert states[FORGED] == "unverified"  # recorded as final, certificate lacks 2/3
    assert states[0] == "pending"
    latency = {row["round"]: row["latency"] for row in body["rounds"]}
    assert latency == {0: None, FORGED: None, NOT_FINALIZED: None, ROUND: LATENCY}
    final = next(row for row in body["rounds"] if row["round"] == ROUND)
    assert final["ranking"] == ranking(node.result)
    assert final["signers"] == len(node.validators)
    assert set(final["agreement"]) == {k.public_key.hex() for k in node.validators}
    forged = next(row for row in body["rounds"] if row["round"] == FORGED)
    assert "ranking" not in forged
    history = body["history"]
    assert set(history) == {e.hex() for e in node.result.encoders}
    for entry in final["ranking"]:
        assert history[entry["encoder"]] == [[ROUND, entry["score"]]]
    st = body["status"]
    assert st["peers"]["connected"] == 2
    assert st["counters"]["transport"]["rejected.bad_signature"] == 1
    assert any(k.startswith("rejected") for k in st["counters"]["messages"])


def test_dashboard_span(node: Node) -> None:
    (r,) = get(node, "/v1/dashboard?rounds=1")
    body = r.json()
    assert [row["round"] for row in body["rounds"]] == [ROUND]
    assert body["from"] == body["to"] == ROUND


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/v1/dashboard?rounds=0", "rounds must be from 1"),
        ("/v1/dashboard?rounds=201", "rounds must be from 1"),
        ("/v1/dashboard?rounds=x", "rounds must be a whole number"),
        ("/v1/dashboard?since=3", "unknown query parameter 'since'"),
    ],
)
def test_dashboard_bad_requests(node: Node, path: str, needle: str) -> None:
    (r,) = get(node, path)
    error(r, 400, needle)


def test_dashboard_page_is_self_contained(node: Node) -> None:
    (r,) = get(node, "/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "/v1/dashboard" in r.text
    # Nothing fetched from the network at run time: no external script, style or font.
    assert "http://" not in r.text.replace('"http://www.w3.org/2000/svg"', "")
    assert "https://" not in r.text
    assert "<script src" not in r.text
    # the latency column and plot read the rounds' `latency` field
    assert 'id="latency"' in r.text and "r.latency" in r.text
