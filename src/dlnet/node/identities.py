"""Encoder identities of one node process: several encoders (each its own signing key,
registration proof, model and behaviour) over one libp2p host and one store.

`dlnet run --role encoder` takes them from repeated ``--key`` options (every key with the same
``--model``) or from an encoders file (``--encoders-file FILE``, TOML, one ``[[encoder]]`` table
each; see docs/OPERATING.md, "Several encoders in one process")::

    [[encoder]]
    key = "keys/encoder-0.key"            # relative to the file
    model = "dlnet.node.models.kinds:honest"
    behaviour = "honest"                  # optional
    first_round = 3                       # optional
    model_options = { seed = "0" }        # optional, values are text
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import tomli_w

from dlnet.node.adversaries import parse_behaviour

MAX_IDENTITIES: Final = 64
"""Most encoder identities one process runs (each adds its embedding work and its reveals)."""
KEYS: Final = frozenset({"key", "model", "model_options", "behaviour", "first_round", "align"})


class IdentityError(ValueError):
    """An encoders file or a set of --key options that cannot run; one line saying what to fix."""


@dataclass(frozen=True)
class EncoderIdentity:
    """One encoder identity of a node process."""

    key_path: Path
    model: str | None = None
    model_options: Mapping[str, str] = field(default_factory=dict)
    behaviour: str = "honest"
    first_round: int | None = None
    """The first round to commit in (None: the first it can still make)."""
    align: Path | None = None

    def model_spec(self) -> tuple[str | None, tuple[tuple[str, str], ...], Path | None]:
        """What loading its model depends on: identities with equal specs share one model."""
        return self.model, tuple(sorted(self.model_options.items())), self.align


def _text(where: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise IdentityError(f"{where}: {name} must be a non-empty string")
    return value


def _identity(where: str, table: Any, base: Path) -> EncoderIdentity:
    if not isinstance(table, dict):
        raise IdentityError(f"{where}: expected a table ([[encoder]])")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise IdentityError(
            f"{where}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(KEYS))}"
        )
    if "key" not in table:
        raise IdentityError(f'{where}: no key — add key = "PATH" (a `dlnet keygen` file)')
    key = base / _text(where, "key", table["key"])
    model = _text(where, "model", table["model"]) if "model" in table else None
    options = table.get("model_options", {})
    if not isinstance(options, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
    ):
        raise IdentityError(f'{where}: model_options must be a table of strings (seed = "0")')
    behaviour = _text(where, "behaviour", table.get("behaviour", "honest"))
    try:
        parse_behaviour(behaviour)
    except ValueError as exc:
        raise IdentityError(f"{where}: {exc}") from None
    first = table.get("first_round")
    if first is not None and (type(first) is not int or first < 1):
        raise IdentityError(f"{where}: first_round must be a whole number >= 1")
    align = base / _text(where, "align", table["align"]) if "align" in table else None
    return EncoderIdentity(key, model, dict(options), behaviour, first, align)


def read_encoders_file(path: Path) -> tuple[EncoderIdentity, ...]:
    """The identities of an encoders file (module doc); IdentityError, one line, if it cannot
    be read or is not valid."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise IdentityError(f"--encoders-file {path}: cannot read ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise IdentityError(f"--encoders-file {path}: not valid TOML ({exc})") from exc
    tables = doc.get("encoder")
    if set(doc) != {"encoder"} or not isinstance(tables, list) or not tables:
        raise IdentityError(
            f"--encoders-file {path}: expected one or more [[encoder]] tables and nothing else"
        )
    base = path.resolve().parent
    out = tuple(
        _identity(f"--encoders-file {path}: encoder {i + 1}", t, base) for i, t in enumerate(tables)
    )
    return check_identities(out, f"--encoders-file {path}")


def check_identities(
    identities: tuple[EncoderIdentity, ...], where: str
) -> tuple[EncoderIdentity, ...]:
    """Refuse the same key file twice (two identities signing with one key would equivocate)
    and more than MAX_IDENTITIES."""
    if len(identities) > MAX_IDENTITIES:
        raise IdentityError(
            f"{where}: {len(identities)} encoders; one process runs at most {MAX_IDENTITIES} — "
            "split them over several processes"
        )
    seen: set[Path] = set()
    for ident in identities:
        path = ident.key_path.resolve()
        if path in seen:
            raise IdentityError(
                f"{where}: key {ident.key_path} is named twice — every encoder needs its own key"
            )
        seen.add(path)
    return identities


def render_encoders_file(identities: list[EncoderIdentity]) -> str:
    """The TOML text of an encoders file for ``identities`` (paths written as given)."""
    tables: list[dict[str, Any]] = []
    for ident in identities:
        table: dict[str, Any] = {"key": str(ident.key_path), "behaviour": ident.behaviour}
        if ident.model is not None:
            table["model"] = ident.model
        if ident.first_round is not None:
            table["first_round"] = ident.first_round
        if ident.align is not None:
            table["align"] = str(ident.align)
        if ident.model_options:
            table["model_options"] = dict(ident.model_options)
        tables.append(table)
    return tomli_w.dumps({"encoder": tables})
