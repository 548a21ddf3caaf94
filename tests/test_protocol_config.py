"""Network config: TOML round trip, one named error per invalid field, network id."""

import dataclasses
import math
import subprocess
import sys
import tomllib
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from dlnet.protocol.canonical import sha256
from dlnet.protocol.config import (
    DEFAULT_PROJECTION_SEED,
    DatasetRef,
    NetworkConfig,
    ValidatorEntry,
    config_problems,
    default_config,
    default_timing,
    dump_config,
    parse_config,
)
from dlnet.protocol.errors import ConfigError

SHA = sha256(b"corpus")


def validators(n: int) -> tuple[ValidatorEntry, ...]:
    return tuple(ValidatorEntry(sha256(b"v%d" % i), 100 + i) for i in range(n))


def base() -> NetworkConfig:
    return default_config(validators(3), 1_700_000_000, dataset_sha256=SHA)


def toml_doc(cfg: NetworkConfig) -> dict[str, Any]:
    return tomllib.loads(dump_config(cfg))


def parse_doc(doc: dict[str, Any]) -> NetworkConfig:
    return parse_config(tomli_w.dumps(doc))


def error_field(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_doc(doc)
    err = info.value
    assert str(err).startswith(f"{err.field}: ")
    assert " — " in str(err), "every error says how to fix it"
    return err.field


def leaves(doc: dict[str, Any]) -> list[tuple[str, str | int, str]]:
    """(table, key or validator index, key) of every value in a dumped config."""
    out: list[tuple[str, str | int, str]] = []
    for table, body in doc.items():
        if table == "validators":
            out += [(table, i, k) for i, v in enumerate(body) for k in v]
        else:
            out += [(table, k, k) for k in body]
    return out


def path_of(table: str, where: str | int, key: str) -> str:
    return f"validators[{where}].{key}" if table == "validators" else f"{table}.{key}"


def slot(doc: dict[str, Any], table: str, where: str | int) -> dict[str, Any]:
    return doc[table][where] if table == "validators" else doc[table]  # type: ignore[no-any-return]


# --- defaults and round trip ------------------------------------------------------------------


def test_default_config() -> None:
    cfg = base()
    t = cfg.timing
    assert (t.round_seconds, t.commit_seconds, t.reveal_seconds) == (40, 20, 8)
    assert (t.repair_seconds, t.attest_seconds, t.finality_seconds) == (6, 6, 6)
    assert t.phases_seconds > t.round_seconds, "later phases overlap the next round"
    assert (cfg.dim, cfg.shards_per_round, cfg.masks_per_shard) == (1024, 4, 2)
    assert cfg.mask_fraction == 0.5 and cfg.slots_per_shard == 5
    assert cfg.projection_seed == sha256(b"dlnet/v1/projection/default") == DEFAULT_PROJECTION_SEED
    assert cfg.dataset == DatasetRef("builtin:corpus.txt", SHA, "lines")
    assert config_problems(cfg) == []


def test_default_config_overrides() -> None:
    ref = DatasetRef("/data/x.jsonl", SHA, "jsonl", "body")
    cfg = default_config(validators(1), 5, dataset=ref, name="n", round_seconds=20, dim=8)
    assert (cfg.name, cfg.dim, cfg.dataset, cfg.genesis_time) == ("n", 8, ref, 5)
    assert cfg.timing == default_timing(20)
    assert cfg.timing.commit_seconds == 10
    with pytest.raises(TypeError):
        default_config(validators(1), 0, dataset_sha256=SHA, bogus=1)
    with pytest.raises(TypeError):
        default_config(validators(1), 0)
    with pytest.raises(ConfigError) as info:
        default_config(validators(1), 0, dataset_sha256=SHA, dim=0)
    assert info.value.field == "network.dim"


def test_validator_queries() -> None:
    cfg = default_config(reversed(validators(3)), 0, dataset_sha256=SHA)
    assert [v.pubkey for v in cfg.validators] == sorted(v.pubkey for v in validators(3))
    assert cfg.total_stake == 100 + 101 + 102
    assert cfg.stake_of(sha256(b"v1")) == 101 and cfg.is_validator(sha256(b"v1"))
    assert cfg.stake_of(b"\x00" * 32) == 0 and not cfg.is_validator(b"\x00" * 32)


def test_round_trip_default() -> None:
    cfg = base()
    again = parse_config(dump_config(cfg))
    assert again == cfg
    assert again.network_id == cfg.network_id
    assert cfg.network_id.hex() in dump_config(cfg)


def test_round_trip_non_default_tables() -> None:
    cfg = base()
    doc = toml_doc(cfg)
    for table in ("scoring", "consensus", "registration"):
        for key, value in doc[table].items():
            if type(value) is int:
                doc[table][key] = value + 1
    doc["scoring"]["dl_form"] = "count_weighted"
    changed = parse_doc(doc)
    assert changed != cfg
    assert parse_config(dump_config(changed)) == changed


printable = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1
)


@st.composite
def configs(draw: st.DrawFn) -> NetworkConfig:
    keys = draw(st.sets(st.binary(min_size=32, max_size=32), min_size=1, max_size=5))
    entries = [ValidatorEntry(k, draw(st.integers(1, 2**62))) for k in keys]
    ref = DatasetRef(
        draw(printable),
        draw(st.binary(min_size=32, max_size=32)),
        draw(st.sampled_from(["lines", "jsonl"])),
        draw(printable),
    )
    return default_config(
        entries,
        draw(st.integers(0, 2**40)),
        dataset=ref,
        name=draw(printable.filter(lambda s: s.isprintable() and len(s) <= 64)),
        round_seconds=draw(st.integers(2, 3600)),
        dim=draw(st.integers(1, 4096)),
        shards_per_round=draw(st.integers(1, 16)),
        masks_per_shard=draw(st.integers(1, 8)),
        mask_fraction=draw(st.floats(0, 1, exclude_min=True, exclude_max=True)),
        projection_seed=draw(st.binary(min_size=32, max_size=32)),
    )


@settings(max_examples=60)
@given(configs())
def test_round_trip_property(cfg: NetworkConfig) -> None:
    again = parse_config(dump_config(cfg))
    assert again == cfg
    assert again.network_id == cfg.network_id


# --- one named error per invalid field --------------------------------------------------------


def wrong_type(value: Any) -> Any:
    """A TOML value of another type than ``value`` (and not an accepted int-for-float)."""
    if type(value) is bool:
        return 1
    if type(value) is int:
        return True  # a bool is no integer
    if type(value) is float:
        return "0.5"
    return 7  # strings, hex bytes and literals


def test_every_field_wrong_type() -> None:
    doc = toml_doc(base())
    for table, where, key in leaves(doc):
        bad = toml_doc(base())
        slot(bad, table, where)[key] = wrong_type(slot(doc, table, where)[key])
        assert error_field(bad) == path_of(table, where, key)


def test_every_field_unknown_neighbour() -> None:
    doc = toml_doc(base())
    for table in doc:
        bad = toml_doc(base())
        slot(bad, table, 0)["bogus"] = 1
        assert error_field(bad) == path_of(table, 0, "bogus")


def test_a_replaced_key_says_what_replaced_it() -> None:
    doc = toml_doc(base())
    del doc["scoring"]["dl_spread"]
    doc["scoring"]["dl_scale"] = 2.0
    assert error_field(doc) == "scoring.dl_scale"
    with pytest.raises(ConfigError, match="replaced by dl_spread"):
        parse_doc(doc)


def test_required_and_optional_keys() -> None:
    cfg = base()
    doc = toml_doc(cfg)
    optional = {"scoring", "consensus", "registration"}
    for table, where, key in leaves(doc):
        short = toml_doc(cfg)
        del slot(short, table, where)[key]
        if table in optional or (table, key) == ("dataset", "jsonl_field"):
            assert parse_doc(short) == cfg, "an omitted key takes its (default) value"
        else:
            assert error_field(short) == path_of(table, where, key)


def test_float_field_takes_an_integer() -> None:
    doc = toml_doc(base())
    floats = [(t, k) for t, w, k in leaves(doc) if type(slot(doc, t, w)[k]) is float]
    assert floats
    for table, key in floats:
        changed = toml_doc(base())
        changed[table][key] = 1
        try:
            cfg = parse_doc(changed)
        except ConfigError as err:  # 1 may be out of range, but never a type error
            assert err.field == f"{table}.{key}" and "expected" not in str(err)
        else:
            section = cfg if table == "network" else getattr(cfg, table)
            assert type(getattr(section, key)) is float


def set_value(table: str, key: str, value: Any) -> dict[str, Any]:
    doc = toml_doc(base())
    slot(doc, table, 0)[key] = value
    return doc


RANGE_CASES = [
    ("network", "name", ""),
    ("network", "name", "a\tb"),
    ("network", "name", "x" * 65),
    ("network", "genesis_time", -1),
    ("network", "dim", 0),
    ("network", "dim", 10**6),
    ("network", "shards_per_round", 0),
    ("network", "shards_per_round", 257),
    ("network", "masks_per_shard", 0),
    ("network", "mask_fraction", 0.0),
    ("network", "mask_fraction", 1.0),
    ("network", "mask_fraction", math.nan),
    ("network", "mask_fraction", math.inf),
    ("network", "projection_seed", "ab"),
    ("network", "projection_seed", "zz" * 32),
    ("network", "projection_seed", "ab" * 31 + " a"),
    ("timing", "round_seconds", 0),
    ("timing", "commit_seconds", 0),
    ("timing", "reveal_seconds", -3),
    ("timing", "repair_seconds", 0),
    ("timing", "attest_seconds", 0),
    ("timing", "finality_seconds", 0),
    ("timing", "round_window", -1),
    ("timing", "round_window", 0),  # 46 s of phases do not fit one 40 s round
    ("dataset", "path", ""),
    ("dataset", "sha256", "00" * 31),
    ("dataset", "format", "csv"),
    ("dataset", "jsonl_field", ""),
    ("validators", "pubkey", "00" * 33),
    ("validators", "stake", 0),
    ("validators", "stake", -5),
]


@pytest.mark.parametrize(("table", "key", "value"), RANGE_CASES)
def test_out_of_range_fields(table: str, key: str, value: Any) -> None:
    expected = "validators[0]." + key if table == "validators" else f"{table}.{key}"
    assert error_field(set_value(table, key, value)) == expected


def test_problems_of_scoring_and_consensus_are_reported_per_field() -> None:
    """Each table's own problems() come back as ConfigError naming ``<table>.<field>``."""
    cfg = base()
    checked = 0
    for table in ("scoring", "consensus"):
        params = getattr(cfg, table)
        hints = get_type_hints(type(params))
        for f in dataclasses.fields(params):
            for value in bad_values(hints[f.name]):
                broken = dataclasses.replace(params, **{f.name: value})
                reported = [field for field, _ in broken.problems()]
                if f.name not in reported:
                    continue  # not out of range for this table
                doc = toml_doc(cfg)
                doc[table][f.name] = value
                # The first problem is reported (a field checked against another may come first).
                assert error_field(doc) == f"{table}.{reported[0]}"
                checked += 1
    assert checked >= 5


def bad_values(hint: Any) -> list[Any]:
    if hint is int:
        return [0, -1, 10**9]
    if hint is float:
        return [-1.0, 0.0, math.inf, math.nan, 1e9]
    if get_origin(hint) is Literal:
        return ["no-such-option"]
    return []


def test_scoring_problem_is_named() -> None:
    assert error_field(set_value("scoring", "lof_k", 0)) == "scoring.lof_k"


def test_duplicate_and_missing_validators() -> None:
    doc = toml_doc(base())
    doc["validators"].append(dict(doc["validators"][0]))
    assert error_field(doc) == "validators[1].pubkey"  # sorted next to its twin
    doc["validators"] = []
    assert error_field(doc) == "validators"
    doc["validators"] = 3
    assert error_field(doc) == "validators"


def test_table_level_errors() -> None:
    doc = toml_doc(base())
    for table in ("network", "timing", "dataset", "validators"):
        short = dict(doc)
        del short[table]
        assert error_field(short) == table
    assert error_field({**doc, "extra": {"a": 1}}) == "extra"
    assert error_field({**doc, "timing": 5}) == "timing"
    with pytest.raises(ConfigError) as info:
        parse_config("[network\nname = 1")
    assert info.value.field == "config"


def test_validators_are_sorted_on_parse() -> None:
    doc = toml_doc(base())
    doc["validators"].reverse()
    assert parse_doc(doc) == base()


def test_config_problems_lists_all() -> None:
    cfg = dataclasses.replace(base(), dim=0, mask_fraction=2.0, name=5)  # type: ignore[arg-type]
    fields = [field for field, _ in config_problems(cfg)]
    assert fields == ["network.name", "network.dim", "network.mask_fraction"]
    unsorted = dataclasses.replace(base(), validators=tuple(reversed(base().validators)))
    assert [f for f, _ in config_problems(unsorted)] == ["validators", "validators"]


# --- network id -------------------------------------------------------------------------------


def other_value(hint: Any, value: Any) -> Any:
    """A different value of the same type."""
    if get_origin(hint) is Literal:
        return next(a for a in get_args(hint) if a != value)
    if hint is bool:
        return not value
    if hint is int:
        return value + 1
    if hint is float:
        return value * 1.5 + 0.25
    if hint is str:
        return value + "x"
    if hint is bytes:
        return bytes([value[0] ^ 1]) + value[1:]
    raise AssertionError(hint)


def perturbations(cfg: NetworkConfig) -> list[tuple[str, NetworkConfig]]:
    out: list[tuple[str, NetworkConfig]] = []
    nested = {
        "timing",
        "dataset",
        "scoring",
        "consensus",
        "registration",
        "validators",
        "seed_encoders",
    }
    hints = get_type_hints(NetworkConfig)
    for f in dataclasses.fields(cfg):
        if f.name not in nested:
            new = other_value(hints[f.name], getattr(cfg, f.name))
            out.append((f"network.{f.name}", dataclasses.replace(cfg, **{f.name: new})))
    for table in ("timing", "dataset", "scoring", "consensus", "registration"):
        obj = getattr(cfg, table)
        sub = get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            new_obj = dataclasses.replace(
                obj, **{f.name: other_value(sub[f.name], getattr(obj, f.name))}
            )
            out.append((f"{table}.{f.name}", dataclasses.replace(cfg, **{table: new_obj})))
    first = cfg.validators[0]
    for name, entry in [
        ("pubkey", ValidatorEntry(b"\x00" + first.pubkey[1:], first.stake)),
        ("stake", ValidatorEntry(first.pubkey, first.stake + 1)),
    ]:
        out.append(
            (
                f"validators[0].{name}",
                dataclasses.replace(cfg, validators=(entry, *cfg.validators[1:])),
            )
        )
    out.append(("validators", dataclasses.replace(cfg, validators=cfg.validators[1:])))
    seeds = (bytes(32), bytes([7]) * 32)
    out.append(("network.seed_encoders", dataclasses.replace(cfg, seed_encoders=seeds)))
    out.append(("network.seed_encoders[0]", dataclasses.replace(cfg, seed_encoders=seeds[:1])))
    return out


def test_seed_encoders_round_trip_and_one_line_errors() -> None:
    keys = (bytes([9]) * 32, bytes([3]) * 32)
    cfg = dataclasses.replace(base(), seed_encoders=tuple(sorted(keys)))
    assert parse_config(dump_config(cfg)) == cfg
    assert "seed_encoders" not in dump_config(base())  # no seeds: the id of a config without them
    doc = toml_doc(cfg)
    doc["network"]["seed_encoders"] = [k.hex() for k in reversed(keys)]
    assert parse_doc(doc).seed_encoders == tuple(sorted(keys))  # any order, held sorted
    for bad, message in (
        ([keys[0].hex(), keys[0].hex()], "listed twice"),
        (["abcd"], r"network\.seed_encoders\[0\]: expected 32 bytes as hex"),
        ("ab" * 32, "expected an array"),
    ):
        doc["network"]["seed_encoders"] = bad
        with pytest.raises(ConfigError, match=message) as err:
            parse_doc(doc)
        assert "\n" not in str(err.value)
    unsorted = dataclasses.replace(base(), seed_encoders=tuple(reversed(sorted(keys))))
    assert [f for f, _ in config_problems(unsorted)] == ["network.seed_encoders"]


def test_network_id_sensitive_to_every_consensus_field() -> None:
    cfg = base()
    ids = {cfg.network_id}
    for path, changed in perturbations(cfg):
        if path == "dataset.path":
            assert changed.network_id == cfg.network_id, "the local path is not part of the id"
        else:
            assert changed.network_id not in ids, path
            ids.add(changed.network_id)


def test_network_id_stable() -> None:
    cfg = base()
    assert len(cfg.network_id) == 32
    assert base().network_id == cfg.network_id
    # Same network written differently: other key order, comments, validator order, path.
    doc = toml_doc(cfg)
    doc["validators"].reverse()
    doc["dataset"]["path"] = "/somewhere/else/corpus.txt"
    doc = {
        k: dict(reversed(v.items())) if isinstance(v, dict) else v for k, v in reversed(doc.items())
    }
    text = "# another machine\n" + tomli_w.dumps(doc)
    assert parse_config(text).network_id == cfg.network_id
    # An integer written for a float field of integral value is the same value, the same id.
    integral = [
        (t, k)
        for t in ("scoring", "consensus")
        for k, v in doc[t].items()
        if type(v) is float and v.is_integer()
    ]
    assert integral, "some float field has an integral default"
    for table, key in integral:
        doc[table][key] = int(doc[table][key])
    assert parse_doc(doc).network_id == cfg.network_id


def test_registration_table_is_checked_and_in_the_network_id() -> None:
    doc = toml_doc(base())
    assert doc["registration"] == {"max_encoders": 256, "difficulty": 6, "immunity_rounds": 8}
    del doc["registration"]
    assert parse_doc(doc) == base(), "the table may be left out: defaults"
    for key, bad in (("max_encoders", 0), ("max_encoders", 513), ("difficulty", 65)):
        changed = toml_doc(base())
        changed["registration"][key] = bad
        assert error_field(changed) == f"registration.{key}"
    changed = toml_doc(base())
    changed["registration"]["difficulty"] = 7
    assert parse_doc(changed).network_id != base().network_id
    seeds = [sha256(b"s%d" % i).hex() for i in range(3)]
    changed = toml_doc(base())
    changed["network"]["seed_encoders"] = seeds
    changed["registration"]["max_encoders"] = 2
    assert error_field(changed) == "network.seed_encoders"


def test_reading_a_config_needs_no_numerical_stack() -> None:
    """`dlnet.protocol.config` (and the parameter tables) load without numpy or scikit-learn:
    a CLI that only reads a config, or a tool that only checks one, pays nothing for them."""
    probe = (
        "import sys, dlnet.protocol.config, dlnet.protocol.params; "
        "print(sorted(m for m in ('numpy', 'sklearn', 'scipy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "[]"
