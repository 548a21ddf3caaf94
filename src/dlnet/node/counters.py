"""Every counter a node keeps, declared once: its name, help text, label and where it lives.

A counter is counted with `Counters.add(NAME, label)`; a name not declared here, a label
given to an unlabelled counter or missing from a labelled one raises `UndeclaredCounter`
(a programming error, caught by tests/test_counters.py). Reasons, kinds and events are
Prometheus labels of one declared counter, never part of its name.

Two stores, one registry:

* **persistent** counters (``Name.persistent``) live in the store's SQLite ``counters``
  table, as ``<key>:<label>`` (``rejected:bad_signature``, ``accepted:embedding``): they
  survive a restart and are what ``dlnet status``, ``/v1/status`` ``counters.messages`` and
  the testnet report read;
* the others live in memory, as ``<key>`` or ``<key>.<label>`` (``published``,
  ``rejected.bad_signature``): the host's ``counters`` mapping, ``transport.json`` and
  ``/v1/status`` ``counters.transport``.

``/metrics`` (node/api.py) exports every declared counter as ``<metric>_total``, and each
peak (the largest value seen, `Counters.peak`) as the gauge ``<metric>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol


class UndeclaredCounter(ValueError):
    """A counter counted that is not declared here, or with the wrong label (a bug)."""


@dataclass(frozen=True)
class Name:
    key: str
    """How the counter is stored and shown (``px.dials``; ``rejected`` + ``:``/``.`` label)."""
    metric: str
    """The Prometheus family (``_total`` is appended on export)."""
    help: str
    label: str | None = None
    """The Prometheus label name (``reason``, ``kind``, ``event``); None: unlabelled."""
    persistent: bool = False
    """Kept in the store's SQLite (survives a restart) rather than in memory."""
    total: bool = False
    """A labelled in-memory counter also shown as its bare ``key`` (the sum of its labels)."""
    peak: bool = False
    """Not a count but the largest value seen (`Counters.peak`), exported as a gauge."""


DECLARED: dict[str, Name] = {}
"""Every declared counter by its metric name."""


def _declare(
    key: str,
    metric: str,
    help: str,
    label: str | None = None,
    *,
    persistent: bool = False,
    total: bool = False,
    peak: bool = False,
) -> Name:
    name = Name(key, metric, help, label, persistent, total, peak)
    if metric in DECLARED:
        raise UndeclaredCounter(f"counter metric {metric} declared twice")
    DECLARED[metric] = name
    return name


# --- persistent: messages and role events (the store's SQLite, `<key>:<label>`) -------------

ACCEPTED = _declare(
    "accepted", "dlnet_messages_accepted", "Messages stored, by kind.", "kind", persistent=True
)
REJECTED = _declare(
    "rejected",
    "dlnet_messages_rejected",
    "Messages and requests rejected, by reason (the reject reasons of docs/PROTOCOL.md §5, "
    "and sync_*/push_*/malformed_bundle/certificate/wrong_network/over_quota/unrequested).",
    "reason",
    persistent=True,
)
IGNORED = _declare(
    "ignored",
    "dlnet_messages_ignored",
    "Valid messages not stored: duplicate, old_round, future_round, late_commit, early_probe_key, "
    "equivocation_known.",
    "reason",
    persistent=True,
)
EVIDENCE = _declare(
    "evidence",
    "dlnet_evidence",
    "Misbehaviour evidence kept: equivocation_<kind>, doppelganger.",
    "reason",
    persistent=True,
)
REFUSED = _declare(
    "refused",
    "dlnet_signing_refused",
    "Signatures this node refused to make: halted, conflicting_signature.",
    "reason",
    persistent=True,
)
SYNC = _declare(
    "sync",
    "dlnet_sync_events",
    "Pull repair (sync) events: duplicate, peer_timeout, request_failed, deadline_passed.",
    "event",
    persistent=True,
)
PUSH = _declare(
    "push",
    "dlnet_push_events",
    "Reveal push events: received, duplicate, forwarded (items), peer_timeout, request_failed, "
    "bad_ack, partly_held.",
    "event",
    persistent=True,
)
ENCODER = _declare(
    "encoder",
    "dlnet_encoder_events",
    "Encoder role events: model_error, missed_commit_deadline, reveal_push_retried, "
    "reveal_push_unacked.",
    "event",
    persistent=True,
)
VALIDATOR = _declare(
    "validator",
    "dlnet_validator_events",
    "Validator role events: missed deadlines, unusable or missing attestations, "
    "no_result_<reason>, no_precommit_set, precommit_other_set, unregistered.",
    "event",
    persistent=True,
)
CELLS_CUT = _declare(
    "cut",
    "dlnet_cells_cut",
    "Cells (shard x encoder) of this validator's attestations that scored 0, by why: missing, "
    "malformed, non_finite, zero_norm, collapse, unchecked, consensus, lof, too_exact, text "
    "(docs/PROTOCOL.md §5).",
    "reason",
    persistent=True,
)

PROOF = _declare(
    "proof",
    "dlnet_proof_events",
    "Registration proof events: evaluated (one scrypt a node ran; a cached proof costs none).",
    "event",
    persistent=True,
)
PRUNED = _declare(
    "pruned",
    "dlnet_messages_pruned",
    "Stored messages of rounds older than --keep-rounds dropped (node/retention.py).",
    persistent=True,
)

# --- in memory: signature verifies ------------------------------------------------------------

SIGNATURE_VERIFIES = _declare(
    "signature_verifies",
    "dlnet_signature_verifies",
    "dlnet Ed25519 signature verifies run by this process, by message kind (one per "
    "delivered message; a duplicate costs none).",
    "kind",
)

# --- in memory: the libp2p host (transport.json, `<key>` or `<key>.<label>`) ----------------


def _transport(key: str, help: str, label: str | None = None, *, total: bool = False) -> Name:
    return _declare(key, "dlnet_transport_" + key.replace(".", "_"), help, label, total=total)


PUBLISHED = _transport("published", "Gossip messages published by this node.")
DELIVERED = _transport("delivered", "Gossip messages delivered to this node's handlers.")
GOSSIP_ACCEPTED = _transport("accepted", "Gossip messages the topic validator accepted.")
GOSSIP_REJECTED = _transport(
    "rejected",
    "Gossip messages the topic validator rejected (and peers refused: wrong_network), by "
    "reason; the bare `rejected` counter of transport.json is their sum.",
    "reason",
    total=True,
)
GOSSIP_IGNORED = _transport(
    "ignored",
    "Gossip messages the topic validator ignored, by reason.",
    "reason",
    total=True,
)
DROPPED = _transport(
    "dropped",
    "Gossip messages dropped by py-libp2p (spam limit, full outbound queue): must stay 0.",
    "reason",
    total=True,
)
PENALTY = _transport("penalty", "Penalties charged to peers, by reason.", "reason")
HANDLER_ERRORS = _transport("handler_errors", "Gossip handlers that raised.")
BANNED = _transport("banned", "Peers banned.")
REFUSED_BANNED = _transport("refused_banned", "Connections of banned peers closed.")
REFUSED_FOREIGN = _transport(
    "refused_foreign", "Connections of peers of another network closed during their back-off."
)
EVICTED = _transport("evicted", "Peers disconnected to stay under max_peers.")
PEERS_STALLED = _transport("peers.stalled", "Peers that let a request time out.")
PEERS_WEDGED_SEVERED = _transport("peers.wedged_severed", "Wedged peer connections closed.")
PUBLISH_NO_PEERS = _transport("publish.no_peers", "Publishes into a topic with no peer.")
PUBLISH_BACKPRESSURE_TIMEOUT = _transport(
    "publish.backpressure_timeout", "Publishes that stopped waiting for a stuck peer's queue."
)
STATUS_FAILED = _transport("status.failed", "Network-id status exchanges that failed.")
REQUESTS_SENT = _transport("requests.sent", "Requests sent.")
REQUESTS_SERVED = _transport("requests.served", "Requests answered.")
REQUESTS_TIMEOUT = _transport("requests.timeout", "Requests sent that timed out.")
REQUESTS_FAILED = _transport("requests.failed", "Requests sent that failed.")
REQUESTS_ERROR_FRAMES = _transport("requests.error_frames", "Error frames received.")
REQUESTS_ANSWERED_ERROR = _transport("requests.answered_error", "Requests answered with an error.")
REQUESTS_BAD_INBOUND = _transport("requests.bad_inbound", "Malformed inbound requests.")
REQUESTS_RATE_LIMITED = _transport("requests.rate_limited", "Inbound requests over the rate.")
REQUESTS_REFUSED_BANNED = _transport("requests.refused_banned", "Requests of banned peers.")
REQUESTS_SKIPPED_WEDGED = _transport(
    "requests.skipped_wedged", "Requests not sent to a wedged peer."
)
PX_DIALS = _transport("px.dials", "Peer dials that connected.")
PX_DIAL_FAILURES = _transport("px.dial_failures", "Peer dials that failed.")
PX_EXCHANGES = _transport("px.exchanges", "Peer exchanges answered.")
PX_TIMEOUTS = _transport("px.timeouts", "Peer exchanges that timed out.")
PX_FAILED = _transport("px.failed", "Peer exchanges that failed (peer disconnected).")
PX_THIN_DIALS = _transport("px.thin_dials", "Dials for a topic with too few carriers.")
PX_OUTLET_DIALS = _transport("px.outlet_dials", "Seed dials for a topic with no carrier.")
PX_MUTE_SEVERED = _transport(
    "px.mute_severed", "Seed connections carrying none of the node's topics, closed to redial."
)
PX_STALE_GOSSIP_SEVERED = _transport(
    "px.stale_gossip_severed",
    "Connections whose peer's gossip stream stayed on a closed connection, closed to redial.",
)
LOOP_STALLS = _transport("loop.stalls", "Event-loop wake-ups more than LOOP_STALL s late.")
LOOP_STALLED_MS = _transport("loop.stalled_ms", "Milliseconds of event-loop lateness, summed.")
LOOP_MAX_STALL_MS = _declare(
    "loop.max_stall_ms",
    "dlnet_transport_loop_max_stall_ms",
    "The longest event-loop lateness seen, in milliseconds.",
    peak=True,
)
PX_RESEEDS = _transport("px.reseeds", "Seed peers made dialable again (no peer left).")

_ALWAYS_SHOWN = (PUBLISHED, DELIVERED, DROPPED)
"""In-memory counters shown at 0 before they are first counted (as transport.json did)."""

_LABEL = re.compile(r"[^\s:]+")


def _check(name: Name, label: str | None) -> None:
    if DECLARED.get(name.metric) is not name:
        raise UndeclaredCounter(f"counter {name.key!r} is not declared in node/counters.py")
    if (label is None) != (name.label is None):
        want = f"a {name.label} label" if name.label else "no label"
        raise UndeclaredCounter(f"counter {name.key!r} takes {want}, got {label!r}")
    if label is not None and not _LABEL.fullmatch(label):
        raise UndeclaredCounter(f"counter {name.key!r}: bad label value {label!r}")


def stored_key(name: Name, label: str | None = None) -> str:
    """The key a counter is kept under: ``<key>:<label>`` persistent, else ``<key>[.<label>]``."""
    _check(name, label)
    if label is None:
        return name.key
    return f"{name.key}{':' if name.persistent else '.'}{label}"


class PersistentCounters(Protocol):
    """Where persistent counters are kept (`dlnet.node.store.Store`)."""

    def bump_counter(self, name: str, n: int = 1) -> None: ...

    def counters(self) -> dict[str, int]: ...


class Counters:
    """A node's counters. In-memory ones are kept here (`values`, live); persistent ones are
    written through to ``store``. One instance per node process, shared by host and ingest."""

    def __init__(self, store: PersistentCounters | None = None) -> None:
        self.store = store
        self.values: dict[str, int] = {n.key: 0 for n in _ALWAYS_SHOWN}

    def add(self, name: Name, label: str | None = None, n: int = 1) -> None:
        key = stored_key(name, label)
        if name.persistent:
            if self.store is None:
                raise UndeclaredCounter(f"counter {name.key!r} is persistent: no store given")
            self.store.bump_counter(key, n)
            return
        if name.peak:
            raise UndeclaredCounter(f"{name.key!r} is a peak: record it with Counters.peak")
        self.values[key] = self.values.get(key, 0) + n
        if name.total:
            self.values[name.key] = self.values.get(name.key, 0) + n

    def peak(self, name: Name, value: int) -> None:
        """Keep ``value`` in the in-memory peak ``name`` if it is the largest seen."""
        key = stored_key(name)
        if not name.peak:
            raise UndeclaredCounter(f"{name.key!r} is a counter: count it with Counters.add")
        self.values[key] = max(self.values.get(key, 0), value)

    def get(self, name: Name, label: str | None = None) -> int:
        key = stored_key(name, label)
        source = self.store.counters() if name.persistent and self.store else self.values
        return source.get(key, 0)


def samples(
    memory: Mapping[str, int], persistent: Mapping[str, int]
) -> Iterator[tuple[Name, list[tuple[str | None, int]]]]:
    """Every declared counter with its (label, value) samples, read from the in-memory
    ``memory`` (`Counters.values`, a host's ``counters``) and the ``persistent`` store
    counters (`Store.counters`). An unlabelled counter always has one sample (0 if never
    counted); keys that name no declared counter are left out."""
    found: dict[str, list[tuple[str | None, int]]] = {m: [] for m in DECLARED}
    plain = {n.key: n for n in DECLARED.values() if not n.persistent and n.label is None}
    labelled = {n.key: n for n in DECLARED.values() if not n.persistent and n.label}
    stored = {n.key: n for n in DECLARED.values() if n.persistent}
    for key, value in memory.items():
        if key in plain:
            found[plain[key].metric].append((None, value))
            continue
        head, dot, label = key.partition(".")
        if dot and head in labelled:
            found[labelled[head].metric].append((label, value))
    for key, value in persistent.items():
        head, colon, label = key.partition(":")
        if colon and head in stored:
            found[stored[head].metric].append((label, value))
    for metric, rows in found.items():
        name = DECLARED[metric]
        yield name, rows if rows or name.label else [(None, 0)]
