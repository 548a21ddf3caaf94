"""The live dashboard: one HTML page (package data, no network at run time) at ``/dashboard``
and the JSON it polls, ``/v1/dashboard``, computed from verified certificates and the node's
counters. Mounted by `dlnet.node.api.build_app` whenever the API is on."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from dlnet.node.api import ApiError, NodeView, _whole, status
from dlnet.node.report import certificate_summary, finality_latency, verified_certificate
from dlnet.protocol.rounds import round_at

# Rounds one /v1/dashboard answer covers by default, and at most.
DEFAULT_DASHBOARD_ROUNDS = 20
MAX_DASHBOARD_ROUNDS = 200


def page() -> str:
    """The dashboard page, read from the package data."""
    return files("dlnet.node").joinpath("dashboard.html").read_text(encoding="utf-8")


def dashboard(view: NodeView, query: Mapping[str, str]) -> dict[str, Any]:
    """Everything the page shows: the node's status (peers, counters), and for each of the last
    ``rounds`` rounds its outcome and finality latency (seconds, None if unknown); for each
    round with a verified certificate its ranking, validators' agreement and signed stake;
    each encoder's score history across those rounds."""
    unknown = set(query) - {"rounds"}
    if unknown:
        raise ApiError(400, f"unknown query parameter {sorted(unknown)[0]!r}; use rounds")
    span = _whole(query["rounds"], "rounds") if "rounds" in query else DEFAULT_DASHBOARD_ROUNDS
    if not 1 <= span <= MAX_DASHBOARD_ROUNDS:
        raise ApiError(400, f"rounds must be from 1 to {MAX_DASHBOARD_ROUNDS}, got {span}")
    cfg = view.cfg
    hi = max(0, round_at(cfg, view.clock()))
    lo = max(0, hi - span + 1)
    held = {r: fin for r, fin, _d in view.store.round_outcomes(lo, hi)}
    rows: list[dict[str, Any]] = []
    history: dict[str, list[list[float]]] = {}
    for rnd in range(lo, hi + 1):
        row: dict[str, Any] = {
            "round": rnd,
            "state": "pending" if rnd not in held else "finalized" if held[rnd] else "failed",
            "latency": finality_latency(view.store, rnd) if held.get(rnd) else None,
        }
        cert = verified_certificate(view.store, cfg, rnd) if held.get(rnd) else None
        if cert is not None:
            summary = certificate_summary(cfg, cert)
            for key in ("result_digest", "ranking", "agreement", "signed_stake", "total_stake"):
                row[key] = summary[key]
            row["signers"] = len(summary["signers"])
            for entry in summary["ranking"]:
                history.setdefault(entry["encoder"], []).append([rnd, entry["score"]])
        elif held.get(rnd):
            row["state"] = "unverified"
        rows.append(row)
    return {"status": status(view), "from": lo, "to": hi, "rounds": rows, "history": history}
