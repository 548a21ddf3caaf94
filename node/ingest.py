"""Admission of messages into a node: strict checks, round window, duplicates, storage.

Every message a node holds, whether it came by gossip, by a sync fetch or was made by the
node itself, passes through `Ingest.admit`. The gossip path splits it in two: `check` runs
inside the gossipsub topic validator (before anything is relayed) and `admit` runs in the
subscription's drain task. Nothing is counted as held before the store has committed it.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from dlnet.node import counters as C
from dlnet.node.counters import Counters
from dlnet.node.host import Verdict
from dlnet.node.store import KIND_OF, PutStatus, Store
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.registration import leading_zero_bits, work
from dlnet.protocol.round import Verified
from dlnet.protocol.rounds import accepted_rounds, round_at, round_times
from dlnet.protocol.submissions import SUBMIT_AHEAD
from dlnet.protocol.wire import (
    Attestation,
    Commit,
    Embedding,
    FinalityVote,
    Kind,
    Message,
    Reject,
    RejectReason,
    Schedule,
    Submission,
    decode,
    encode,
    message_id,
)

# Clock skew and propagation allowed for a commit arriving after its deadline.
COMMIT_GRACE = 1.0


class Proofs:
    """Registration proofs checked by this node: (key, nonce) -> its scrypt work, so that a
    key's proof costs one evaluation per node (about 0.07 s), not one per commit. Bounded:
    the least recently used entries go first."""

    LIMIT = 4096

    def __init__(self, cfg: NetworkConfig) -> None:
        self.cfg = cfg
        self._work: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._lock = threading.Lock()  # the validator reads it from its scoring thread

    def work(self, key: bytes, nonce: int) -> bytes:
        """The proof's work (computed once per key and nonce)."""
        entry = (key, nonce)
        with self._lock:
            got = self._work.get(entry)
            if got is not None:
                self._work.move_to_end(entry)
                return got
        got = work(self.cfg.network_id, key, nonce)
        with self._lock:
            self._work[entry] = got
            if len(self._work) > self.LIMIT:
                self._work.popitem(last=False)
        return got

    def valid(self, commit: Commit) -> bool:
        """Whether the commit's nonce registers its encoder at the config's difficulty
        (difficulty 0: every nonce, nothing computed)."""
        difficulty = self.cfg.registration.difficulty
        if difficulty <= 0:
            return True
        return leading_zero_bits(self.work(commit.encoder, commit.registration)) >= difficulty


def _kind(kind: Kind) -> str:
    """A message kind as a counter label: ``commit``, ``embedding``, ..."""
    return kind.name.lower()


class Outcome(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    EQUIVOCATION = "equivocation"
    IGNORED = "ignored"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Slot:
    """Where a message sits: one message per (kind, round, signer, shard, slot) is allowed."""

    kind: Kind
    round: int
    signer: bytes
    shard: int | None
    slot: int | None
    commitment: bytes | None


def slot_of(msg: Message, commitment: bytes | None = None) -> Slot:
    """Where ``msg`` sits; an Embedding's commitment is ``commitment`` when the caller has it
    (computed once at admission), else computed here."""
    if isinstance(msg, Commit):
        return Slot(Kind.COMMIT, msg.round, msg.encoder, None, None, None)
    if isinstance(msg, Embedding):
        h = msg.commitment() if commitment is None else commitment
        return Slot(Kind.EMBEDDING, msg.round, msg.encoder, msg.shard, msg.slot, h)
    if isinstance(msg, Attestation):
        return Slot(Kind.ATTESTATION, msg.round, msg.validator, None, None, None)
    if isinstance(msg, FinalityVote):
        # A prevote and a precommit sit in two slots: a re-vote is not equivocation.
        return Slot(Kind.VOTE, msg.round, msg.validator, None, msg.phase, None)
    if isinstance(msg, Submission):
        # One submission per key and round: a second, different one is over its quota.
        return Slot(Kind.SUBMISSION, msg.round, msg.submitter, None, None, None)
    if isinstance(msg, Schedule):
        return Slot(Kind.SCHEDULE, msg.round, msg.validator, None, None, None)
    raise TypeError(f"{type(msg).__name__} is not a gossiped message")


class Ingest:
    """Checks and stores messages; counts every reject and ignore by reason.

    Every message is decoded and its signature verified once per node: admission turns the
    bytes into a `Verified` value (message, bytes, id, commitment) that the store carries in
    memory for the round (`Store.held`), so no reader decodes or verifies it again. Each
    signature verify is counted (``signature_verifies.<kind>``, in memory; see ``verifies``).

    Every count goes to ``counters``, the node's registry (node/counters.py; by default one
    of its own writing persistent counters to ``store``)."""

    def __init__(
        self,
        cfg: NetworkConfig,
        store: Store,
        now: Callable[[], float],
        counters: Counters | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.now = now
        self.counters = Counters(store) if counters is None else counters
        # Verified messages between the topic validator and the drain task, by their bytes
        # (the same bytes object reaches both: no second hash of the message).
        self._checked: dict[bytes, Verified[Message]] = {}
        self.proofs = Proofs(cfg)
        store.set_decoder(self._reload)

    def count(self, name: C.Name, label: str) -> None:
        """Count ``name`` (declared in node/counters.py) with its reason/kind/event label."""
        self.counters.add(name, label)

    @property
    def verifies(self) -> Counter[Kind]:
        """dlnet Ed25519 signature verifies run by this process, by kind (in memory)."""
        return Counter(
            {k: n for k in Kind if (n := self.counters.get(C.SIGNATURE_VERIFIES, _kind(k)))}
        )

    def _verify_counted(self, kind: Kind) -> None:
        self.counters.add(C.SIGNATURE_VERIFIES, _kind(kind))

    def _verified(
        self, data: bytes, kind: Kind | None, mid: bytes | None = None
    ) -> Verified[Message] | None:
        """Strict decode and signature check, and for a Commit its registration proof (after
        the signature, so a forged commit costs no scrypt); the id and an Embedding's
        commitment are computed here, once."""
        try:
            msg = decode(data, self.cfg, kind)
        except Reject as exc:
            if exc.reason is RejectReason.BAD_SIGNATURE and kind is not None:
                self._verify_counted(kind)
            self.count(C.REJECTED, exc.reason.value)
            return None
        signed = KIND_OF.get(type(msg))  # a certificate carries no signature of its own
        if signed is not None:
            self._verify_counted(signed)
        if isinstance(msg, Commit) and not self.proofs.valid(msg):
            self.count(C.REJECTED, RejectReason.BAD_REGISTRATION.value)
            return None
        return Verified(
            msg,
            data,
            message_id(data) if mid is None else mid,
            msg.commitment() if isinstance(msg, Embedding) else None,
        )

    def _reload(self, data: bytes, kind: Kind) -> Verified[Message] | None:
        """Decode again bytes the store held from before this process (`Store.held`)."""
        return self._verified(data, kind)

    def _decode(self, data: bytes, kind: Kind | None) -> Message | None:
        v = self._verified(data, kind)
        return None if v is None else v.msg

    def _in_window(self, msg: Message) -> bool:
        if isinstance(msg, Submission):
            # A submission targets an upcoming round: from the current one up to SUBMIT_AHEAD.
            now_round = max(0, round_at(self.cfg, self.now()))
            window = range(now_round, now_round + SUBMIT_AHEAD + 1)
        else:
            window = accepted_rounds(self.cfg, self.now())
        if msg.round not in window:
            self.count(C.IGNORED, "old_round" if msg.round < window.start else "future_round")
            return False
        return self._in_time(msg)

    def _in_time(self, msg: Message) -> bool:
        """A commit first seen after its deadline (plus grace) never counts, however it came:
        made after reveals went public, it could list copies of them."""
        if isinstance(msg, Commit) and self.now() > (
            round_times(self.cfg, msg.round).commit_deadline + COMMIT_GRACE
        ):
            self.count(C.IGNORED, "late_commit")
            return False
        return True

    def check(self, kind: Kind, data: bytes) -> Verdict:
        """Topic-validator half: strict decode, signature, round window, duplicate."""
        if data in self._checked:
            self.count(C.IGNORED, "duplicate")
            return Verdict.IGNORE
        mid = message_id(data)
        if self.store.get_by_id(mid) is not None:
            self.count(C.IGNORED, "duplicate")
            return Verdict.IGNORE
        v = self._verified(data, kind, mid)
        if v is None:
            return Verdict.REJECT
        if not self._in_window(v.msg):
            return Verdict.IGNORE
        if isinstance(v.msg, Submission) and self._over_quota(v.msg):
            return Verdict.REJECT
        self._checked[data] = v
        return Verdict.ACCEPT

    def _over_quota(self, msg: Submission) -> bool:
        """A second, different submission of the same key for the same round: rejected (not
        relayed, not stored), counted ``rejected:over_quota``."""
        where = slot_of(msg)
        held = self.store.message_at(int(Kind.SUBMISSION), where.round, where.signer)
        if held is not None and held != encode(msg):
            self.count(C.REJECTED, "over_quota")
            return True
        return False

    def admit_checked(self, data: bytes) -> Outcome:
        """Drain-task half for a message that `check` accepted."""
        v = self._checked.pop(data, None)
        if v is None:
            return self.admit(data, None)
        return self._store(v)

    def admit(self, data: bytes, kind: Kind | None, *, window: bool = True) -> Outcome:
        """Full admission for bytes from sync fetches (window=False for catch-up of old rounds;
        a late commit is ignored all the same).

        Fetched bytes already held are counted as ``sync:duplicate``, apart from gossip's
        ``ignored:duplicate`` (which counts re-sent messages)."""
        return self.accept(data, kind, window=window)[0]

    def accept(
        self, data: bytes, kind: Kind | None, *, window: bool = True
    ) -> tuple[Outcome, Verified[Message] | None]:
        """As `admit`, also returning the verified value (None unless it decoded and
        verified)."""
        mid = message_id(data)
        if self.store.get_by_id(mid) is not None:  # held: not decoded nor verified again
            self.count(C.IGNORED if window else C.SYNC, "duplicate")
            return Outcome.DUPLICATE, None
        v = self._verified(data, kind, mid)
        if v is None:
            return Outcome.REJECTED, None
        if not (self._in_window(v.msg) if window else self._in_time(v.msg)):
            return Outcome.IGNORED, v
        return self._store(v, C.IGNORED if window else C.SYNC), v

    def admit_fetched(
        self, data: bytes, kind: Kind, requested: Callable[[Message], bool]
    ) -> Outcome:
        """Admission for one item of a sync answer: as ``admit(data, kind, window=False)``, and
        a valid message that is not what was asked for (``requested`` says no) is rejected
        and counted as ``rejected:unrequested``."""
        return self.admit_requested(data, kind, lambda v: requested(v.msg))

    def admit_requested(
        self, data: bytes, kind: Kind, requested: Callable[[Verified[Message]], bool]
    ) -> Outcome:
        """`admit_fetched` with ``requested`` judging the verified value (its commitment and
        id are at hand, computed once). Bytes already held are a duplicate, neither decoded
        nor verified again (a round fetch answers mostly with what the node holds)."""
        mid = message_id(data)
        if self.store.get_by_id(mid) is not None:
            self.count(C.SYNC, "duplicate")
            return Outcome.DUPLICATE
        v = self._verified(data, kind, mid)
        if v is None:
            return Outcome.REJECTED
        if not requested(v):
            self.count(C.REJECTED, "unrequested")
            return Outcome.REJECTED
        if not self._in_time(v.msg):
            return Outcome.IGNORED
        return self._store(v, C.SYNC)

    def admit_pushed(self, data: bytes) -> Outcome:
        """Admission for one item of a reveal push (node/reveals.py): an Embedding already
        held is acknowledged without being decoded or verified again (``push:duplicate``);
        anything else takes the full admission of `admit`, round window included."""
        if self.store.get_by_id(message_id(data)) is not None:
            self.count(C.PUSH, "duplicate")
            return Outcome.DUPLICATE
        return self.admit(data, Kind.EMBEDDING)

    def admit_own(self, msg: Message, data: bytes) -> None:
        """A message this node made: stored before it is published (the host skips a
        node's own topic validators and does not hand it its own messages). Not verified:
        this node signed it."""
        self._store(
            Verified(
                msg,
                data,
                message_id(data),
                msg.commitment() if isinstance(msg, Embedding) else None,
            )
        )

    def _store(self, v: Verified[Message], duplicates: C.Name = C.IGNORED) -> Outcome:
        where = slot_of(v.msg, v.commitment)
        put = self.store.put_message(
            int(where.kind),
            v.id,
            where.round,
            where.signer,
            where.shard,
            where.slot,
            where.commitment,
            v.data,
        )
        if put.status is PutStatus.DUPLICATE:
            self.count(duplicates, "duplicate")
            return Outcome.DUPLICATE
        if put.status is PutStatus.CONFLICT and where.kind is Kind.SUBMISSION:
            self.count(C.REJECTED, "over_quota")
            return Outcome.REJECTED
        if put.status is PutStatus.CONFLICT:
            assert put.existing is not None
            self.store.put_equivocation(
                where.round, where.signer, where.shard, where.slot, put.existing, v.data
            )
            self.count(C.EVIDENCE, f"equivocation_{_kind(where.kind)}")
            return Outcome.EQUIVOCATION
        self.store.remember(where.kind, where.round, v)
        # Rounds that left the accepted window are read no more but by a late finalization
        # or a report: their verified values leave memory (SQLite keeps the bytes).
        self.store.forget_before(accepted_rounds(self.cfg, self.now()).start)
        self.count(C.ACCEPTED, _kind(where.kind))
        return Outcome.NEW
