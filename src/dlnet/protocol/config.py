"""The network config (genesis): its dataclasses, TOML form, validation and network id.

Parsing is generic over the dataclasses' fields and type hints, so the ``[scoring]`` and
``[consensus]`` tables follow `ScoringParams` and `ConsensusParams` without a second list of
their fields here. Every invalid value raises `ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final, Literal, get_args, get_origin, get_type_hints

import tomli_w

from dlnet.protocol.canonical import HASH_BYTES, pack, sha256
from dlnet.protocol.dataset import DatasetFormat
from dlnet.protocol.errors import ConfigError
from dlnet.protocol.params import ConsensusParams, RegistrationParams, ScoringParams

NETWORK_ID_TAG = b"dlnet/v1/network-id"
DEFAULT_PROJECTION_SEED = sha256(b"dlnet/v1/projection/default")
"""The testnet's projection seed: SHA-256 of the ASCII string ``dlnet/v1/projection/default``."""
DEFAULT_DATASET_PATH = "builtin:corpus.txt"
DEFAULT_ROUND_SECONDS = 40

MAX_NAME_CHARS = 64
MAX_DIM = 16384
MAX_SHARDS_PER_ROUND = 256
MAX_MASKS_PER_SHARD = 16
MAX_ROUND_WINDOW = 64
MAX_GENESIS_TIME = 2**40
"""Seconds since the Unix epoch: far beyond any real date, small enough for exact float math."""


@dataclass(frozen=True)
class ValidatorEntry:
    """A validator of the genesis: its raw Ed25519 public key and its stake (a positive int)."""

    pubkey: bytes
    stake: int


@dataclass(frozen=True)
class Timing:
    """Round length and phase lengths in whole seconds; see rounds.py for the deadlines.

    ``round_window`` is how many rounds back from the current one messages are still accepted;
    every phase of a round must end inside it.
    """

    round_seconds: int
    commit_seconds: int
    reveal_seconds: int
    repair_seconds: int
    attest_seconds: int
    finality_seconds: int
    round_window: int

    @property
    def phases_seconds(self) -> int:
        """From a round's start to its finality deadline."""
        return (
            self.commit_seconds
            + self.reveal_seconds
            + self.repair_seconds
            + self.attest_seconds
            + self.finality_seconds
        )


@dataclass(frozen=True)
class DatasetRef:
    """The network's data set. ``path`` is local (``builtin:<file>`` names a file shipped in
    dlnet.data) and is not part of the network id; ``sha256`` identifies the data."""

    path: str
    sha256: bytes
    format: DatasetFormat
    jsonl_field: str = "text"


@dataclass(frozen=True)
class NetworkConfig:
    """One network's genesis. Build it with `parse_config` or `default_config`, which validate;
    `config_problems` lists what is wrong with one built by hand."""

    name: str
    genesis_time: int
    timing: Timing
    dim: int
    shards_per_round: int
    masks_per_shard: int
    mask_fraction: float
    projection_seed: bytes
    dataset: DatasetRef
    validators: tuple[ValidatorEntry, ...]
    scoring: ScoringParams
    consensus: ConsensusParams
    registration: RegistrationParams = dataclasses.field(default_factory=RegistrationParams)
    """``[registration]``: the bounded encoder set and its admission cost (docs/PROTOCOL.md
    §2.7); always hashed into the network id."""
    seed_encoders: tuple[bytes, ...] = ()
    """Encoder keys that start with full influence (``network.seed_encoders``, an array of hex
    keys; docs/PROTOCOL.md §2.6 "Earned influence"); ascending. Hashed into the network id only
    when not empty."""

    @cached_property
    def network_id(self) -> bytes:
        """``SHA-256(b"dlnet/v1/network-id" || pack(canonical_form(self)))``."""
        return sha256(NETWORK_ID_TAG, pack(canonical_form(self)))

    @cached_property
    def _stakes(self) -> dict[bytes, int]:
        return {v.pubkey: v.stake for v in self.validators}

    @property
    def total_stake(self) -> int:
        return sum(v.stake for v in self.validators)

    def stake_of(self, pubkey: bytes) -> int:
        """The validator's stake; 0 for a key that is no validator."""
        return self._stakes.get(pubkey, 0)

    def is_validator(self, pubkey: bytes) -> bool:
        return pubkey in self._stakes

    @property
    def slots_per_shard(self) -> int:
        """Slot 0 = full, slot 2m+1 = mask m, slot 2m+2 = inverse m."""
        return 1 + 2 * self.masks_per_shard


# --- generic field handling -------------------------------------------------------------------

_TABLES: dict[str, type[Any]] = {
    "timing": Timing,
    "dataset": DatasetRef,
    "scoring": ScoringParams,
    "consensus": ConsensusParams,
    "registration": RegistrationParams,
}
"""`NetworkConfig` fields that are TOML tables of their own (``validators`` is an array)."""
_NETWORK_SKIP = frozenset({*_TABLES, "validators", "seed_encoders"})


def _hints(cls: type[Any], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Field name -> resolved type hint, in field order."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in skip}


def _toml_repr(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    for t, text in kinds.items():
        if type(value) is t:
            return f"{text} ({value!r})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _type_fix(hint: Any) -> str:
    """What a value of type ``hint`` looks like in TOML (the "how to fix" part)."""
    if get_origin(hint) is Literal:
        return "use one of " + ", ".join(repr(a) for a in get_args(hint))
    fixes = {
        bool: "write true or false",
        int: "write a whole number without quotes",
        float: "write a number, e.g. 0.5",
        str: "write a quoted string",
        bytes: f'write {2 * HASH_BYTES} hex digits in quotes, e.g. "{"ab" * HASH_BYTES}"',
    }
    return fixes[hint]


def _python_ok(hint: Any, value: Any) -> bool:
    """Whether ``value`` (a Python value, not TOML) has the exact type ``hint`` asks for."""
    if get_origin(hint) is Literal:
        return any(type(value) is type(a) and value == a for a in get_args(hint))
    if hint is float:
        return type(value) in (int, float)
    if hint in (bool, int, str, bytes):
        return type(value) is hint
    raise TypeError(f"config fields of type {hint!r} are not supported")


def _from_toml(where: str, hint: Any, value: Any) -> Any:
    """The Python value of TOML ``value`` for a field of type ``hint``, or `ConfigError`."""
    if hint is bytes and type(value) is str:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = None
        if raw is not None and len(raw) == HASH_BYTES and len(value) == 2 * HASH_BYTES:
            return raw
        raise ConfigError(where, f"expected {HASH_BYTES} bytes as hex — {_type_fix(hint)}")
    if hint is not bytes and _python_ok(hint, value):
        return float(value) if hint is float else value
    raise ConfigError(where, f"expected {_what(hint)}, got {_toml_repr(value)} — {_type_fix(hint)}")


def _what(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "hex bytes")


def _to_plain(hint: Any, value: Any, *, hex_bytes: bool) -> Any:
    """A field value as it is dumped (bytes as hex) or hashed (bytes raw); floats as float."""
    if hint is float:
        return float(value)
    if hint is bytes and hex_bytes:
        return bytes(value).hex()
    return value


REPLACED: Final = {
    "scoring.dl_scale": "replaced by dl_spread (a ratio to the shard's median DL, either way; "
    "docs/PROTOCOL.md §2.5) — remove dl_scale; dl_spread defaults to 4.0",
}
"""Keys of earlier genesis files and what to write instead (a changed scoring rule is a new
network: its config, and so its network id, differ)."""


def _read_table(section: str, table: Any, cls: type[Any], skip: frozenset[str]) -> dict[str, Any]:
    """Parse one TOML table into the keyword arguments of ``cls`` (fields in ``skip`` apart)."""
    if not isinstance(table, dict):
        raise ConfigError(section, f"expected a table, got {_toml_repr(table)} — write [{section}]")
    hints = _hints(cls, skip)
    for key in table:
        if (where := f"{section}.{key}") in REPLACED:
            raise ConfigError(where, REPLACED[where])
        if key not in hints:
            raise ConfigError(
                f"{section}.{key}", f"unknown key — remove it (known: {', '.join(hints)})"
            )
    has_default = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    out: dict[str, Any] = {}
    for name, hint in hints.items():
        if name in table:
            out[name] = _from_toml(f"{section}.{name}", hint, table[name])
        elif name not in has_default:
            raise ConfigError(f"{section}.{name}", f"missing — add {name} = ... under [{section}]")
    return out


def _plain_table(obj: Any, skip: frozenset[str], *, hex_bytes: bool) -> dict[str, Any]:
    hints = _hints(type(obj), skip)
    return {n: _to_plain(h, getattr(obj, n), hex_bytes=hex_bytes) for n, h in hints.items()}


def _tables(cfg: NetworkConfig, *, hex_bytes: bool) -> dict[str, Any]:
    """The config as TOML-shaped nested dicts (all fields, dataset.path included)."""
    out: dict[str, Any] = {"network": _plain_table(cfg, _NETWORK_SKIP, hex_bytes=hex_bytes)}
    if cfg.seed_encoders:  # absent when empty: configs without seeds keep their network id
        out["network"]["seed_encoders"] = [
            k.hex() if hex_bytes else bytes(k) for k in cfg.seed_encoders
        ]
    for section in _TABLES:
        out[section] = _plain_table(getattr(cfg, section), frozenset(), hex_bytes=hex_bytes)
    out["validators"] = [_plain_table(v, frozenset(), hex_bytes=hex_bytes) for v in cfg.validators]
    return out


# --- public API -------------------------------------------------------------------------------


def canonical_form(cfg: NetworkConfig) -> dict[str, Any]:
    """What the network id hashes: every field but ``dataset.path``, bytes raw, floats float64.

    A map of the tables ``network`` ``timing`` ``dataset`` ``scoring`` ``consensus`` (each a
    map of field name to value) and ``validators`` (an array of maps ``pubkey``, ``stake`` in
    pubkey order); canonical.pack sorts every map's keys.
    """
    form = _tables(cfg, hex_bytes=False)
    del form["dataset"]["path"]
    return form


def config_problems(cfg: NetworkConfig) -> list[tuple[str, str]]:
    """Every problem of ``cfg`` as ``(field path, "what is wrong — how to fix")``.

    Type problems come first (types are exact: an int field takes no bool, a float field an
    int or a float), then value problems, each in field order; values are only checked for
    fields whose types are right.
    """
    out: list[tuple[str, str]] = []
    typed: dict[str, bool] = {}

    def check_types(section: str, obj: Any, skip: frozenset[str] = frozenset()) -> None:
        for name, hint in _hints(type(obj), skip).items():
            value = getattr(obj, name)
            ok = _python_ok(hint, value)
            typed[f"{section}.{name}"] = ok
            if not ok:
                out.append((f"{section}.{name}", f"expected {_what(hint)} — {_type_fix(hint)}"))

    check_types("network", cfg, _NETWORK_SKIP)
    for section, cls in _TABLES.items():
        obj = getattr(cfg, section)
        if type(obj) is not cls:
            out.append((section, f"expected a {cls.__name__} — build it with {cls.__name__}(...)"))
        else:
            check_types(section, obj)
    if type(cfg.validators) is not tuple or not all(
        type(v) is ValidatorEntry for v in cfg.validators
    ):
        out.append(("validators", "expected a tuple of ValidatorEntry — list [[validators]]"))
        return out
    for i, v in enumerate(cfg.validators):
        check_types(f"validators[{i}]", v)

    def bad(field: str, text: str) -> None:
        if typed.get(field, True):
            out.append((field, text))

    def int_range(field: str, value: int, lo: int, hi: int, example: int) -> None:
        if typed[field] and not lo <= value <= hi:
            bad(field, f"must be in [{lo}, {hi}], got {value} — use e.g. {example}")

    if typed["network.name"] and not (
        0 < len(cfg.name) <= MAX_NAME_CHARS and cfg.name.isprintable()
    ):
        bad("network.name", f"must be 1 to {MAX_NAME_CHARS} printable characters — rename it")
    int_range("network.genesis_time", cfg.genesis_time, 0, MAX_GENESIS_TIME, 1_700_000_000)
    int_range("network.dim", cfg.dim, 1, MAX_DIM, 1024)
    int_range("network.shards_per_round", cfg.shards_per_round, 1, MAX_SHARDS_PER_ROUND, 4)
    int_range("network.masks_per_shard", cfg.masks_per_shard, 1, MAX_MASKS_PER_SHARD, 2)
    if typed["network.mask_fraction"] and not (
        math.isfinite(cfg.mask_fraction) and 0 < cfg.mask_fraction < 1
    ):
        bad("network.mask_fraction", f"must be in (0, 1), got {cfg.mask_fraction!r} — use 0.5")
    if typed["network.projection_seed"] and len(cfg.projection_seed) != HASH_BYTES:
        bad("network.projection_seed", f"must be {HASH_BYTES} bytes — use 64 hex digits")

    if type(cfg.timing) is Timing:
        t = cfg.timing
        for name in ("round", "commit", "reveal", "repair", "attest", "finality"):
            field = f"timing.{name}_seconds"
            int_range(field, getattr(t, f"{name}_seconds"), 1, 86_400, 10)
        int_range("timing.round_window", t.round_window, 0, MAX_ROUND_WINDOW, 2)
        if all(typed[f"timing.{f.name}"] for f in dataclasses.fields(Timing)) and (
            t.round_seconds > 0 and t.phases_seconds > (t.round_window + 1) * t.round_seconds
        ):
            bad(
                "timing.round_window",
                f"a round's phases take {t.phases_seconds} s, longer than the "
                f"{t.round_window + 1} rounds of the window — raise round_window to "
                f"{math.ceil(t.phases_seconds / t.round_seconds) - 1} or shorten the phases",
            )

    if type(cfg.dataset) is DatasetRef:
        d = cfg.dataset
        if typed["dataset.path"] and not d.path:
            bad("dataset.path", 'is empty — name the data set file, e.g. "builtin:corpus.txt"')
        if typed["dataset.sha256"] and len(d.sha256) != HASH_BYTES:
            bad("dataset.sha256", "must be 32 bytes — write the file's SHA-256 as 64 hex digits")
        if typed["dataset.jsonl_field"] and not d.jsonl_field:
            bad("dataset.jsonl_field", 'is empty — name the JSON field holding the text, "text"')

    if not cfg.validators:
        out.append(("validators", "no validators — add at least one [[validators]] table"))
    seeds = cfg.seed_encoders
    if type(seeds) is not tuple or not all(type(k) is bytes for k in seeds):
        out.append(("network.seed_encoders", "expected a tuple of keys — list hex keys"))
    elif any(len(k) != HASH_BYTES for k in seeds):
        out.append(("network.seed_encoders", "every key must be 32 bytes — write 64 hex digits"))
    elif list(seeds) != sorted(set(seeds)):
        out.append(("network.seed_encoders", "not sorted or listed twice — list each key once"))
    elif (
        type(cfg.registration) is RegistrationParams
        and type(cfg.registration.max_encoders) is int
        and len(seeds) > cfg.registration.max_encoders
    ):
        out.append(
            (
                "network.seed_encoders",
                f"{len(seeds)} seeds but registration.max_encoders is "
                f"{cfg.registration.max_encoders} — name fewer seeds or raise max_encoders",
            )
        )
    for i, v in enumerate(cfg.validators):
        if typed[f"validators[{i}].pubkey"] and len(v.pubkey) != HASH_BYTES:
            bad(f"validators[{i}].pubkey", "must be 32 bytes — write the raw Ed25519 key as hex")
        if typed[f"validators[{i}].stake"] and v.stake < 1:
            bad(f"validators[{i}].stake", f"must be >= 1, got {v.stake} — give it stake or drop it")
        if i and typed[f"validators[{i}].pubkey"] and typed[f"validators[{i - 1}].pubkey"]:
            prev = cfg.validators[i - 1].pubkey
            if v.pubkey == prev:
                bad(f"validators[{i}].pubkey", "listed twice — list each validator once")
            elif v.pubkey < prev:
                bad("validators", "not sorted by pubkey — sort them (parse_config does)")

    for section in ("scoring", "consensus", "registration"):
        obj = getattr(cfg, section)
        if type(obj) is _TABLES[section] and all(
            typed[f"{section}.{f.name}"] for f in dataclasses.fields(obj)
        ):
            out += [(f"{section}.{field}", text) for field, text in obj.problems()]
    return out


def validate_config(cfg: NetworkConfig) -> NetworkConfig:
    """``cfg`` itself, or `ConfigError` for its first problem (see `config_problems`)."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(*problems[0])
    return cfg


def parse_config(text: str) -> NetworkConfig:
    """The validated config of a TOML text; `ConfigError` for the first thing wrong with it.

    Tables: ``[network]`` (the scalar fields of `NetworkConfig`), ``[timing]``, ``[dataset]``,
    ``[scoring]``, ``[consensus]`` and ``[[validators]]``. Bytes are hex strings. Unknown keys
    are errors. Keys of ``[scoring]`` / ``[consensus]`` (and ``dataset.jsonl_field``) may be
    left out to take their defaults; every other key is required. Validators may be listed in
    any order (they are sorted by pubkey).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"not valid TOML ({exc}) — fix the syntax") from None
    for key in doc:
        if key not in ("network", "validators", *_TABLES):
            raise ConfigError(key, "unknown table — remove it")
    for required in ("network", "timing", "dataset", "validators"):
        if required not in doc:
            raise ConfigError(required, f"missing — add the [{required}] table")
    table = doc["network"]
    seeds = _read_seeds(table.pop("seed_encoders", []) if isinstance(table, dict) else [])
    network = _read_table("network", table, NetworkConfig, _NETWORK_SKIP)
    nested = {
        section: cls(**_read_table(section, doc.get(section, {}), cls, frozenset()))
        for section, cls in _TABLES.items()
    }
    raw_validators = doc["validators"]
    if not isinstance(raw_validators, list):
        raise ConfigError("validators", "expected an array of tables — write [[validators]]")
    validators = tuple(
        ValidatorEntry(**_read_table(f"validators[{i}]", v, ValidatorEntry, frozenset()))
        for i, v in enumerate(raw_validators)
    )
    validators = tuple(sorted(validators, key=lambda v: v.pubkey))
    return validate_config(
        NetworkConfig(**network, **nested, validators=validators, seed_encoders=seeds)
    )


def _read_seeds(raw: Any) -> tuple[bytes, ...]:
    """``network.seed_encoders``: an array of 64-hex-digit keys, returned ascending (a key
    listed twice is an error)."""
    where = "network.seed_encoders"
    if not isinstance(raw, list):
        raise ConfigError(where, f'expected an array, got {_toml_repr(raw)} — write ["<hex>", ...]')
    keys = tuple(sorted(_from_toml(f"{where}[{i}]", bytes, v) for i, v in enumerate(raw)))
    if len(set(keys)) != len(keys):
        raise ConfigError(where, "a key is listed twice — list each seed encoder once")
    return keys


def dump_config(cfg: NetworkConfig) -> str:
    """TOML text for ``cfg`` with every field written out; ``parse_config(dump_config(c)) == c``."""
    header = f"# dlnet network config (genesis); network id {cfg.network_id.hex()}\n\n"
    tables = _tables(cfg, hex_bytes=True)
    # tomli_w writes a list of tables inline; [[validators]] blocks read better and diff well.
    validators = "".join(
        f"\n[[validators]]\n{tomli_w.dumps(entry)}" for entry in tables.pop("validators")
    )
    return header + tomli_w.dumps(tables) + validators


def default_timing(round_seconds: int = DEFAULT_ROUND_SECONDS) -> Timing:
    """Testnet phases as fractions of the round: commit 1/2, reveal 1/5, repair, attest and
    finality 3/20 each (40 s -> 20, 8, 6, 6, 6: the phases after reveal overlap the next round),
    accepting messages of the 2 previous rounds."""
    return Timing(
        round_seconds=round_seconds,
        commit_seconds=max(1, round_seconds // 2),
        reveal_seconds=max(1, round_seconds // 5),
        repair_seconds=max(1, round_seconds * 3 // 20),
        attest_seconds=max(1, round_seconds * 3 // 20),
        finality_seconds=max(1, round_seconds * 3 // 20),
        round_window=2,
    )


def default_config(
    validators: Iterable[ValidatorEntry],
    genesis_time: int,
    *,
    dataset_sha256: bytes | None = None,
    **overrides: Any,
) -> NetworkConfig:
    """A validated local-testnet config (dim 1024, 4 shards of 2 masks at fraction 0.5).

    ``overrides`` replace `NetworkConfig` fields or, by their names, `Timing` fields (a new
    ``round_seconds`` rescales the default phases). Without a ``dataset`` override the data
    set is ``builtin:corpus.txt`` with ``dataset_sha256``, which the caller computes.
    """
    timing_names = {f.name for f in dataclasses.fields(Timing)}
    timing_over = {k: overrides.pop(k) for k in list(overrides) if k in timing_names}
    timing = overrides.pop(
        "timing", default_timing(timing_over.get("round_seconds", DEFAULT_ROUND_SECONDS))
    )
    if "dataset" not in overrides:
        if dataset_sha256 is None:
            raise TypeError("default_config needs dataset=DatasetRef(...) or dataset_sha256=...")
        overrides["dataset"] = DatasetRef(DEFAULT_DATASET_PATH, dataset_sha256, "lines")
    fields: dict[str, Any] = {
        "name": "dlnet-testnet",
        "genesis_time": genesis_time,
        "timing": dataclasses.replace(timing, **timing_over),
        "dim": 1024,
        "shards_per_round": 4,
        "masks_per_shard": 2,
        "mask_fraction": 0.5,
        "projection_seed": DEFAULT_PROJECTION_SEED,
        "validators": tuple(sorted(validators, key=lambda v: v.pubkey)),
        "scoring": ScoringParams(),
        "consensus": ConsensusParams(),
        "registration": RegistrationParams(),
        "seed_encoders": (),
    }
    unknown = set(overrides) - set(fields) - {"dataset"}
    if unknown:
        raise TypeError(f"default_config: unknown overrides {sorted(unknown)}")
    return validate_config(NetworkConfig(**{**fields, **overrides}))
