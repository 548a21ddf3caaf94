"""The node's embedded store: SQLite in WAL mode.

Every write is committed before the call returns, so whatever a node has counted survives
the process being killed at any moment (kill -9): WAL with ``synchronous=NORMAL`` keeps every
committed transaction across a process crash; only an operating-system crash or power loss
can lose the last transactions (use ``synchronous=FULL`` via ``Store.open(durable=True)`` on
a machine where that matters). One connection per node, used from the trio thread: every call
is a short indexed statement.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar, cast

from dlnet.protocol.round import Verified
from dlnet.protocol.rounds import RoundTimes
from dlnet.protocol.wire import (
    Attestation,
    Commit,
    Embedding,
    FinalityVote,
    Kind,
    Message,
    Probe,
    ProbeKey,
    Schedule,
    Submission,
)

M = TypeVar("M", bound=Message)
KIND_OF: dict[type[Any], Kind] = {
    Commit: Kind.COMMIT,
    Embedding: Kind.EMBEDDING,
    Attestation: Kind.ATTESTATION,
    FinalityVote: Kind.VOTE,
    Submission: Kind.SUBMISSION,
    Schedule: Kind.SCHEDULE,
    Probe: Kind.PROBE,
    ProbeKey: Kind.PROBE_KEY,
}
"""The stored kind of each gossiped message class."""
Decoder = Callable[[bytes, Kind], "Verified[Message] | None"]
"""Decodes stored bytes of a kind again (only for rounds held from before this process, or
dropped from the in-memory cache): the admission's verify, counted the same way."""

PRUNED_KINDS = tuple(k for k in KIND_OF.values() if k not in (Kind.SUBMISSION, Kind.SCHEDULE))
"""The kinds `Store.prune` drops from old rounds."""

SCHEMA_VERSION = 1
NO_SLOT = -1  # shard/slot of messages that have none (SQLite UNIQUE treats NULLs as distinct)
MAX_ROUND = 2**63 - 1  # SQLite's largest integer
FINALIZED_AT = "finalized_at"
"""The round_state key of when this node finalized a round (see `Store.put_finalized_at`)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    round INTEGER NOT NULL,
    signer BLOB NOT NULL,
    shard INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    commitment BLOB,
    data BLOB NOT NULL,
    seq INTEGER NOT NULL,
    UNIQUE (kind, round, signer, shard, slot)
);
CREATE INDEX IF NOT EXISTS messages_commitment ON messages (commitment);
CREATE INDEX IF NOT EXISTS messages_kind_round ON messages (kind, round, seq);
CREATE TABLE IF NOT EXISTS equivocations (
    round INTEGER NOT NULL,
    signer BLOB NOT NULL,
    shard INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    first BLOB NOT NULL,
    second BLOB NOT NULL,
    PRIMARY KEY (round, signer, shard, slot, second)
);
CREATE TABLE IF NOT EXISTS round_state (
    round INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (round, key)
);
CREATE TABLE IF NOT EXISTS certificates (round INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (
    round INTEGER PRIMARY KEY, finalized INTEGER NOT NULL, digest BLOB
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS signed (
    signer BLOB NOT NULL,
    kind INTEGER NOT NULL,
    round INTEGER NOT NULL,
    shard INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    id BLOB NOT NULL,
    PRIMARY KEY (signer, kind, round, shard, slot)
);
CREATE INDEX IF NOT EXISTS signed_id ON signed (id);
"""
NETWORK_KEY = "network_id"


class StoreError(Exception):
    """The store cannot be opened; the text says why and what to do."""


class PutStatus(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"  # the same bytes are held already
    CONFLICT = "conflict"  # other bytes are held for the same (kind, round, signer, shard, slot)


@dataclass(frozen=True)
class PutResult:
    status: PutStatus
    existing: bytes | None = None  # the bytes held first, on CONFLICT


@dataclass(frozen=True)
class OutcomeSummary:
    finalized: int
    not_finalized: int
    last_finalized: int | None


def _slot(x: int | None) -> int:
    return NO_SLOT if x is None else x


class Store:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0])
        # Verified messages by (kind, round), in the order stored: filled at admission
        # (`remember`), read by `held`. A (kind, round) with rows in SQLite that this process
        # did not admit (held before a restart, or dropped by `forget_before`) is "on disk"
        # until its first read decodes the rows once (`_decoder`).
        self._cache: dict[tuple[int, int], dict[bytes, Verified[Message]]] = {}
        self._on_disk: set[tuple[int, int]] = {
            (int(k), int(r)) for k, r in db.execute("SELECT DISTINCT kind, round FROM messages")
        }
        self._decoder: Decoder | None = None
        self._bumps: Counter[str] | None = None  # counter bumps of the batch under way

    @classmethod
    def open(cls, path: Path, *, durable: bool = False, synced: bool = True) -> Store:
        """The store at ``path`` (created if absent). ``durable``: ``synchronous=FULL`` (see
        the module doc). ``synced=False``, for a test's throwaway stores only: never fsync
        (``synchronous=OFF``); a killed process still keeps every committed transaction,
        an operating-system crash may corrupt the file."""
        sync = "FULL" if durable else "NORMAL" if synced else "OFF"
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Before the switch to WAL, so that the switch itself syncs (or not) alike.
            db.execute(f"PRAGMA synchronous={sync}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: not a usable dlnet store ({exc})") from exc
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"{path}: store schema {row[0]} is newer than this dlnet's "
                f"({SCHEMA_VERSION}) — upgrade dlnet or use another --data-dir"
            )
        return cls(db)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run the writes of the block in one transaction: committed together at its end,
        none of them if it raises. Every write outside a batch is its own transaction, and
        a commit per message cost a reveal push 4x a signature verify per item. Nested
        batches join the outer one."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        self._bumps = Counter()
        try:
            yield
            bumps, self._bumps = self._bumps, None
            self._add_counters(bumps)
        except BaseException:
            self._bumps = None
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def bind_network(self, network_id: bytes, where: Path) -> None:
        """Record the network this store belongs to at its first start; at every later start
        refuse another network's id (one line saying what to do)."""
        held = self.get_meta(NETWORK_KEY)
        if held is None:
            self.set_meta(NETWORK_KEY, network_id.hex())
        elif held != network_id.hex():
            raise StoreError(
                f"--data-dir {where}: holds network {held[:16]}, the config is network "
                f"{network_id.hex()[:16]} — use another --data-dir for this network"
            )

    # --- slashing protection ------------------------------------------------------------

    def record_signing(
        self,
        signer: bytes,
        kind: int,
        round: int,
        shard: int | None,
        slot: int | None,
        msg_id: bytes,
    ) -> bytes | None:
        """Remember that ``signer`` signed ``msg_id`` for this place, before it is published.
        Returns ``None`` when that is allowed (first signature here, or the same message
        again), else the id signed here earlier: the caller must not publish."""
        place = (signer, kind, round, _slot(shard), _slot(slot))
        row = self._db.execute(
            "SELECT id FROM signed WHERE signer=? AND kind=? AND round=? AND shard=? AND slot=?",
            place,
        ).fetchone()
        if row is not None:
            return None if bytes(row[0]) == msg_id else bytes(row[0])
        self._db.execute("INSERT INTO signed VALUES (?, ?, ?, ?, ?, ?)", (*place, msg_id))
        return None

    def signed_here(self, msg_id: bytes) -> bool:
        """Whether this store recorded signing the message ``msg_id``."""
        row = self._db.execute("SELECT 1 FROM signed WHERE id=?", (msg_id,)).fetchone()
        return row is not None

    # --- messages -----------------------------------------------------------------------

    def put_message(
        self,
        kind: int,
        msg_id: bytes,
        round: int,
        signer: bytes,
        shard: int | None,
        slot: int | None,
        commitment: bytes | None,
        data: bytes,
    ) -> PutResult:
        """Store a message unless its bytes or another message for its place are held. The
        same bytes sit in the same place (the place is read from them), so one lookup of the
        place tells a duplicate from a conflict."""
        held = self._db.execute(
            "SELECT data FROM messages"
            " WHERE kind=? AND round=? AND signer=? AND shard=? AND slot=?",
            (kind, round, signer, _slot(shard), _slot(slot)),
        ).fetchone()
        if held is not None:
            if bytes(held[0]) == data:
                return PutResult(PutStatus.DUPLICATE)
            return PutResult(PutStatus.CONFLICT, bytes(held[0]))
        self._seq += 1
        self._db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (msg_id, kind, round, signer, _slot(shard), _slot(slot), commitment, data, self._seq),
        )
        return PutResult(PutStatus.NEW)

    # --- verified messages (in memory, per round) ---------------------------------------

    def set_decoder(self, decoder: Decoder) -> None:
        """How `held` decodes stored rows it has not seen admitted (set by `Ingest`)."""
        self._decoder = decoder

    def remember(self, kind: Kind, round: int, verified: Verified[Message]) -> None:
        """Carry a message just stored as NEW (`put_message`) as its verified value."""
        self._cache.setdefault((int(kind), round), {})[verified.id] = verified

    def held(self, cls: type[M], round: int) -> list[Verified[M]]:
        """Every held message of ``cls``'s kind and round as its verified value, in the order
        stored; decoded again only when held from before this process (once per round)."""
        key = (int(KIND_OF[cls]), round)
        cached = self._cache.setdefault(key, {})
        if key in self._on_disk:
            self._on_disk.discard(key)
            if self._decoder is None:
                raise RuntimeError("Store.held: no decoder set (construct an Ingest first)")
            loaded: dict[bytes, Verified[Message]] = {}
            for mid, data in self._db.execute(
                "SELECT id, data FROM messages WHERE kind=? AND round=? ORDER BY seq", key
            ):
                v = cached.get(bytes(mid)) or self._decoder(bytes(data), KIND_OF[cls])
                if v is not None:
                    loaded[v.id] = v
            cached = self._cache[key] = loaded
        return [cast("Verified[M]", v) for v in cached.values() if isinstance(v.msg, cls)]

    def forget_before(self, round: int) -> None:
        """Drop the verified messages of rounds before ``round`` from memory (they stay in
        SQLite: a later `held` of such a round decodes them again)."""
        for key in [k for k in self._cache if k[1] < round]:
            if self._cache.pop(key):
                self._on_disk.add(key)

    def message_at(self, kind: int, round: int, signer: bytes) -> bytes | None:
        """The message of this kind, round and signer with no shard or slot, if held."""
        row = self._db.execute(
            "SELECT data FROM messages"
            " WHERE kind=? AND round=? AND signer=? AND shard=? AND slot=?",
            (kind, round, signer, _slot(None), _slot(None)),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def has(self, msg_id: bytes) -> bool:
        """Whether the message ``msg_id`` is held (its bytes are not read)."""
        row = self._db.execute("SELECT 1 FROM messages WHERE id=?", (msg_id,)).fetchone()
        return row is not None

    def get_by_id(self, msg_id: bytes) -> bytes | None:
        row = self._db.execute("SELECT data FROM messages WHERE id=?", (msg_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_by_commitment(self, commitment: bytes, rounds: range | None = None) -> bytes | None:
        """The embedding with this commitment, if held (and, given ``rounds``, of one of them)."""
        for rnd, data in self._db.execute(
            "SELECT round, data FROM messages WHERE commitment=? ORDER BY seq", (commitment,)
        ):
            if rounds is None or rnd in rounds:
                return bytes(data)
        return None

    def messages(self, kind: int, round: int) -> list[bytes]:
        """Every held message of a kind and round, in the order they were stored."""
        return [data for _, data in self.rows(kind, round)]

    def rows(self, kind: int, round: int) -> list[tuple[bytes, bytes]]:
        """(message id, bytes) of every held message of a kind and round, in store order."""
        rows = self._db.execute(
            "SELECT id, data FROM messages WHERE kind=? AND round=? ORDER BY seq", (kind, round)
        )
        return [(bytes(r[0]), bytes(r[1])) for r in rows]

    def ids(self, kind: int, round: int) -> list[bytes]:
        """The message ids of every held message of a kind and round, in store order."""
        rows = self._db.execute(
            "SELECT id FROM messages WHERE kind=? AND round=? ORDER BY seq", (kind, round)
        )
        return [bytes(r[0]) for r in rows]

    def put_equivocation(
        self,
        round: int,
        signer: bytes,
        shard: int | None,
        slot: int | None,
        first: bytes,
        second: bytes,
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO equivocations VALUES (?, ?, ?, ?, ?, ?)",
            (round, signer, _slot(shard), _slot(slot), first, second),
        )

    def has_evidence(self, round: int, signer: bytes, shard: int | None, slot: int | None) -> bool:
        """Whether equivocation evidence (two signed messages) is held for this place."""
        row = self._db.execute(
            "SELECT 1 FROM equivocations WHERE round=? AND signer=? AND shard=? AND slot=?",
            (round, signer, _slot(shard), _slot(slot)),
        ).fetchone()
        return row is not None

    def equivocators(self, round: int) -> set[bytes]:
        rows = self._db.execute("SELECT DISTINCT signer FROM equivocations WHERE round=?", (round,))
        return {bytes(r[0]) for r in rows}

    # --- rounds -------------------------------------------------------------------------

    def put_round_state(self, round: int, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO round_state VALUES (?, ?, ?)", (round, key, value))

    def get_round_state(self, round: int, key: str) -> bytes | None:
        row = self._db.execute(
            "SELECT value FROM round_state WHERE round=? AND key=?", (round, key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put_finalized_at(self, round: int, at: float, times: RoundTimes | None) -> None:
        """Record that this node finalized ``round`` at wall-clock ``at``: with the round's
        ``times`` when it assembled the certificate itself (finality latency = ``at`` minus the
        reveal deadline; slack = the finality deadline minus ``at``), or ``None`` when it adopted
        a peer's certificate by catch-up (no latency: ``at`` then says when it caught up, not
        when the network finalized). A catch-up record never replaces an earlier one."""
        record: dict[str, Any] = {"at": at, "via": "catch_up", "latency": None, "slack": None}
        if times is not None:
            record.update(
                via="own",
                latency=at - times.reveal_deadline,
                slack=times.finality_deadline - at,
            )
        elif self.get_round_state(round, FINALIZED_AT) is not None:
            return
        self.put_round_state(round, FINALIZED_AT, json.dumps(record, sort_keys=True).encode())

    def finalized_at(self, round: int) -> dict[str, Any] | None:
        """What `put_finalized_at` recorded for ``round`` (``at``, ``via``, ``latency``,
        ``slack``), or None if nothing (or nothing readable) was."""
        raw = self.get_round_state(round, FINALIZED_AT)
        try:
            record = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        for key in ("at", "latency", "slack"):
            value = record.get(key)
            number = (
                float(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else math.nan
            )
            record[key] = number if math.isfinite(number) else None
        record["via"] = record.get("via") if record.get("via") in ("own", "catch_up") else None
        return record

    def put_certificate(self, round: int, data: bytes) -> None:
        self._db.execute("INSERT OR IGNORE INTO certificates VALUES (?, ?)", (round, data))

    def certificates(self, lo: int, hi: int) -> list[tuple[int, bytes]]:
        rows = self._db.execute(
            "SELECT round, data FROM certificates WHERE round BETWEEN ? AND ? ORDER BY round",
            (lo, hi),
        )
        return [(int(r), bytes(d)) for r, d in rows]

    def certificate_rounds(self, lo: int, hi: int) -> list[int]:
        """The rounds lo..hi for which a certificate is stored, ascending (no bytes read)."""
        rows = self._db.execute(
            "SELECT round FROM certificates WHERE round BETWEEN ? AND ? ORDER BY round", (lo, hi)
        )
        return [int(r) for (r,) in rows]

    def put_round_outcome(self, round: int, finalized: bool, digest: bytes | None) -> None:
        """Record how a round ended; a finalized outcome is never overwritten."""
        self._db.execute(
            "INSERT INTO outcomes VALUES (?, ?, ?) ON CONFLICT (round) DO UPDATE SET "
            "finalized=excluded.finalized, digest=excluded.digest WHERE outcomes.finalized=0",
            (round, int(finalized), digest),
        )

    def round_outcomes(
        self, lo: int = 0, hi: int = MAX_ROUND
    ) -> list[tuple[int, bool, bytes | None]]:
        """How the rounds in [lo, hi] ended, by round."""
        rows = self._db.execute(
            "SELECT round, finalized, digest FROM outcomes WHERE round BETWEEN ? AND ?"
            " ORDER BY round",
            (lo, hi),
        )
        return [(int(r), bool(f), None if d is None else bytes(d)) for r, f, d in rows]

    def outcome_summary(self) -> OutcomeSummary:
        """Rounds recorded as finalized and as not finalized, and the last finalized one."""
        fin, notfin, last = self._db.execute(
            "SELECT COALESCE(SUM(finalized), 0), COALESCE(SUM(1 - finalized), 0),"
            " MAX(CASE WHEN finalized THEN round END) FROM outcomes"
        ).fetchone()
        return OutcomeSummary(int(fin), int(notfin), None if last is None else int(last))

    def prune(self, before_round: int) -> int:
        """Drop what rounds before ``before_round`` need no more, and return how many messages
        went: their messages but submissions and schedules (with the certificate, they are a
        submission's answer, `submissions.lookup`), equivocation evidence, slashing-protection
        records (no such round can be signed again) and round state but when the node
        finalized. Certificates, outcomes and counters are kept forever. SQLite reuses the
        freed pages, so the file stops growing rather than shrinks."""
        dropped = 0
        with self.batch():  # one transaction
            for kind in PRUNED_KINDS:  # (kind, round) leads an index: no scan of what stays
                cur = self._db.execute(
                    "DELETE FROM messages WHERE kind=? AND round<?", (int(kind), before_round)
                )
                dropped += max(cur.rowcount, 0)
            self._db.execute("DELETE FROM equivocations WHERE round<?", (before_round,))
            self._db.execute("DELETE FROM signed WHERE round<?", (before_round,))
            self._db.execute(
                "DELETE FROM round_state WHERE round<? AND key<>?", (before_round, FINALIZED_AT)
            )
        pruned = {int(k) for k in PRUNED_KINDS}
        for key in [k for k in self._cache if k[1] < before_round and k[0] in pruned]:
            del self._cache[key]
        self._on_disk = {k for k in self._on_disk if k[1] >= before_round or k[0] not in pruned}
        return dropped

    def size(self) -> tuple[int, int]:
        """The database's bytes in use and free (pages `prune` freed, reused before the file
        grows), WAL excluded."""
        page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page, free * page

    # --- counters -----------------------------------------------------------------------

    def bump_counter(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a counter; inside a `batch`, summed in memory and written once at its
        end (a counter row written per admitted message was a fifth of a reveal's SQLite)."""
        if self._bumps is not None:
            self._bumps[name] += n
        else:
            self._add_counters({name: n})

    def _add_counters(self, bumps: Mapping[str, int]) -> None:
        self._db.executemany(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value=value+?",
            [(name, n, n) for name, n in bumps.items()],
        )

    def counters(self) -> dict[str, int]:
        """Every counter, with what a `batch` under way has added so far."""
        got = {str(k): int(v) for k, v in self._db.execute("SELECT name, value FROM counters")}
        for name, n in (self._bumps or {}).items():
            got[name] = got.get(name, 0) + n
        return got
