"""The node's local HTTP API: read-only JSON under ``/v1/`` and Prometheus ``/metrics``.

A starlette app served by hypercorn's trio worker inside the node's own nursery (see
docs/API.md). Every handler runs on the trio thread that owns the node's single SQLite
connection, so each one is ``async`` (starlette would run a plain function in a worker
thread) and makes a few short indexed queries. Round results are served only from a
certificate that verifies against the network config, never from a validator's own view.
Bad input gets a JSON error (400 or 404) and is counted in ``dlnet_api_requests_total``;
a handler that fails gets a JSON 500 and a log line, and the node goes on.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dlnet.node import counters
from dlnet.node.context import WALL
from dlnet.node.ingest import Outcome
from dlnet.node.report import (
    certificate_summary,
    outcome_rows,
    validator_agreement,
    verified_certificate,
)
from dlnet.node.store import MAX_ROUND, Store
from dlnet.node.submissions import SUBMIT_MARGIN, lookup
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.result import result_digest
from dlnet.protocol.rounds import round_at, round_times
from dlnet.protocol.submissions import SUBMIT_AHEAD, schedule_time, target_round
from dlnet.protocol.wire import (
    Certificate,
    Kind,
    Reject,
    Submission,
    decode,
    encode,
    message_id,
    sign_submission,
)

log = logging.getLogger("dlnet.api")

API_VERSION = 1
# Longest span of rounds one /v1/rounds request lists (and the default span, ending now).
MAX_ROUNDS_LISTED = 1000
DEFAULT_ROUNDS_LISTED = 100
_WHOLE = re.compile(r"[0-9]{1,19}")


class PeerSource(Protocol):
    """What the API reads from the libp2p host (`dlnet.node.host.Host` is one)."""

    @property
    def peer_id(self) -> str: ...

    @property
    def addrs(self) -> list[str]:
        """Listen addresses, each ending in /p2p/<peer id>."""
        ...

    @property
    def counters(self) -> Mapping[str, int]: ...

    def connected_peers(self) -> list[str]: ...


@dataclass(frozen=True)
class NodeView:
    """Everything the API shows, read live on every request."""

    cfg: NetworkConfig
    store: Store
    host: PeerSource
    roles: frozenset[str]
    public_key: bytes | None
    clock: Callable[[], float] = WALL.now
    submit: Callable[[bytes], Awaitable[Outcome]] | None = None
    """Admits and gossips a signed Submission (runtime: node.submissions.submitter)."""


class ApiError(Exception):
    """A request the API answers with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


# --- path and query parameters ----------------------------------------------------------------


def _whole(text: str, what: str) -> int:
    if not _WHOLE.fullmatch(text) or int(text) > MAX_ROUND:
        raise ApiError(400, f"{what} must be a whole number from 0 to {MAX_ROUND}, got {text!r}")
    return int(text)


def _round(view: NodeView, text: str) -> int:
    """A round path parameter: a whole number, or ``latest`` (the last finalized round)."""
    if text == "latest":
        last = view.store.outcome_summary().last_finalized
        if last is None:
            raise ApiError(404, "no round is finalized yet")
        return last
    return _whole(text, "round")


def _certificate(view: NodeView, request: Request) -> Certificate:
    """The verified certificate of the request's ``{round}``, or a 404 saying why not."""
    rnd = _round(view, request.path_params["round"])
    cert = verified_certificate(view.store, view.cfg, rnd)
    if cert is not None:
        return cert
    held = view.store.round_outcomes(rnd, rnd)
    if held and not held[0][1]:
        raise ApiError(404, f"round {rnd} was not finalized: no 2/3 of the stake signed a result")
    raise ApiError(404, f"round {rnd}: this node holds no valid certificate for it")


# --- what the endpoints show ------------------------------------------------------------------


def phase(cfg: NetworkConfig, now: float) -> tuple[int, str, float]:
    """(current round, its phase, when that phase ends); round -1 and phase ``genesis``
    before round 0. Rounds overlap: the previous round may still be attesting or
    finalizing while this one commits."""
    rnd = round_at(cfg, now)
    if rnd < 0:
        return rnd, "genesis", float(cfg.genesis_time)
    t = round_times(cfg, rnd)
    for name, end in (
        ("commit", t.commit_deadline),
        ("reveal", t.reveal_deadline),
        ("repair", t.repair_deadline),
        ("attest", t.attest_deadline),
        ("finality", t.finality_deadline),
    ):
        if now < end:
            return rnd, name, end
    return rnd, "idle", round_times(cfg, rnd + 1).start


def status(view: NodeView) -> dict[str, Any]:
    cfg = view.cfg
    now = view.clock()
    rnd, name, ends = phase(cfg, now)
    summary = view.store.outcome_summary()
    peers = view.host.connected_peers()
    key = view.public_key
    return {
        "api_version": API_VERSION,
        "peer_id": view.host.peer_id,
        "addrs": view.host.addrs,
        "roles": sorted(view.roles),
        "public_key": key.hex() if key else None,
        "stake": cfg.stake_of(key) if key else 0,
        "network": {
            "id": cfg.network_id.hex(),
            "name": cfg.name,
            "genesis_time": cfg.genesis_time,
            "round_seconds": cfg.timing.round_seconds,
            "validators": len(cfg.validators),
            "total_stake": cfg.total_stake,
        },
        "time": now,
        "round": rnd,
        "phase": name,
        "phase_ends": ends,
        "rounds": {
            "finalized": summary.finalized,
            "not_finalized": summary.not_finalized,
            "last_finalized": summary.last_finalized,
        },
        "peers": {"connected": len(peers), "ids": peers},
        # Per validator: agreement with the latest certified result and the `disagreeing` flag.
        "validators": validator_agreement(view.store, cfg),
        "counters": {
            "messages": view.store.counters(),
            "transport": dict(view.host.counters),
        },
    }


HEALTH_LAG_ROUNDS = 4
"""A validator is unhealthy when its last finalized round is more than this many rounds behind
the current one (rounds overlap by ``round_window``; a few more cover one slow round)."""


def health(view: NodeView) -> tuple[int, dict[str, Any]]:
    """``GET /v1/health``: 200 when the node has peers and, if it is a validator, finalized a
    recent round (or none is due yet); 503 with the reasons otherwise."""
    rnd, name, _ = phase(view.cfg, view.clock())
    peers = len(view.host.connected_peers())
    last = view.store.outcome_summary().last_finalized
    problems = []
    if peers == 0:
        problems.append("no peers connected")
    behind = rnd - (-1 if last is None else last)
    if "validator" in view.roles and rnd >= 0 and behind > HEALTH_LAG_ROUNDS:
        problems.append(
            f"last finalized round is {'none' if last is None else last}, "
            f"{behind} rounds behind round {rnd}"
        )
    body = {
        "status": "unhealthy" if problems else "ok",
        "problems": problems,
        "peers": peers,
        "round": rnd,
        "phase": name,
        "last_finalized": last,
    }
    return (503 if problems else 200), body


def _health_response(view: NodeView) -> JSONResponse:
    code, body = health(view)
    return JSONResponse(body, status_code=code)


def rounds(view: NodeView, query: Mapping[str, str]) -> dict[str, Any]:
    """Outcomes of the rounds in [from, to]; by default the last 100 up to the current one."""
    unknown = set(query) - {"from", "to"}
    if unknown:
        raise ApiError(400, f"unknown query parameter {sorted(unknown)[0]!r}; use from and to")
    now_round = max(0, round_at(view.cfg, view.clock()))
    hi = _whole(query["to"], "to") if "to" in query else now_round
    lo = (
        _whole(query["from"], "from") if "from" in query else max(0, hi - DEFAULT_ROUNDS_LISTED + 1)
    )
    if lo > hi:
        raise ApiError(400, f"from={lo} is after to={hi}")
    if hi - lo >= MAX_ROUNDS_LISTED:
        raise ApiError(400, f"at most {MAX_ROUNDS_LISTED} rounds per request, asked {hi - lo + 1}")
    return {"from": lo, "to": hi, "rounds": outcome_rows(view.store, lo, hi)}


def weighted_embedding(view: NodeView, request: Request) -> dict[str, Any]:
    shard = _whole(request.path_params["shard"], "shard")
    if shard >= view.cfg.shards_per_round:
        raise ApiError(
            400, f"shard must be below {view.cfg.shards_per_round} (shards per round), got {shard}"
        )
    cert = _certificate(view, request)
    raw = cert.result.weighted[shard]
    return {
        "round": cert.round,
        "shard": shard,
        "result_digest": result_digest(cert.result).hex(),
        "dim": len(raw) // 4,
        "embedding": np.frombuffer(raw, dtype="<f4").tolist(),
        "float32_le_base64": base64.b64encode(raw).decode("ascii"),
    }


# --- submissions ------------------------------------------------------------------------------

MAX_SUBMIT_BODY = 256 * 1024


async def submit_texts(view: NodeView, request: Request) -> tuple[int, dict[str, Any]]:
    """``POST /v1/submissions``: a JSON body ``{"message": "<hex of a signed Submission>"}``, or
    ``{"texts": [...]}`` (optionally ``"round"``) that the node signs with a fresh key."""
    if view.submit is None:
        raise ApiError(503, "this node does not take submissions")
    body = await request.body()
    if len(body) > MAX_SUBMIT_BODY:
        raise ApiError(413, f"body over {MAX_SUBMIT_BODY} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        raise ApiError(400, 'body must be JSON: {"texts": [...]} or {"message": hex}') from None
    if not isinstance(doc, dict) or not ({"texts", "message"} & set(doc)):
        raise ApiError(400, 'body must be a JSON object with "texts" or "message"')
    cfg = view.cfg
    if "message" in doc:
        try:
            data = bytes.fromhex(str(doc["message"]))
        except ValueError:
            raise ApiError(400, "message must be hex") from None
    else:
        texts = doc["texts"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "texts must be a list of strings")
        rnd = doc.get("round")
        if rnd is None:
            rnd = target_round(cfg, view.clock(), SUBMIT_MARGIN)
        if type(rnd) is not int or not 0 <= rnd <= MAX_ROUND:
            raise ApiError(400, f"round must be a whole number from 0 to {MAX_ROUND}")
        msg = sign_submission(SigningKey.generate(), cfg.network_id, rnd, tuple(texts))
        data = encode(msg)
    try:
        sub = decode(data, cfg, Kind.SUBMISSION)
    except Reject as exc:
        raise ApiError(400, f"submission rejected: {exc}") from None
    assert isinstance(sub, Submission)
    outcome = await view.submit(data)
    if outcome is Outcome.REJECTED:
        raise ApiError(409, "submission rejected: over_quota (one submission per key and round)")
    if outcome is Outcome.IGNORED:
        now_round = max(0, round_at(cfg, view.clock()))
        raise ApiError(
            400,
            f"round {sub.round} is outside the rounds taking submissions now "
            f"({now_round} to {now_round + SUBMIT_AHEAD})",
        )
    return (200 if outcome is Outcome.DUPLICATE else 202), {
        "id": message_id(data).hex(),
        "round": sub.round,
        "texts": len(sub.texts),
        "schedule_at": schedule_time(cfg, sub.round),
        "state": "duplicate" if outcome is Outcome.DUPLICATE else "pending",
    }


def submission(view: NodeView, request: Request) -> dict[str, Any]:
    text = request.path_params["id"]
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ApiError(400, f"a submission id is 64 lowercase hex digits, got {text!r}")
    out = lookup(view.cfg, view.store, bytes.fromhex(text), view.clock())
    if out is None:
        raise ApiError(404, f"this node holds no submission {text}")
    return out


# --- metrics ----------------------------------------------------------------------------------


class NodeCollector(Collector):
    """Prometheus metrics read, at each scrape, from what the node already keeps: every
    counter declared in node/counters.py (the store's persistent ones, the in-memory ones of
    the host's registry), the round outcomes, the round clock and the connected peers."""

    def __init__(self, view: NodeView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        view = self.view
        info = InfoMetricFamily("dlnet_node", "This node's identity and roles.")
        info.add_metric(
            [],
            {
                "peer_id": view.host.peer_id,
                "network_id": view.cfg.network_id.hex(),
                "roles": ",".join(sorted(view.roles)) or "relay",
                "public_key": view.public_key.hex() if view.public_key else "",
            },
        )
        yield info
        # Every counter declared in node/counters.py, one family each, reasons as labels.
        for name, rows in counters.samples(view.host.counters, view.store.counters()):
            kind = GaugeMetricFamily if name.peak else CounterMetricFamily
            family = kind(name.metric, name.help, labels=[name.label] if name.label else None)
            for label, n in sorted(rows, key=lambda row: row[0] or ""):
                family.add_metric([] if label is None else [label], n)
            yield family
        summary = view.store.outcome_summary()
        settled = GaugeMetricFamily(
            "dlnet_rounds", "Rounds this node recorded an outcome for.", labels=["outcome"]
        )
        settled.add_metric(["finalized"], summary.finalized)
        settled.add_metric(["not_finalized"], summary.not_finalized)
        yield settled
        used, free = view.store.size()
        size = GaugeMetricFamily(
            "dlnet_store_bytes",
            "The node's SQLite database: bytes in use, and free pages it reuses before growing "
            "(--keep-rounds bounds it).",
            labels=["state"],
        )
        size.add_metric(["used"], used)
        size.add_metric(["free"], free)
        yield size
        last = GaugeMetricFamily("dlnet_last_finalized_round", "The last finalized round held.")
        if summary.last_finalized is not None:
            last.add_metric([], summary.last_finalized)
        yield last
        yield GaugeMetricFamily(
            "dlnet_current_round",
            "The round by the clock (-1 before genesis).",
            value=round_at(view.cfg, view.clock()),
        )
        agreement = GaugeMetricFamily(
            "dlnet_validator_agreement",
            "Each validator's agreement (0..1) with the latest certified result held.",
            labels=["validator"],
        )
        flagged = GaugeMetricFamily(
            "dlnet_validator_disagreeing",
            "1 for a validator whose attestations kept disagreeing with the last certified "
            "results (docs/PROTOCOL.md §4), else 0.",
            labels=["validator"],
        )
        for v, row in validator_agreement(view.store, view.cfg).items():
            if row["agreement"] is not None:
                agreement.add_metric([v], row["agreement"])
            flagged.add_metric([v], int(row["disagreeing"]))
        yield agreement
        yield flagged
        yield GaugeMetricFamily(
            "dlnet_peers_connected",
            "libp2p peers connected.",
            value=len(view.host.connected_peers()),
        )


def _registry(view: NodeView) -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(NodeCollector(view))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    requests = Counter(
        "dlnet_api_requests",
        "HTTP API requests by route and status code.",
        ["route", "status"],
        registry=registry,
    )
    return registry, requests


# --- the app ----------------------------------------------------------------------------------


def build_app(view: NodeView) -> Starlette:
    from dlnet.node import dashboard  # imports this module

    registry, requests = _registry(view)

    def route(path: str, name: str, handler: Callable[[Request], Response]) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                response = handler(request)
            except ApiError as exc:
                response = _error(exc.status, exc.message)
            except Exception:
                log.exception("API %s %s failed", request.method, request.url.path)
                response = _error(500, "internal error; the node's log has the details")
            requests.labels(name, str(response.status_code)).inc()
            return response

        return Route(path, endpoint, methods=["GET"], name=name)

    async def post_submission(request: Request) -> Response:
        try:
            code, body = await submit_texts(view, request)
            response: Response = JSONResponse(body, status_code=code)
        except ApiError as exc:
            response = _error(exc.status, exc.message)
        except Exception:
            log.exception("API POST /v1/submissions failed")
            response = _error(500, "internal error; the node's log has the details")
        requests.labels("submit", str(response.status_code)).inc()
        return response

    def cert_bytes(request: Request) -> Response:
        # Decoding is strict and canonical, so this is the byte string the node stored.
        return Response(encode(_certificate(view, request)), media_type="application/octet-stream")

    async def unmatched(request: Request, exc: Exception) -> Response:
        """No route for the path (404) or the method (405)."""
        assert isinstance(exc, HTTPException)
        requests.labels("unmatched", str(exc.status_code)).inc()
        if exc.status_code == 404:
            return _error(404, f"no such endpoint: {request.url.path} (see docs/API.md)")
        return _error(exc.status_code, exc.detail)

    return Starlette(
        routes=[
            route("/v1/status", "status", lambda _r: JSONResponse(status(view))),
            route("/v1/health", "health", lambda _r: _health_response(view)),
            route(
                "/v1/rounds",
                "rounds",
                lambda r: JSONResponse(rounds(view, dict(r.query_params))),
            ),
            route(
                "/v1/rounds/{round}",
                "round",
                lambda r: JSONResponse(certificate_summary(view.cfg, _certificate(view, r))),
            ),
            route("/v1/rounds/{round}/certificate", "certificate", cert_bytes),
            Route("/v1/submissions", post_submission, methods=["POST"], name="submit"),
            route(
                "/v1/submissions/{id}",
                "submission",
                lambda r: JSONResponse(submission(view, r)),
            ),
            route(
                "/v1/rounds/{round}/shards/{shard}/embedding",
                "embedding",
                lambda r: JSONResponse(weighted_embedding(view, r)),
            ),
            route(
                "/metrics",
                "metrics",
                lambda _r: Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST),
            ),
            # --- live dashboard (node/dashboard.py) ---
            route("/dashboard", "dashboard_page", lambda _r: HTMLResponse(dashboard.page())),
            route(
                "/v1/dashboard",
                "dashboard",
                lambda r: JSONResponse(dashboard.dashboard(view, dict(r.query_params))),
            ),
            # --- end live dashboard ---
        ],
        exception_handlers={HTTPException: unmatched},
    )


# --- serving ----------------------------------------------------------------------------------


def open_listener(host: str, port: int) -> tuple[socket.socket, str]:
    """Bind and listen on (host, port) now, so that a bad address or a busy port stops the node
    at start with one line (raises OSError); port 0 picks a free port. Returns the socket and
    the URL it serves."""
    family, _, _, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(addr[:2], family=family)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    return sock, f"http://{shown}:{bound_port}"


async def serve_api(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on the listening ``sock`` until cancelled (connections that arrive
    before this starts wait in the listen backlog).

    Cancellation (the node's nursery on SIGINT/SIGTERM) closes the listener and every
    connection; hypercorn's trio worker starts no thread."""
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn takes the socket over
    config.errorlog = log
    config.accesslog = None
    await serve(cast("ASGIFramework", app), config, mode="asgi")
