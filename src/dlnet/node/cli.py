"""The `dlnet` command. Every operator mistake ends in one line on stderr and exit code 2."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, cast

import click
import trio

from dlnet.node import align as alignment
from dlnet.node import client, report
from dlnet.node import testnet as tn
from dlnet.node.addresses import AddressError, check_bootstrap, check_listen
from dlnet.node.adversaries import parse_behaviour
from dlnet.node.byzantine import MODES as BYZANTINE_MODES
from dlnet.node.client import ClientError
from dlnet.node.dataset_io import DatasetError, load_items, resolve_dataset_path
from dlnet.node.identities import (
    MAX_IDENTITIES,
    EncoderIdentity,
    IdentityError,
    check_identities,
    read_encoders_file,
)
from dlnet.node.keyfile import KeyFileError, read_key, write_key
from dlnet.node.logs import LOG_FORMATS, setup_logging
from dlnet.node.models import ModelLoadError, load_model
from dlnet.node.models.aligned import Method, save_map
from dlnet.node.report import ReportError
from dlnet.node.retention import DEFAULT_KEEP_ROUNDS
from dlnet.node.reveals import KEEPER_MAX_PEERS
from dlnet.node.runtime import ROLES, NodeError, NodeOptions, load_config, run_node
from dlnet.node.store import StoreError
from dlnet.node.testnet import SpecError
from dlnet.node.transport import GossipParams
from dlnet.protocol.config import DatasetRef, ValidatorEntry, default_config, dump_config
from dlnet.protocol.errors import ConfigError
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import DEFAULT_DIFFICULTY, MAX_DIFFICULTY, RegistrationParams
from dlnet.protocol.submissions import ProofError

OPERATOR_ERRORS = (
    AddressError,
    ClientError,
    ConfigError,
    DatasetError,
    IdentityError,
    KeyFileError,
    ModelLoadError,
    NodeError,
    ReportError,
    StoreError,
    SpecError,
)


F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def difficulty_option(default_note: str) -> Callable[[F], F]:
    """``--registration-difficulty N`` of the commands that write a genesis."""
    return click.option(
        "--registration-difficulty",
        "difficulty",
        type=int,
        default=None,
        help="The genesis' registration proof work: 2^N evaluations per encoder on average "
        f"(default {DEFAULT_DIFFICULTY}{default_note}). Lower starts encoders faster on a "
        "busy machine; higher makes each identity dearer (docs/PROTOCOL.md §2.7).",
    )


def check_difficulty(difficulty: int | None) -> None:
    if difficulty is not None and not 0 <= difficulty <= MAX_DIFFICULTY:
        fail(f"--registration-difficulty {difficulty}: must be in 0..{MAX_DIFFICULTY}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text, or json: one JSON object per line (ts, time, level, logger, msg, extra fields).",
)
@click.version_option(package_name="dlnet", prog_name="dlnet", message="%(prog)s %(version)s")
def cli(log_level: str, log_format: str) -> None:
    """dlnet: a peer-to-peer network that judges embedding encoders without trusted evaluators.

    Start with `dlnet testnet` to run a whole local network, or see docs/OPERATING.md.
    """
    setup_logging(log_level, log_format)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Key file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(out: Path, force: bool) -> None:
    """Create an Ed25519 signing key (file mode 0600); print its public key."""
    key = SigningKey.generate()
    write_key(out, key, force=force)
    click.echo(key.public_key.hex())


def _parse_validator(spec: str) -> ValidatorEntry:
    """`PUBKEY_HEX[:STAKE]` or `@KEYFILE[:STAKE]`."""
    body, _, stake_text = spec.partition(":")
    stake = 1
    if stake_text:
        if not stake_text.isdigit() or int(stake_text) <= 0:
            fail(f"--validator {spec}: stake must be a positive whole number")
        stake = int(stake_text)
    if body.startswith("@"):
        return ValidatorEntry(read_key(Path(body[1:])).public_key, stake)
    try:
        pubkey = bytes.fromhex(body)
    except ValueError:
        pubkey = b""
    if len(pubkey) != 32:
        fail(f"--validator {spec}: expected 64 hex digits (an Ed25519 public key) or @KEYFILE")
    return ValidatorEntry(pubkey, stake)


@cli.command()
@click.option(
    "--validator",
    "validators",
    multiple=True,
    required=True,
    help="PUBKEY_HEX[:STAKE] or @KEYFILE[:STAKE]; repeat for each validator.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--name", default="dlnet-local", show_default=True)
@click.option(
    "--genesis-in",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds from now until round 0 starts.",
)
@click.option(
    "--dataset",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="One item per line (or .jsonl with a 'text' field); default: the shipped corpus.",
)
@click.option("--round-seconds", type=int, default=None, help="Override the round length.")
@difficulty_option("")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
def init(
    validators: tuple[str, ...],
    out: Path,
    name: str,
    genesis_in: float,
    dataset: Path | None,
    round_seconds: int | None,
    difficulty: int | None,
    force: bool,
) -> None:
    """Write a network config (genesis) for the given validators."""
    check_difficulty(difficulty)
    entries = tuple(_parse_validator(v) for v in validators)
    if out.exists() and not force:
        fail(
            f"--out {out}: the file exists (a genesis other nodes may already use) — "
            "pick another path, or pass --force to overwrite it"
        )
    if dataset is None:
        ref = DatasetRef("builtin:corpus.txt", b"", "lines")
        data = resolve_dataset_path(ref, Path.cwd()).read_bytes()
    else:
        data = dataset.read_bytes()
        ref = DatasetRef(
            str(dataset.resolve()), b"", "jsonl" if dataset.suffix == ".jsonl" else "lines"
        )
    ref = DatasetRef(ref.path, hashlib.sha256(data).digest(), ref.format)
    overrides: dict[str, Any] = {"name": name, "dataset": ref}
    if round_seconds is not None:
        overrides["round_seconds"] = round_seconds
    if difficulty is not None:
        overrides["registration"] = RegistrationParams(difficulty=difficulty)
    cfg = default_config(entries, int(time.time() + genesis_in), **overrides)
    out.write_text(dump_config(cfg))
    click.echo(f"wrote {out}: network id {cfg.network_id.hex()}")
    if genesis_in < 0:
        click.echo(
            f"dlnet: warning: the genesis time is {-genesis_in:.0f} s in the past: nodes will "
            "start mid-network with rounds already missed — use a positive --genesis-in",
            err=True,
        )


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option(
    "--key",
    "key_paths",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Signing key file. An encoder-only node may repeat it: one encoder identity per key, "
    "all with the same --model (one libp2p host, one store).",
)
@click.option(
    "--encoders-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Run the encoder identities listed in this TOML file ([[encoder]] tables: key, model, "
    "model_options, behaviour, first_round, align) in this process; see docs/OPERATING.md.",
)
@click.option(
    "--role",
    "roles",
    type=click.Choice(ROLES),
    multiple=True,
    help="encoder and/or validator; none = relay only.",
)
@click.option(
    "--model",
    default=None,
    help="module:factory of the encoder's model (default: the built-in all-MiniLM-L6-v2 encoder).",
)
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--align",
    "align_path",
    type=click.Path(path_type=Path),
    default=None,
    help="A map written by `dlnet align` for this model and network: the model's own output "
    "is mapped into the network's space by it (docs/OPERATING.md).",
)
@click.option(
    "--probe-texts",
    "probe_texts",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Validator: a UTF-8 file of texts of your own, one per line, for the probes this "
    "validator makes when it is a round's prober (docs/OPERATING.md). They must be texts no "
    "encoder could have read: a probe's key makes its texts public. Default: the network's "
    "data set, which is public (fine on a testnet, not on a real network).",
)
@click.option(
    "--behaviour",
    default="honest",
    hidden=True,
    help="Testnet adversaries: fabricated, fabricated@JITTER, leaky, leaky@LEAK, copycat, replay, "
    "equivocator.",
)
@click.option(
    "--byzantine",
    type=click.Choice(BYZANTINE_MODES),
    default=None,
    hidden=True,
    help="TEST ONLY: run the validator as a byzantine one (node/byzantine.py).",
)
@click.option(
    "--first-round",
    type=click.IntRange(min=1),
    default=None,
    help="Encoder: commit first in this round (default: the first round it can still make); "
    "the testnet's KIND:COUNT@ROUND.",
)
@click.option(
    "--listen",
    default="/ip4/127.0.0.1/tcp/0",
    show_default=True,
    help="libp2p listen multiaddr, /ip4/ADDRESS/tcp/PORT (port 0 = any free port).",
)
@click.option(
    "--bootstrap",
    multiple=True,
    help="Multiaddr of a peer, ending in /p2p/<peer id>; repeat for several.",
)
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--max-peers",
    type=int,
    default=None,
    help=f"Bound on connections (default {GossipParams().max_peers} for an encoder, "
    f"{KEEPER_MAX_PEERS} for a validator or relay: encoders push their reveals to them).",
)
@click.option(
    "--gossip",
    "gossip_params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A transport parameter, e.g. degree=4 or publish_rate=8 (see "
    "docs/PROTOCOL.md, Transport).",
)
@click.option(
    "--api",
    default=None,
    metavar="HOST:PORT",
    help="Serve the read-only HTTP API and /metrics there, e.g. 127.0.0.1:5052 (port 0 = any "
    "free port; the URL goes into the data dir's node.json). Off by default; see docs/API.md "
    "before binding anything but 127.0.0.1.",
)
@click.option(
    "--keep-rounds",
    type=click.IntRange(min=0),
    default=DEFAULT_KEEP_ROUNDS,
    show_default=True,
    help="Rounds of messages the store keeps; older ones are dropped once a round "
    "(certificates, submissions and schedules stay). 0 = keep all. See docs/OPERATING.md, Disk.",
)
def run(
    config_path: Path,
    key_paths: tuple[Path, ...],
    encoders_file: Path | None,
    roles: tuple[str, ...],
    model: str | None,
    model_options: tuple[str, ...],
    align_path: Path | None,
    probe_texts: Path | None,
    behaviour: str,
    byzantine: str | None,
    first_round: int | None,
    listen: str,
    bootstrap: tuple[str, ...],
    data_dir: Path,
    max_peers: int | None,
    gossip_params: tuple[str, ...],
    api: str | None,
    keep_rounds: int,
) -> None:
    """Run a node until interrupted (Ctrl-C / SIGTERM)."""
    options = _model_options(model_options)
    if align_path is not None and "encoder" not in roles:
        fail("--align: only an encoder uses a map — add --role encoder or drop --align")
    if probe_texts is not None and "validator" not in roles:
        fail("--probe-texts: only a validator probes — add --role validator or drop it")
    try:
        parse_behaviour(behaviour)
    except ValueError as exc:
        fail(f"--behaviour {behaviour}: {exc}")
    if max_peers is None and set(roles) != {"encoder"}:
        max_peers = KEEPER_MAX_PEERS
    key_path, encoders = _encoder_keys(
        key_paths,
        encoders_file,
        frozenset(roles),
        model,
        options,
        behaviour,
        first_round,
        align_path,
    )
    gossip = _gossip_params(gossip_params, max_peers)
    check_listen(listen)
    for addr in bootstrap:
        check_bootstrap(addr)
    opts = NodeOptions(
        config_path=config_path,
        data_dir=data_dir,
        roles=frozenset(roles),
        key_path=key_path,
        model=model,
        model_options=options,
        align=align_path,
        behaviour=behaviour,
        byzantine=byzantine,
        first_round=first_round,
        listen=listen,
        bootstrap=bootstrap,
        gossip=gossip,
        api=None if api is None else _api_bind(api),
        encoders=encoders,
        probe_texts=probe_texts,
        keep_rounds=keep_rounds,
    )
    trio.run(run_node, opts)


def _encoder_keys(
    key_paths: tuple[Path, ...],
    encoders_file: Path | None,
    roles: frozenset[str],
    model: str | None,
    options: dict[str, str],
    behaviour: str,
    first_round: int | None,
    align: Path | None,
) -> tuple[Path | None, tuple[EncoderIdentity, ...]]:
    """`dlnet run`'s node key (``--key``, the validator's or the single encoder's) and its
    encoder identities (several ``--key`` or ``--encoders-file``; empty: the usual one)."""
    if encoders_file is not None:
        if "encoder" not in roles:
            fail("--encoders-file: the identities are encoders — add --role encoder")
        if len(key_paths) > 1:
            fail("--encoders-file: give the encoders' keys in the file, at most one --key")
        if "validator" not in roles and key_paths:
            fail("--key: with --encoders-file, --key is the validator's key — drop it")
        return (key_paths[0] if key_paths else None), read_encoders_file(encoders_file)
    if len(key_paths) <= 1:
        return (key_paths[0] if key_paths else None), ()
    if roles != {"encoder"}:
        fail(
            "--key: repeat it only on an encoder-only node (--role encoder); a validator signs "
            "with one key"
        )
    identities = tuple(
        EncoderIdentity(path, model, dict(options), behaviour, first_round, align)
        for path in key_paths
    )
    return None, check_identities(identities, "--key")


def _model_options(items: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            fail(f"--model-option {item}: expected KEY=VALUE")
        options[k] = v
    return options


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option(
    "--model",
    required=True,
    help="module:factory of the model to align (the factory `dlnet run --model` would load).",
)
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="API_URL|DATA_DIR",
    help="Where the certified rounds are: a node's HTTP API (http://127.0.0.1:5052) or a "
    "node's --data-dir.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Map file to write.")
@click.option(
    "--method",
    type=click.Choice(["auto", "ridge", "procrustes"]),
    default="auto",
    show_default=True,
    help="auto: fit both, keep the one with the higher held-out cosine.",
)
def align(
    config_path: Path,
    model: str,
    model_options: tuple[str, ...],
    source: str,
    out: Path,
    method: str,
) -> None:
    """Fit a map from a model's own output into the network's space, on the network's
    certified weighted embeddings (verified against their certificates)."""
    began = time.monotonic()
    cfg = load_config(config_path)
    items = load_items(cfg.dataset, config_path.resolve().parent)
    certs, refused = alignment.certificates(cfg, source)
    pairs = alignment.certified_pairs(cfg, items, certs, refused)
    loaded = load_model(model, cfg, _model_options(model_options))
    kind = cast(Method | Literal["auto"], method)
    fitted = alignment.fit_alignment(cfg, loaded, pairs, kind, model)
    try:
        save_map(out, fitted)
    except OSError as exc:
        fail(f"--out {out}: cannot write ({exc.strerror})")
    click.echo(alignment.describe(fitted, refused, time.monotonic() - began))


def _api_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets: `[::1]:5052`) of the HTTP API."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        fail(f"--api {text}: expected HOST:PORT with a port from 0 to 65535, e.g. 127.0.0.1:5052")
    return host, int(port)


def _gossip_params(items: tuple[str, ...], max_peers: int | None) -> GossipParams:
    """GossipParams from `--gossip KEY=VALUE` items (typed by the field's default)."""
    defaults = GossipParams()
    values: dict[str, Any] = {}
    if max_peers is not None:
        values["max_peers"] = max_peers
        values["target_peers"] = min(defaults.target_peers, max_peers)
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not hasattr(defaults, name):
            fields = ", ".join(f.name for f in dataclasses.fields(GossipParams))
            fail(f"--gossip {item}: expected KEY=VALUE with KEY one of {fields}")
        default = getattr(defaults, name)
        try:
            values[name] = None if text == "none" else type(default or 0.0)(text)
        except ValueError:
            fail(f"--gossip {item}: {text!r} is not a {type(default).__name__}")
    try:
        return dataclasses.replace(defaults, **values)
    except ValueError as exc:
        fail(f"--gossip: {exc}")


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--json", "as_json", is_flag=True)
def status(data_dir: Path, as_json: bool) -> None:
    """What a node holds: identity, rounds and their outcomes, message counters."""
    st = report.node_status(data_dir)
    click.echo(json.dumps(st, indent=1) if as_json else report.format_status(st))


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option("--round", "rnd", type=int, required=True)
@click.option("--json", "as_json", is_flag=True)
def results(data_dir: Path, config_path: Path, rnd: int, as_json: bool) -> None:
    """The finalized result of a round (ranking, scores), checked against the certificate."""
    res = report.round_results(data_dir, load_config(config_path), rnd)
    click.echo(json.dumps(res, indent=1) if as_json else report.format_results(res))


@cli.command()
@click.option("--validators", type=int, default=3, show_default=True)
@click.option(
    "--encoders",
    "encoders_spec",
    default=None,
    help="Comma list of kind:count or kind@level:count (kinds: honest finetuned truncated "
    "noisy random-init static noise zero additive scaled cheapcopy fabricated leaky copycat "
    "replay equivocator py:module:factory; levels: truncated@LAYERS noisy@LEVEL "
    "static@sum|mean scaled@FACTOR cheapcopy@LEVEL fabricated@JITTER leaky@LEAK); a term "
    "ending in @ROUND starts in round ROUND (cheapcopy:8@3). "
    "Default: honest:6 and one of each adversary.",
)
@click.option(
    "--seeds",
    "seeds_spec",
    default="none",
    show_default=True,
    help="Comma list of kinds of --encoders whose encoders the genesis names as seed encoders "
    "(full influence from round 1, docs/PROTOCOL.md §2.6), e.g. honest; or none.",
)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("testnet-out"), show_default=True
)
@click.option("--round-seconds", type=int, default=None)
@click.option(
    "--byzantine",
    "byzantine_spec",
    default=None,
    metavar="N:MODE",
    help="TEST ONLY: N of the validators run a byzantine MODE "
    f"({', '.join(BYZANTINE_MODES)}), e.g. 1:fake-encoders.",
)
@click.option(
    "--emit-compose",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run nothing: write DIR/compose.yaml (one container per node) and DIR/testnet/ "
    "(genesis config and keys) for `docker compose`; see README.md, Containers.",
)
@click.option(
    "--encoders-per-process",
    "per_process",
    type=int,
    default=None,
    help="Most encoders one OS process runs (`dlnet run --encoders-file`); default: 1 up to "
    f"{tn.GROUP_ABOVE} encoders, else {tn.ENCODERS_PER_PROCESS}.",
)
@difficulty_option(f", lowered above {tn.GROUP_ABOVE} encoders; the start-up allowance follows it")
@click.option(
    "--genesis-in",
    type=float,
    default=180.0,
    show_default=True,
    help="With --emit-compose: seconds from now until round 0 starts.",
)
def testnet(
    validators: int,
    encoders_spec: str | None,
    seeds_spec: str,
    rounds: int,
    out: Path,
    round_seconds: int | None,
    byzantine_spec: str | None,
    emit_compose: Path | None,
    per_process: int | None,
    difficulty: int | None,
    genesis_in: float,
) -> None:
    """Start a local network as separate processes on 127.0.0.1, run rounds, report.
    Exits 1 if any round is not finalized or its result is empty."""
    try:
        groups = tn.parse_encoder_groups(encoders_spec) if encoders_spec else ()
        if emit_compose is not None and encoders_spec:
            tn.parse_encoder_spec(encoders_spec)  # refuses a late start in one line
    except tn.SpecError as exc:
        fail(str(exc))
    spec, starts = tn.plan_encoders(groups) if groups else (tn.DEFAULT_ENCODERS, ())
    try:
        seeds = tn.parse_seeds(seeds_spec, [kind for kind, _ in spec])
    except tn.SpecError as exc:
        fail(str(exc))
    if validators < 1 or rounds < 1:
        fail("--validators and --rounds must be at least 1")
    if per_process is not None and not 1 <= per_process <= MAX_IDENTITIES:
        fail(f"--encoders-per-process {per_process}: must be in 1..{MAX_IDENTITIES}")
    check_difficulty(difficulty)
    byzantine: tuple[int, str] = (0, "")
    if byzantine_spec is not None:
        try:
            byzantine = tn.parse_byzantine_spec(byzantine_spec, validators)
        except tn.SpecError as exc:
            fail(f"--byzantine {byzantine_spec}: {exc}")
    if emit_compose is not None:
        plan = tn.TestnetPlan(
            validators,
            spec,
            rounds,
            emit_compose,
            round_seconds,
            seeds=seeds,
            difficulty=difficulty,
        )
        cfg = tn.emit_compose(plan, emit_compose, genesis_in)
        start = time.strftime("%H:%M:%S UTC", time.gmtime(cfg.genesis_time))
        click.echo(
            f"wrote {emit_compose / 'compose.yaml'} and {emit_compose / 'testnet'}: network id "
            f"{cfg.network_id.hex()}, round 0 at {start}"
        )
        return
    code = tn.run_testnet(
        tn.TestnetPlan(
            validators,
            spec,
            rounds,
            out,
            round_seconds,
            byzantine=byzantine,
            start_rounds=starts,
            seeds=seeds,
            per_process=per_process,
            difficulty=difficulty,
        )
    )
    sys.exit(code)


@cli.command()
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path),
    required=True,
    help="Texts: .jsonl (a JSON string or an object with --field a line) or one text a line.",
)
@click.option("--api", required=True, help="A node's HTTP API, e.g. http://127.0.0.1:8000.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    default=Path("dlnet-submitter.key"),
    show_default=True,
    help="Signing key file; created (a fresh key) if it does not exist.",
)
@click.option("--field", default="text", show_default=True, help="JSON field of a .jsonl text.")
@click.option("--round", "first_round", type=int, default=None, help="First target round.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Receipt JSON file.")
def submit(
    path: Path,
    api: str,
    config_path: Path,
    key_path: Path,
    field: str,
    first_round: int | None,
    out: Path | None,
) -> None:
    """Submit texts for embedding by the network; prints one submission id a line."""
    cfg = load_config(config_path)
    texts = client.read_texts(path, field)
    if key_path.exists():
        key = read_key(key_path)
    else:
        key = SigningKey.generate()
        write_key(key_path, key)
    receipts = client.submit(cfg, api, key, texts, first_round)
    doc = {"submitter": key.public_key.hex(), "api": api, "submissions": receipts}
    if out is not None:
        out.write_text(json.dumps(doc, indent=1) + "\n")
    for r in receipts:
        click.echo(f"{r['id']} round {r['round']} ({r['texts']} texts)")


@cli.command()
@click.option("--submission", "ids", multiple=True, help="Submission id (repeatable).")
@click.option(
    "--receipt",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="A receipt of `dlnet submit --out`: every submission in it.",
)
@click.option("--api", default=None, help="A node's HTTP API (default: the receipt's).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option(
    "--wait", type=float, default=0.0, show_default=True, help="Seconds to wait for finality."
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Answer JSON file.")
@click.option(
    "--verify",
    "answer_path",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Ask no node: verify a saved answer (--out of an earlier call) offline.",
)
def embeddings(
    ids: tuple[str, ...],
    receipt: Path | None,
    api: str | None,
    config_path: Path,
    wait: float,
    out: Path | None,
    answer_path: Path | None,
) -> None:
    """The network's consensus embeddings of submitted texts, each checked offline against the
    genesis config (certificate, schedule votes, submission). Exit 1 if one is not final."""
    cfg = load_config(config_path)
    if answer_path is not None:
        answers = json.loads(answer_path.read_text())
    else:
        wanted = list(ids)
        if receipt is not None:
            doc = json.loads(receipt.read_text())
            wanted += [r["id"] for r in doc["submissions"]]
            api = api or doc.get("api")
        if not wanted or api is None:
            fail("name --submission ID (or --receipt FILE) and --api URL")
        answers = [client.wait_for(api, sid, wait) for sid in wanted]
    done = []
    pending = 0
    for answer in answers:
        if "certificate" not in answer:
            pending += 1
            click.echo(f"{answer.get('id')}: {answer.get('state')}", err=True)
            done.append(answer)
            continue
        try:
            proven = client.checked(cfg, answer)
        except ProofError as exc:
            click.echo(f"dlnet: the answer for {answer.get('id')} does not verify: {exc}", err=True)
            sys.exit(1)
        done.append(proven)
        gaps = [e for e in proven["embeddings"] if e["empty"]]
        if gaps:
            # A zero vector is the network saying it has no embedding, never a result.
            pending += 1
            click.echo(
                f"{answer['id']}: round {answer['round']} is final, but the network certified no "
                f"embedding of {len(gaps)} of its {len(proven['embeddings'])} texts (the zero "
                "vector: too few checked encoders on their shards); submit them again",
                err=True,
            )
            continue
        click.echo(
            f"{answer['id']}: final in round {answer['round']}, {len(answer['embeddings'])} "
            "embeddings, certificate verified",
            err=True,
        )
    text = json.dumps(done, indent=1)
    if out is not None:
        out.write_text(text + "\n")
    elif answer_path is None:
        click.echo(text)
    sys.exit(1 if pending else 0)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one readable line for any operator error, never a traceback."""
    try:
        cli.main(args=argv, prog_name="dlnet", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "dlnet"
        click.echo(f"dlnet: error: {exc.format_message()} (see `{cmd} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"dlnet: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except OPERATOR_ERRORS as exc:
        click.echo(f"dlnet: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
