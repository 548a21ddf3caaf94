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

import trio

from dlnet.node import counters as C
from dlnet.node.counters import Counters
from dlnet.node.store import KIND_OF, PutStatus, Store
from dlnet.node.transport import Verdict
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
    Probe,
    ProbeKey,
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
# Registration proofs (scrypt, ~0.07 s and 16 MiB each) a node evaluates at once, off its
# event loop: a keeper that first sees 100 keys has ~7 s of them to do.
PROOF_THREADS = 2
# Equivocation evidence ids remembered in memory (the oldest dropped beyond): a round of 1,024
# encoders x 20 slots fits twice.
EVIDENCE_IDS_MAX = 65536


class Proofs:
    """Registration proofs checked by this node: (key, nonce) -> its scrypt work, so that a
    key's proof costs one evaluation per node (about 0.07 s), not one per commit. Bounded:
    the least recently used entries go first."""

    LIMIT = 4096

    def __init__(self, cfg: NetworkConfig) -> None:
        self.cfg = cfg
        self._work: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._lock = threading.Lock()  # the validator reads it from its scoring thread
        self.evaluations = 0
        """scrypt evaluations this node ran (cache misses)."""
        self._running: dict[tuple[bytes, int], trio.Event] = {}
        self._limiter = trio.CapacityLimiter(PROOF_THREADS)

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
            self.evaluations += 1
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

    def known(self, commit: Commit) -> bool:
        """Whether `valid` answers without an evaluation (difficulty 0, or cached)."""
        if self.cfg.registration.difficulty <= 0:
            return True
        with self._lock:
            return (commit.encoder, commit.registration) in self._work

    async def valid_async(self, commit: Commit) -> tuple[bool, bool]:
        """`valid`, with a scrypt evaluation it needs run in a worker thread (hashlib's scrypt
        releases the GIL), at most PROOF_THREADS at once per node, so that the event loop
        keeps relaying and answering meanwhile. Concurrent checks of one (key, nonce) share
        one evaluation. Returns (valid, whether this call ran the evaluation)."""
        entry = (commit.encoder, commit.registration)
        running = self._running.get(entry)
        if running is not None:
            await running.wait()  # cached now (unless evicted at once: computed again)
        if self.known(commit):
            return self.valid(commit), False
        done = self._running[entry] = trio.Event()
        try:
            async with self._limiter:
                await trio.to_thread.run_sync(self.work, *entry)
        finally:
            del self._running[entry]
            done.set()
        return self.valid(commit), True


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
    if isinstance(msg, Probe):
        return Slot(Kind.PROBE, msg.round, msg.validator, None, None, None)
    if isinstance(msg, ProbeKey):
        return Slot(Kind.PROBE_KEY, msg.round, msg.validator, None, None, None)
    raise TypeError(f"{type(msg).__name__} is not a gossiped message")


class Ingest:
    """Checks and stores messages; counts every reject and ignore by reason.

    Every message is decoded and its signature verified once per node: admission turns the
    bytes into a `Verified` value (message, bytes, id, commitment) that the store carries in
    memory for the round (`Store.held`), so no reader decodes or verifies it again. Each
    signature verify is counted in ``verifies`` (in memory, by kind)."""

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
        self._checking: set[bytes] = set()  # bytes whose proof check is under way
        # Ids of messages this node holds only as equivocation evidence (the store keeps the
        # bytes with the evidence, not as messages): a copy pushed or gossiped again is a
        # duplicate, neither verified nor recorded again (an equivocator retries its pushes).
        self._evidence: OrderedDict[bytes, None] = OrderedDict()
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
        self, data: bytes, kind: Kind | None, mid: bytes | None = None, *, proof: bool = True
    ) -> Verified[Message] | None:
        """Strict decode and signature check, and for a Commit its registration proof (after
        the signature, so a forged commit costs no scrypt; ``proof=False`` leaves it to the
        caller); the id and an Embedding's commitment are computed here, once."""
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
        if proof and isinstance(msg, Commit) and not self._proof_valid(msg):
            self.count(C.REJECTED, RejectReason.BAD_REGISTRATION.value)
            return None
        return Verified(
            msg,
            data,
            message_id(data) if mid is None else mid,
            msg.commitment() if isinstance(msg, Embedding) else None,
        )

    def _proof_valid(self, commit: Commit) -> bool:
        """`Proofs.valid`; a scrypt evaluation it ran is counted ``proof:evaluated``."""
        before = self.proofs.evaluations
        ok = self.proofs.valid(commit)
        if self.proofs.evaluations != before:
            self.count(C.PROOF, "evaluated")
        return ok

    async def _verified_async(
        self, data: bytes, kind: Kind | None, mid: bytes
    ) -> Verified[Message] | None:
        """`_verified`, the registration proof's scrypt (if not cached) run off the event
        loop (`Proofs.valid_async`)."""
        v = self._verified(data, kind, mid, proof=False)
        if v is None or not isinstance(v.msg, Commit):
            return v
        ok, evaluated = await self.proofs.valid_async(v.msg)
        if evaluated:
            self.count(C.PROOF, "evaluated")
        if not ok:
            self.count(C.REJECTED, RejectReason.BAD_REGISTRATION.value)
            return None
        return v

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
        if (
            isinstance(msg, ProbeKey)
            and self.now() < round_times(self.cfg, msg.round).commit_deadline
        ):
            # A probe's key before the commits are final could let encoders link its halves:
            # the network neither stores nor relays one until the commits are final
            # (docs/PROTOCOL.md §2.8 rule 5).
            self.count(C.IGNORED, "early_probe_key")
            return False
        return True

    def check(self, kind: Kind, data: bytes) -> Verdict:
        """Topic-validator half: strict decode, signature, round window, duplicate."""
        mid = self._unseen(data)
        if mid is None:
            return Verdict.IGNORE
        return self._judge(self._verified(data, kind, mid))

    async def check_async(self, kind: Kind, data: bytes) -> Verdict:
        """`check` for the commit topic: a registration proof not yet cached is evaluated in
        a worker thread, so relaying everything else goes on meanwhile; a copy of bytes
        still being checked is a duplicate (one decode, one verify, one scrypt)."""
        mid = self._unseen(data)
        if mid is None:
            return Verdict.IGNORE
        self._checking.add(data)
        try:
            v = await self._verified_async(data, kind, mid)
        finally:
            self._checking.discard(data)
        return self._judge(v)

    def holds(self, mid: bytes) -> bool:
        """Whether this node holds the message ``mid``, stored or as equivocation evidence."""
        return mid in self._evidence or self.store.has(mid)

    def _unseen(self, data: bytes) -> bytes | None:
        """The message id of bytes neither checked, being checked, nor held; None (counted
        ``ignored:duplicate``) otherwise."""
        if data in self._checked or data in self._checking:
            self.count(C.IGNORED, "duplicate")
            return None
        mid = message_id(data)
        if self.holds(mid):
            self.count(C.IGNORED, "duplicate")
            return None
        return mid

    def _judge(self, v: Verified[Message] | None) -> Verdict:
        """The topic-validator verdict on a verified value: window, quota; an accepted one
        waits in ``_checked`` for the drain task (`admit_checked`)."""
        if v is None:
            return Verdict.REJECT
        if not self._in_window(v.msg):
            return Verdict.IGNORE
        if isinstance(v.msg, Submission) and self._over_quota(v.msg):
            return Verdict.REJECT
        where = slot_of(v.msg, v.commitment)
        if self.store.has_evidence(where.round, where.signer, where.shard, where.slot):
            # Two signed messages for this place are held and were relayed: a third proves
            # nothing more, and relaying every one let a signer flood the topic (each a new
            # id), up to a commit bundle's 64 commits a time.
            self.count(C.IGNORED, "equivocation_known")
            return Verdict.IGNORE
        self._checked[v.data] = v
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

    def discard_checked(self, data: bytes) -> None:
        """Forget bytes `check` accepted whose gossip message was refused after all (a commit
        bundle with an invalid commit): they are neither stored nor counted as held."""
        self._checked.pop(data, None)

    def admit_judged(self, data: bytes) -> Outcome | None:
        """Drain-task half for one item of a gossip message `check` judged item by item (a
        commit bundle, whose items `commits.admit_bundle` stores in one transaction): stored
        if `check` accepted it; None if it did not (a duplicate, an old round: counted there,
        not decoded again)."""
        v = self._checked.pop(data, None)
        return None if v is None else self._store(v)

    def admit_checked(self, data: bytes) -> Outcome:
        """Drain-task half for a message that `check` accepted: stored and counted in one
        transaction (two commits per gossiped message were a twentieth of a validator's CPU
        while commits arrive)."""
        v = self._checked.pop(data, None)
        with self.store.batch():
            return self.admit(data, None) if v is None else self._store(v)

    def admit(self, data: bytes, kind: Kind | None, *, window: bool = True) -> Outcome:
        """Full admission for bytes from sync fetches (window=False for catch-up of old rounds;
        a late commit is ignored all the same).

        Fetched bytes already held are counted as ``sync:duplicate``, apart from gossip's
        ``ignored:duplicate`` (which counts re-sent messages)."""
        return self.accept(data, kind, window=window)[0]

    def accept(
        self, data: bytes, kind: Kind | None, *, window: bool = True, mid: bytes | None = None
    ) -> tuple[Outcome, Verified[Message] | None]:
        """As `admit`, also returning the verified value (None unless it decoded and
        verified). Given ``mid`` (the id of ``data``, found not held by the caller), the id
        is neither computed nor looked up again."""
        if mid is None:
            mid = message_id(data)
            if self.holds(mid):  # held: not decoded nor verified again
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
        mid = self._unheld(data)
        if mid is None:
            return Outcome.DUPLICATE
        return self.admit_verified(self._verified(data, kind, mid), requested)

    def _unheld(self, data: bytes) -> bytes | None:
        """The message id of fetched bytes not held; None (``sync:duplicate``) if held."""
        mid = message_id(data)
        if self.holds(mid):
            self.count(C.SYNC, "duplicate")
            return None
        return mid

    async def verify_fetched(self, data: bytes, kind: Kind) -> Verified[Message] | Outcome:
        """First half of `admit_requested` for a sync answer, a registration proof's scrypt
        run off the event loop: the verified value for `admit_verified`, or the outcome
        (held: DUPLICATE; failed a check: REJECTED)."""
        mid = self._unheld(data)
        if mid is None:
            return Outcome.DUPLICATE
        v = await self._verified_async(data, kind, mid)
        return Outcome.REJECTED if v is None else v

    def admit_verified(
        self, v: Verified[Message] | None, requested: Callable[[Verified[Message]], bool]
    ) -> Outcome:
        """Second half of `admit_requested`: what was asked for, in time, then stored."""
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
        mid = message_id(data)
        if self.holds(mid):
            self.count(C.PUSH, "duplicate")
            return Outcome.DUPLICATE
        return self.accept(data, Kind.EMBEDDING, mid=mid)[0]

    def admit_own(self, msg: Message, data: bytes, commitment: bytes | None = None) -> None:
        """A message this node made (``data`` its encoding, ``commitment`` an Embedding's if
        the caller has it): stored before it is published (the host skips a node's own
        topic validators and does not hand it its own messages). Not verified: this node
        signed it."""
        if isinstance(msg, Embedding) and commitment is None:
            commitment = msg.commitment()
        self._store(Verified(msg, data, message_id(data), commitment))

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
            self._evidence[v.id] = None
            if len(self._evidence) > EVIDENCE_IDS_MAX:
                self._evidence.popitem(last=False)
            return Outcome.EQUIVOCATION
        self.store.remember(where.kind, where.round, v)
        # Rounds that left the accepted window are read no more but by a late finalization
        # or a report: their verified values leave memory (SQLite keeps the bytes).
        self.store.forget_before(accepted_rounds(self.cfg, self.now()).start)
        self.count(C.ACCEPTED, _kind(where.kind))
        return Outcome.NEW
