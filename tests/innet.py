"""Whole dlnet networks in one process: real roles, stores and admission over `memnet`'s
in-memory transport, in trio's virtual time (`MockClock`), so a five-round network with
byzantine validators runs in seconds. The node wiring is the one `dlnet run` uses
(`join_topics`, `start_roles`); only libp2p and the wall clock are replaced."""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
from memnet import MemoryHost, MemoryNetwork

from dlnet.node.byzantine import Byzantine
from dlnet.node.context import NodeContext, TrioClock
from dlnet.node.identities import EncoderIdentity
from dlnet.node.ingest import Ingest
from dlnet.node.models import Model
from dlnet.node.probing import grades
from dlnet.node.report import STORE_FILE
from dlnet.node.runtime import Identity, join_topics, start_roles
from dlnet.node.store import Store
from dlnet.node.sync import SyncClient
from dlnet.node.validator import score_on_one_thread
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.scoring import score_round

T = TypeVar("T")
SHARED_FUNCTIONS = (score_round, score_on_one_thread, grades)
"""What a validator offloads to score a round: `score_round`, or the wrapper that runs it
on one BLAS thread (the one `ValidatorRole.score` uses; a rename here must follow it, else
every validator scores for itself again: tests/test_innet.py checks that results are shared),
and the grading of a round's probe."""


@dataclass
class SharedScoring(NodeContext):
    """A node's context whose ``offload`` of `score_round` reuses a result another node of the
    same network computed from byte-identical inputs (``scores``, one per network).

    Every validator of a network in one process scores each round from its own store, so most
    of a test's CPU went to repeating the same pure computation on the same arrays. Each node
    still builds its inputs from what it holds; only when they are equal to the byte (the
    pickle of the call) is the result copied instead of recomputed, so a validator that holds
    anything else still scores it itself. score_round's own determinism is checked in
    tests/test_protocol_scoring.py and docs/vectors.json."""

    scores: dict[tuple[str, bytes], Any] = field(default_factory=dict)
    """Results by (the offloaded function's name, SHA-256 of the pickled call)."""

    async def offload(self, work: Callable[[], T]) -> T:
        if not (isinstance(work, functools.partial) and work.func in SHARED_FUNCTIONS):
            return await super().offload(work)
        call = (work.args, sorted(work.keywords.items()))
        digest = hashlib.sha256(pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)).digest()
        key = (work.func.__name__, digest)
        if key not in self.scores:
            self.scores[key] = await super().offload(work)
        held: T = copy.deepcopy(self.scores[key])
        return held


@dataclass
class Encoder:
    """One encoder identity to run: its key, model and behaviour (`dlnet run --behaviour`)."""

    key: SigningKey
    model: Model
    behaviour: str = "honest"
    first_round: int | None = None


@dataclass
class Node:
    name: str
    host: MemoryHost
    ctx: NodeContext
    scope: trio.CancelScope
    validator: SigningKey | None = None
    encoders: Sequence[Encoder] = field(default_factory=list)
    byzantine: str | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def store(self) -> Store:
        return self.ctx.store


class InNet:
    """Start, kill, pause and restart nodes of one network. Each node runs in its own cancel
    scope inside ``nursery``; a killed node's store stays on disk for a restart."""

    def __init__(
        self,
        nursery: trio.Nursery,
        cfg: NetworkConfig,
        items: tuple[str, ...],
        tmp: Path,
        clock: TrioClock,
    ) -> None:
        self.nursery = nursery
        self.cfg = cfg
        self.items = items
        self.tmp = tmp
        self.clock = clock
        self.net = MemoryNetwork(nursery)
        self.nodes: dict[str, Node] = {}
        self.scores: dict[tuple[str, bytes], Any] = {}

    async def start(
        self,
        name: str,
        *,
        validator: SigningKey | None = None,
        encoders: Sequence[Encoder] = (),
        byzantine: str | None = None,
    ) -> Node:
        """A node with the given roles (none: a relay), up once it joined its topics."""
        data_dir = self.tmp / name
        data_dir.mkdir(parents=True, exist_ok=True)
        store = Store.open(data_dir / STORE_FILE, synced=False)  # never fsync: a test's store
        ingest = Ingest(self.cfg, store, self.clock.now)
        host = self.net.host(name)
        ctx = SharedScoring(
            self.cfg,
            self.items,
            store,
            ingest,
            host,
            SyncClient(host, ingest, self.cfg.network_id),
            log=logging.getLogger(f"dlnet.{name}"),
            clock=self.clock,
            threads=False,
            scores=self.scores,
        )
        roles = frozenset(
            ({"validator"} if validator is not None else set())
            | ({"encoder"} if encoders else set())
        )
        identities = [
            Identity(
                EncoderIdentity(Path(name), behaviour=e.behaviour, first_round=e.first_round),
                e.key,
                model=e.model,
            )
            for e in encoders
        ]
        node = Node(name, host, ctx, trio.CancelScope(), validator, encoders, byzantine)
        joined = trio.Event()

        async def run() -> None:
            with node.scope:
                try:
                    async with trio.open_nursery() as nursery:
                        copycat = any(e.behaviour.startswith("copycat") for e in encoders)
                        await join_topics(ctx, roles, lambda _d, _p: None, nursery, copycat=copycat)
                        joined.set()
                        byz = None if byzantine is None else Byzantine(byzantine)
                        start_roles(nursery, ctx, [(i, ctx) for i in identities], validator, byz)
                finally:
                    host.kill()
                    store.close()
                    node.stopped.set()

        self.nursery.start_soon(run)
        await joined.wait()
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """kill -9: the node stops at once; its data dir stays."""
        node = self.nodes[name]
        node.host.kill()
        node.scope.cancel()

    async def restart(self, name: str) -> Node:
        """Start a killed node again on its data dir, with the same keys and models."""
        old = self.nodes[name]
        await old.stopped.wait()
        return await self.start(
            name, validator=old.validator, encoders=old.encoders, byzantine=old.byzantine
        )
