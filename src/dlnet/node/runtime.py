"""One running dlnet node: config, data, store, libp2p host, sync, and its roles, all inside
one trio nursery. SIGINT/SIGTERM cancel the nursery; the store is closed on the way out."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from dlnet.node import adversaries
from dlnet.node import counters as C
from dlnet.node.addresses import check_port_free
from dlnet.node.api import NodeView, build_app, open_listener, serve_api
from dlnet.node.byzantine import Byzantine
from dlnet.node.commits import CommitGroup, admit_bundle, check_bundle, parse_bundle
from dlnet.node.context import WALL, NodeContext
from dlnet.node.counters import Counters
from dlnet.node.dataset_io import load_items
from dlnet.node.encoder import EncoderRole
from dlnet.node.identities import EncoderIdentity, IdentityError, check_identities
from dlnet.node.ingest import Ingest, slot_of
from dlnet.node.keyfile import peer_key_seed, read_key
from dlnet.node.models import Model, load_model
from dlnet.node.models.aligned import AlignedModel, load_map
from dlnet.node.progress import genesis_countdown, keep_live_info, write_json
from dlnet.node.report import INFO_FILE, STORE_FILE
from dlnet.node.retention import DEFAULT_KEEP_ROUNDS, check_keep_rounds, prune_rounds
from dlnet.node.reveals import Forwarder, PushGroup
from dlnet.node.reveals import install_server as install_reveal_server
from dlnet.node.store import Store
from dlnet.node.submissions import submitter
from dlnet.node.sync import REQUEST_TIMEOUT, ROUND_KINDS, SyncClient, install_server
from dlnet.node.transport import GossipParams, Transport, Verdict
from dlnet.node.validator import ValidatorRole
from dlnet.protocol.config import NetworkConfig, parse_config
from dlnet.protocol.consensus import CertificateError, verify_certificate
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.masks import split_units
from dlnet.protocol.probes import TEXT_BYTES as PROBE_TEXT_BYTES
from dlnet.protocol.probes import eligible_texts
from dlnet.protocol.registration import solve, valid
from dlnet.protocol.result import result_digest
from dlnet.protocol.rounds import round_at, round_times
from dlnet.protocol.wire import (
    Certificate,
    Kind,
    Reject,
    Submission,
    decode,
    message_id,
    topic,
)

if TYPE_CHECKING:  # libp2p loads only when a node starts (`_run_locked`)
    from dlnet.node.host import Host

ROLES = ("encoder", "validator")
GOSSIPED = ROUND_KINDS
"""Every kind fetchable by round is gossiped, and the other way round."""


KEEPER_ONLY = (Kind.COMMIT, Kind.EMBEDDING)
"""The topics an encoder-only node stays out of: it publishes its own commit into the commit
topic from outside (fanout to the connected keepers) and pushes its reveals to them."""


def subscribed_kinds(roles: frozenset[str], behaviour: str) -> tuple[Kind, ...]:
    """The topics a node joins. An encoder-only node stays out of the commit and embedding
    topics (KEEPER_ONLY): it never reads others' commits or reveals. Relaying reveals made
    the reveal burst cost every encoder CPU (deliveries grew as encoders x validators); in
    the commit topic, 100 encoders made every encoder process check 100 registration
    proofs (one scrypt each) and relay 100 commits at every round start, on the same cores
    as the validators (docs/BENCHMARKS.md, 100 x 7). The nodes that join them (validators,
    relays) keep every commit and reveal, serve them to pulls and take reveal pushes
    (node/reveals.py). The copycat adversary listens to reveals to copy them, so it joins."""
    if roles == {"encoder"} and behaviour.partition("@")[0] != "copycat":
        return tuple(k for k in GOSSIPED if k not in KEEPER_ONLY)
    return GOSSIPED


TRANSPORT_FILE = "transport.json"
TRANSPORT_EVERY = 5.0
LOCK_FILE = "LOCK"
PEER_KEY_FILE = "peer.key"
PEERS_FILE = "peers.json"
REGISTRATION_FILE = "registration.json"
PEERS_EVERY = 30.0
# Certificates a (re)starting node asks its peers for, counted back from the current round.
CATCH_UP_ROUNDS = 64


class NodeError(Exception):
    """A node cannot start; the text is one line telling the operator what to fix."""


@dataclass
class NodeOptions:
    config_path: Path
    data_dir: Path
    roles: frozenset[str] = frozenset()
    key_path: Path | None = None
    model: str | None = None
    model_options: dict[str, str] = field(default_factory=dict)
    align: Path | None = None
    """A map written by `dlnet align`: the model's native output is mapped by it instead of the
    network projection (models/aligned.py)."""
    behaviour: str = "honest"
    byzantine: str | None = None  # TEST ONLY: a node/byzantine.py mode for the validator
    first_round: int | None = None
    """Encoder: the first round to commit in (None: the first it can still make)."""
    listen: str = "/ip4/127.0.0.1/tcp/0"
    bootstrap: tuple[str, ...] = ()
    gossip: GossipParams = field(default_factory=GossipParams)
    api: tuple[str, int] | None = None
    """(host, port) of the local HTTP API; None = no API."""
    probe_texts: Path | None = None
    """Validator: a file of its own texts, one per line, for the probes it makes (§2.8); None:
    the network's data set."""
    keep_rounds: int = DEFAULT_KEEP_ROUNDS
    """Rounds of messages the store keeps (node/retention.py; 0 = all)."""
    encoders: tuple[EncoderIdentity, ...] = ()
    """Encoder identities this process runs (`--encoders-file`, repeated `--key`); empty: the
    one of ``key_path``, ``model``, ``behaviour``, ... when ``roles`` has ``encoder``."""


def encoder_identities(opts: NodeOptions) -> tuple[EncoderIdentity, ...]:
    """The encoder identities of ``opts``: ``opts.encoders``, else one from its single-encoder
    fields when it has the encoder role (and a key), else none."""
    if opts.encoders:
        return opts.encoders
    if "encoder" not in opts.roles or opts.key_path is None:
        return ()
    return (
        EncoderIdentity(
            opts.key_path,
            opts.model,
            dict(opts.model_options),
            opts.behaviour,
            opts.first_round,
            opts.align,
        ),
    )


def scaled_gossip(params: GossipParams, identities: int) -> GossipParams:
    """The transport of a process running ``identities`` encoders: its publish budget (a token
    bucket per host) grows with them, so each identity keeps the rate one encoder has alone."""
    if identities <= 1:
        return params
    return dataclasses.replace(
        params,
        publish_rate=params.publish_rate * identities,
        publish_burst=params.publish_burst * identities,
    )


@dataclass
class Identity:
    """A running encoder identity: its key, its proof's nonce and its (possibly shared) model."""

    spec: EncoderIdentity
    key: SigningKey
    registration: int = 0
    model: Model | None = None


def load_config(path: Path) -> NetworkConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NodeError(f"--config: cannot read {path}: {exc.strerror}") from exc
    return parse_config(text)


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``<data-dir>/LOCK`` (an exclusive flock) for the life of the node: a second
    process on the same data dir gets one readable NodeError. The kernel drops the lock
    when the process ends, however it ends."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise NodeError(
                f"--data-dir {data_dir}: in use by another dlnet process (pid {holder}) — "
                "stop it first, or give this node its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def read_saved_peers(data_dir: Path) -> list[str]:
    """Addresses saved by an earlier run (``peers.json``); unreadable means none."""
    try:
        data = json.loads((data_dir / PEERS_FILE).read_text())
    except (OSError, ValueError):
        return []
    addrs = data.get("peers", []) if isinstance(data, dict) else []
    return [a for a in addrs if isinstance(a, str)]


def write_saved_peers(data_dir: Path, host: Host) -> None:
    addrs = host.known_addrs()
    if not addrs:
        return  # keep the last useful list through a spell without peers
    tmp = data_dir / (PEERS_FILE + ".tmp")
    tmp.write_text(json.dumps({"peers": addrs}, indent=1))
    tmp.replace(data_dir / PEERS_FILE)


async def _keep_saved_peers(host: Host, data_dir: Path) -> None:
    """Rewrite peers.json when the connected set changes (looked at every TRANSPORT_EVERY
    seconds) and at least every PEERS_EVERY seconds."""
    last: list[str] = []
    due = trio.current_time()
    while True:
        await trio.sleep(TRANSPORT_EVERY)
        now = trio.current_time()
        connected = host.connected_peers()
        if connected != last or now >= due:
            write_saved_peers(data_dir, host)
            last, due = connected, now + PEERS_EVERY


class Doppelganger:
    """Watches gossip for messages signed by this node's own key that its store never
    recorded signing: the key is live in another process. Then the node stops signing and
    exits with one line (Lighthouse's doppelganger protection, kept on for the whole run)."""

    def __init__(
        self,
        ctx: NodeContext,
        public_key: bytes,
        stop: trio.CancelScope,
        also: Sequence[NodeContext] = (),
    ) -> None:
        self.ctx = ctx
        self.public_key = public_key
        self.stop = stop
        self.also = also
        """Other views of the node's context (its encoder identities') halted with it."""

    def check(self, data: bytes, peer: str) -> None:
        if self.public_key not in data or self.ctx.halted is not None:
            return  # cheap pre-filter: a message signed by us carries our key
        try:
            msg = decode(data, self.ctx.cfg)
        except Reject:
            return
        if slot_of(msg).signer != self.public_key or self.ctx.store.signed_here(message_id(data)):
            return
        if isinstance(msg, Submission):
            return  # texts submitted with the node's key elsewhere: no consensus signature
        self.ctx.halted = (
            f"--key: a {type(msg).__name__} for round {msg.round} signed by this node's key "
            f"{self.public_key.hex()[:16]} arrived from peer {peer}, and this data dir never "
            "signed it: the key is in use by another live process — stop that one first"
        )
        for view in self.also:
            view.halted = self.ctx.halted
        self.ctx.ingest.count(C.EVIDENCE, "doppelganger")
        self.ctx.log.error("%s; stopping", self.ctx.halted)
        self.stop.cancel()


def _validator(ingest: Ingest, kind: Kind) -> Callable[[str, bytes, str], Verdict]:
    def check(_topic: str, data: bytes, _peer: str) -> Verdict:
        return ingest.check(kind, data)

    return check


def _bundle_checker(ingest: Ingest) -> Callable[[str, bytes, str], Awaitable[Verdict]]:
    """The commit topic's validator (`commits.check_bundle`): a new key's registration proof
    (one scrypt, ~0.07 s) is evaluated off the event loop, so a burst of new keys no longer
    holds every stream of the node (docs/PROTOCOL.md §5 Admission)."""

    async def check(_topic: str, data: bytes, _peer: str) -> Verdict:
        return await check_bundle(ingest, data)

    return check


async def _subscribe_all(
    host: Transport,
    ingest: Ingest,
    cfg: NetworkConfig,
    watch: Callable[[bytes, str], None],
    kinds: tuple[Kind, ...],
) -> None:
    async def handler(data: bytes, peer: str) -> None:
        ingest.admit_checked(data)
        watch(data, peer)

    async def bundle_handler(data: bytes, peer: str) -> None:
        items = parse_bundle(data) or []
        admit_bundle(ingest, items)
        for item in items:
            watch(item, peer)

    for kind in GOSSIPED:
        if kind not in kinds:
            host.publish_outside(topic(cfg.network_id, kind))
    for kind in kinds:
        commits = kind is Kind.COMMIT
        await host.subscribe(
            topic(cfg.network_id, kind),
            _validator(ingest, kind),
            bundle_handler if commits else handler,
            slow=_bundle_checker(ingest) if commits else None,
        )


async def join_topics(
    ctx: NodeContext,
    roles: frozenset[str],
    watch: Callable[[bytes, str], None],
    nursery: trio.Nursery,
    *,
    copycat: bool,
) -> None:
    """Everything a node offers the network before its roles start: it answers sync requests,
    joins its topics (`subscribed_kinds`), each gossiped message going to admission and then
    to ``watch``, and takes reveal pushes if it keeps reveals."""
    install_server(ctx.host, ctx.store, ctx.ingest, ctx.clock.now)
    kinds = subscribed_kinds(roles, "copycat" if copycat else "honest")
    await _subscribe_all(ctx.host, ctx.ingest, ctx.cfg, watch, kinds)
    if Kind.EMBEDDING in kinds:  # a node that keeps reveals takes pushes and forwards them
        forwarder = Forwarder(ctx.host, ctx.ingest)
        nursery.start_soon(forwarder.run)
        install_reveal_server(ctx.host, ctx.ingest, nursery, forwarder)


def start_roles(
    nursery: trio.Nursery,
    ctx: NodeContext,
    encoders: Sequence[tuple[Identity, NodeContext]],
    validator: SigningKey | None,
    byzantine: Byzantine | None = None,
    probe_source: Sequence[str] | None = None,
) -> None:
    """Start an encoder role per identity (each on its own view of the context) and, given a
    validator key, the validator role with certificate catch-up. Encoders commit from the
    first round they can still make (or their ``first_round``); a validator also finishes
    the rounds still under way when it (re)starts."""
    cfg = ctx.cfg
    start = first_round(cfg, ctx.clock.now())
    pushes = PushGroup(ctx.host, ctx.ingest)
    commits = CommitGroup(ctx.host, cfg.network_id)
    for ident, enc_ctx in encoders:
        assert ident.model is not None
        enc = EncoderRole(
            enc_ctx,
            ident.key,
            ident.model,
            ident.spec.behaviour,
            ident.registration,
            pushes,
            commits,
        )
        first = encoder_first_round(cfg, ctx.clock.now(), ident.spec.first_round)
        if first > start:
            enc_ctx.log.info("encoder: first commit in round %d (--first-round)", first)
        nursery.start_soon(enc.run, first)
    if validator is not None:
        nursery.start_soon(catch_up, ctx)
        resume = max(0, round_at(cfg, ctx.clock.now()) - cfg.timing.round_window)
        role = ValidatorRole(ctx, validator, byzantine, probe_source)
        nursery.start_soon(role.run, min(start, resume))


async def catch_up(ctx: NodeContext) -> None:
    """Fetch and verify the certificates of recent rounds; store those of rounds this node has
    not finalized (a round it recorded as not finalized, cut off from the others, is upgraded)."""
    now_round = round_at(ctx.cfg, ctx.clock.now())
    lo = max(0, now_round - CATCH_UP_ROUNDS)
    if now_round <= lo:
        return
    final = {r for r, finalized, _ in ctx.store.round_outcomes() if finalized}

    def keep(data: bytes) -> bool:
        try:
            cert = decode(data, ctx.cfg, Kind.CERTIFICATE)
            assert isinstance(cert, Certificate)
            verify_certificate(ctx.cfg, cert)
        except (Reject, CertificateError):
            ctx.ingest.count(C.REJECTED, "certificate")
            return False
        if cert.round not in final:
            ctx.store.put_certificate(cert.round, data)
            ctx.store.put_round_outcome(cert.round, True, result_digest(cert.result))
            ctx.store.put_finalized_at(cert.round, ctx.clock.now(), None)
        return True

    await ctx.sync.fetch_certificates(
        lo, now_round - 1, keep, deadline=ctx.clock.now() + 2 * REQUEST_TIMEOUT
    )


# An encoder starting mid-round still joins it when at least this long is left to commit.
JOIN_MARGIN = 5.0


def first_round(cfg: NetworkConfig, now: float) -> int:
    """The first round a starting encoder can still commit in."""
    current = round_at(cfg, now)
    if current < 0:
        return 0
    return current if now < round_times(cfg, current).commit_deadline - JOIN_MARGIN else current + 1


def encoder_first_round(cfg: NetworkConfig, now: float, requested: int | None) -> int:
    """The round an encoder up at ``now`` commits first in: the first it can still make
    (`first_round`), never before ``requested`` (``--first-round``)."""
    return max(first_round(cfg, now), requested or 0)


def write_info(
    data_dir: Path,
    host: Host,
    opts: NodeOptions,
    public_key: bytes | None,
    api: str | None,
    cfg: NetworkConfig,
    identities: Sequence[Identity] = (),
) -> dict[str, object]:
    """node.json: how to reach this node, its HTTP API included (read by the testnet driver,
    `dlnet status` and tools). Returns what it wrote; ``keep_live_info`` adds ``live``."""
    info: dict[str, object] = {
        "pid": os.getpid(),
        "network_id": cfg.network_id.hex(),
        "network_name": cfg.name,
        "argv": sys.argv[1:],
        "peer_id": host.peer_id,
        "addrs": host.addrs,
        "roles": sorted(opts.roles),
        "public_key": public_key.hex() if public_key else None,
        "behaviour": opts.behaviour,
        "model": opts.model,
        "api": api,
        "encoders": [
            {
                "public_key": i.key.public_key.hex(),
                "behaviour": i.spec.behaviour,
                "model": i.spec.model,
            }
            for i in identities
        ],
    }
    write_json(data_dir / INFO_FILE, info)
    return info


def read_probe_texts(path: Path, cfg: NetworkConfig) -> tuple[str, ...]:
    """``--probe-texts``: the file's non-blank lines, when enough of them can make a probe."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        texts = tuple(line for line in lines if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise NodeError(f"--probe-texts {path}: cannot read it as UTF-8 text ({exc})") from None
    usable = len(eligible_texts([split_units(t) for t in texts]))
    if usable < cfg.scoring.probe_texts:
        raise NodeError(
            f"--probe-texts {path}: {usable} lines of 2 words or more within {PROBE_TEXT_BYTES} "
            f"bytes, a probe takes {cfg.scoring.probe_texts} — add texts (one per line)"
        )
    return texts


async def run_node(opts: NodeOptions) -> None:
    cfg = load_config(opts.config_path)
    items = load_items(cfg.dataset, opts.config_path.resolve().parent)
    specs = encoder_identities(opts)
    key = read_key(opts.key_path) if opts.key_path is not None else None
    if opts.roles and key is None and not specs:
        raise NodeError("--key: a node with a role signs its messages — pass --key KEYFILE")
    if "validator" in opts.roles and key is None:
        raise NodeError("--key: a validator signs with its own key — pass --key KEYFILE")
    if "validator" in opts.roles and key is not None and not cfg.is_validator(key.public_key):
        raise NodeError(
            f"--key: {key.public_key.hex()} is not in the network config's validator set — "
            "run without --role validator, or use a validator key"
        )
    try:
        check_identities(specs, "--key")
    except IdentityError as exc:
        raise NodeError(str(exc)) from None
    probe_source = None if opts.probe_texts is None else read_probe_texts(opts.probe_texts, cfg)
    try:
        check_keep_rounds(cfg, opts.keep_rounds)
    except ValueError as exc:
        raise NodeError(str(exc)) from None
    log = logging.getLogger("dlnet")
    check_port_free(opts.listen)
    identities = [Identity(spec, read_key(spec.key_path)) for spec in specs]
    for spec in specs:  # a bad map is one line now, not after the registration proof
        if spec.align is not None:
            load_map(spec.align, cfg.network_id, cfg.dim)
    for ident in identities:
        registration_file = (
            REGISTRATION_FILE
            if len(identities) == 1
            else f"registration-{ident.key.public_key.hex()[:16]}.json"
        )
        ident.registration = await trio.to_thread.run_sync(
            registration_nonce, cfg, ident.key.public_key, opts.data_dir, registration_file
        )
    models: dict[object, Model] = {}
    for ident in identities:
        loaded = models.get(ident.spec.model_spec())
        if loaded is None:
            loaded = models[ident.spec.model_spec()] = _load_encoder_model(cfg, ident.spec)
        ident.model = loaded
    if len(identities) > 1:
        log.info("running %d encoder identities with %d models", len(identities), len(models))
    api_sock, api_url = None, None
    if opts.api is not None:
        host_name, port = opts.api
        try:
            api_sock, api_url = open_listener(host_name, port)
        except OSError as exc:
            raise NodeError(
                f"--api {host_name}:{port}: cannot listen there ({exc.strerror or exc})"
            ) from exc
    try:
        opts.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NodeError(f"--data-dir {opts.data_dir}: cannot create ({exc.strerror})") from exc
    with data_dir_lock(opts.data_dir):
        await _run_locked(opts, cfg, items, key, identities, api_sock, api_url, probe_source)


def _load_encoder_model(cfg: NetworkConfig, spec: EncoderIdentity) -> Model:
    log = logging.getLogger("dlnet")
    log.info("loading model %s ...", spec.model or "(default)")
    began = time.monotonic()
    model = load_model(spec.model, cfg, spec.model_options)
    if spec.align is not None:
        fitted = load_map(spec.align, cfg.network_id, cfg.dim)
        model = AlignedModel(model, fitted)
        log.info(
            "aligned by %s (%s, held-out cosine %s)",
            spec.align,
            fitted.method,
            ", ".join(f"{k} {v:.3f}" for k, v in sorted(fitted.heldout_cos.items())),
        )
    log.info("model loaded in %.1f s", time.monotonic() - began)
    return model


# How often a node solving its registration proof logs its progress (s).
PROGRESS_EVERY = 2.0


def registration_nonce(
    cfg: NetworkConfig, key: bytes, data_dir: Path, file: str = REGISTRATION_FILE
) -> int:
    """The nonce of this encoder's registration proof (docs/PROTOCOL.md §2.7): the one saved in
    ``<data-dir>/<file>`` (``registration.json``; one file per key when a process runs several
    encoders) if it is still valid for this key, network and difficulty (one evaluation), else
    solved here (2^difficulty evaluations on average, progress logged every 2 s) and saved."""
    log = logging.getLogger("dlnet")
    path = data_dir / file
    difficulty = cfg.registration.difficulty
    try:
        saved = json.loads(path.read_text())
        nonce = saved["nonce"] if saved.get("key") == key.hex() else None
    except (OSError, ValueError, AttributeError, KeyError):
        nonce = None
    if type(nonce) is int and valid(cfg.network_id, key, nonce, difficulty):
        return nonce
    began = time.monotonic()
    last = began

    def progress(evaluations: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            log.info(
                "registration proof: %d evaluations in %.0f s (expected %d at difficulty %d)",
                evaluations,
                now - began,
                2**difficulty,
                difficulty,
            )

    nonce = solve(cfg.network_id, key, difficulty, progress=progress)
    log.info(
        "registration proof: nonce %d at difficulty %d in %.1f s",
        nonce,
        difficulty,
        time.monotonic() - began,
    )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key.hex(), "network_id": cfg.network_id.hex(), "nonce": nonce})
    except OSError as exc:  # the proof stands; only the next start recomputes it
        log.warning("registration proof: cannot save %s (%s)", path, exc.strerror)
    return nonce


async def _run_locked(
    opts: NodeOptions,
    cfg: NetworkConfig,
    items: tuple[str, ...],
    key: SigningKey | None,
    identities: list[Identity],
    api_sock: socket.socket | None,
    api_url: str | None,
    probe_source: tuple[str, ...] | None,
) -> None:
    store = Store.open(opts.data_dir / STORE_FILE)
    log = logging.getLogger("dlnet")
    ctx: NodeContext | None = None
    try:
        store.bind_network(cfg.network_id, opts.data_dir)
        seed = peer_key_seed(opts.data_dir / PEER_KEY_FILE)
        counters = Counters(store)  # one registry: the host's, ingest's and the roles' counts
        ingest = Ingest(cfg, store, WALL.now, counters)
        seeds = list(dict.fromkeys([*opts.bootstrap, *read_saved_peers(opts.data_dir)]))
        from dlnet.node.host import open_host  # here: libp2p takes ~1.5 s to import

        async with open_host(
            listen=opts.listen,
            bootstrap=seeds,
            params=opts.gossip,
            identity_seed=seed,
            network_tag=cfg.network_id.hex()[:16],
            network_id=cfg.network_id,
            counters=counters,
        ) as host:
            host.on_wrong_network = lambda _peer, _theirs: ingest.count(C.REJECTED, "wrong_network")
            ctx = NodeContext(
                cfg, items, store, ingest, host, SyncClient(host, ingest, cfg.network_id)
            )
            public_key = (
                key.public_key if key else identities[0].key.public_key if identities else None
            )
            # Each encoder identity logs as dlnet.encoder.<key prefix> through its own view of
            # the context (store, host, ingest shared).
            enc_ctxs = [
                dataclasses.replace(
                    ctx, log=logging.getLogger(f"dlnet.encoder.{i.key.public_key.hex()[:8]}")
                )
                if len(identities) > 1
                else ctx
                for i in identities
            ]
            if not host.addrs:
                raise NodeError(
                    f"--listen {opts.listen}: libp2p is listening on no address — pick another "
                    "address or port (0 = any free port)"
                )
            log.info(
                "node %s up, network %s, roles %s, HTTP API %s, listening on %s",
                host.peer_id,
                cfg.network_id.hex()[:16],
                sorted(opts.roles) or ["relay"],
                api_url or "off",
                " ".join(host.addrs),
            )
            async with trio.open_nursery() as nursery:
                # A test adversary that signs twice by design is not its own doppelganger.
                twice = {
                    i.key.public_key
                    for i in identities
                    if adversaries.behaviour(i.spec.behaviour).signs_twice
                }
                signers = {i.key.public_key for i in identities} | (
                    {key.public_key} if key is not None else set()
                )
                signers -= twice
                guards = [
                    Doppelganger(ctx, pk, nursery.cancel_scope, also=enc_ctxs).check
                    for pk in sorted(signers)
                ]

                def watch(data: bytes, peer: str) -> None:
                    for guard in guards:
                        guard(data, peer)

                copycat = any(i.spec.behaviour.startswith("copycat") for i in identities)
                await join_topics(ctx, opts.roles, watch, nursery, copycat=copycat)
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
                if api_sock is not None:
                    view = NodeView(cfg, store, host, opts.roles, public_key, submit=submitter(ctx))
                    nursery.start_soon(serve_api, build_app(view), api_sock)
                info = write_info(opts.data_dir, host, opts, public_key, api_url, cfg, identities)
                nursery.start_soon(keep_live_info, opts.data_dir, info, cfg, store, host, WALL.now)
                nursery.start_soon(genesis_countdown, cfg, WALL.now)
                nursery.start_soon(_keep_transport_counters, host, opts.data_dir)
                nursery.start_soon(_keep_saved_peers, host, opts.data_dir)
                nursery.start_soon(prune_rounds, ctx, opts.keep_rounds)
                validator = key if "validator" in opts.roles else None
                byz = None if opts.byzantine is None else Byzantine(opts.byzantine)
                start_roles(
                    nursery,
                    ctx,
                    list(zip(identities, enc_ctxs, strict=True)),
                    validator,
                    byz,
                    probe_source,
                )
            write_transport_counters(host, opts.data_dir)
            write_saved_peers(opts.data_dir, host)
    finally:
        store.close()
        if api_sock is not None:
            api_sock.close()  # if the API never took it over
    if ctx is not None and ctx.halted is not None:
        raise NodeError(ctx.halted)


def write_transport_counters(host: Host, data_dir: Path) -> None:
    """transport.json: the host's own counters (published, delivered, dropped by reason, ...)."""
    tmp = data_dir / (TRANSPORT_FILE + ".tmp")
    tmp.write_text(json.dumps(dict(host.counters), indent=1, sort_keys=True))
    tmp.replace(data_dir / TRANSPORT_FILE)


async def _keep_transport_counters(host: Host, data_dir: Path) -> None:
    while True:
        await trio.sleep(TRANSPORT_EVERY)
        write_transport_counters(host, data_dir)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logging.getLogger("dlnet").info("signal %d: stopping", signum)
            scope.cancel()
            return
