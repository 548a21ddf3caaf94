"""The parameter tables of the network config (``[scoring]``, ``[consensus]``,
``[registration]``): plain dataclasses with their validation, importable without numpy or
scikit-learn, so that reading a config costs no numerical stack (docs/PROTOCOL.md §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Literal

DlForm = Literal["literal", "count_weighted"]
MAX_PROBE_TEXTS: Final = 32
"""Most texts in a probe: their 64 halves (texts of at most 1,024 bytes, `probes.TEXT_BYTES`)
fit one gossip message with room to spare."""
MAX_SLOTS: Final = 33
"""Slots a shard can have: 1 + 2 x `config.MAX_MASKS_PER_SHARD` (config imports this module)."""


@dataclass(frozen=True)
class ScoringParams:
    """Scoring parameters, the ``[scoring]`` table of the network config.

    The defaults are starting points, to be tuned by the validity study (scripts/validity.py).
    """

    dl_form: DlForm = "literal"
    """``literal``: ||F - A - B|| / ||F||; ``count_weighted``: ||F - (nA/n)A - (nB/n)B|| / ||F||."""
    lof_k: int = 5
    """LOF neighbourhood size; LOF uses n_neighbors = min(lof_k, n - 1) among n peers."""
    lof_threshold: float = 6.0
    """A slot whose LOF exceeds this marks the (shard, encoder) cell as an outlier: obviously
    wrong embeddings only. In a pool dominated by one model every other model is a density
    outlier (aligned all-mpnet-base-v2 reaches LOF 4.1 among MiniLM copies, docs/VALIDITY.md);
    random vectors, the cut's target, stay above 4.7 and below the consensus cut too."""
    min_consensus_cos: float = 0.1
    """A slot whose direction has a cosine below this to the consensus direction (the normalised
    coordinate-wise median of the shard's ok encoders' directions) marks the cell as an outlier:
    the encoder is not speaking in the network's space. -1 turns the cut off."""
    min_text_margin: float = 0.0
    """The text cut. A slot's text margin is its cosine to its own consensus direction minus its
    greatest cosine to the consensus direction of another text of the round (every slot of the
    round's other checked shards, but those the pool embeds as this slot's text:
    ``same_text_cos``), both consensus directions over the voices that passed the other cuts.
    A cell with ``text_cut_slots`` slots whose margin is below this is an outlier: it embeds
    another text (a replayed round, a wrong input). Relative, where an absolute cosine cannot
    tell a weak model of the right text from a strong model of another (docs/VALIDITY.md, sixth
    study). -2 turns the cut off."""
    text_cut_slots: int = 2
    """How many of a cell's slots must lie nearer another text for the text cut. An embedding of
    another item is off on every slot; a real model far from the consensus can misplace one
    short half where two texts of the round are related (aligned all-mpnet-base-v2 on real
    testnets: one slot of 1 cell in 52, twice, at -0.001 and -0.059), so 2 (1 to 33; above a
    cell's slot count, all of them)."""
    same_text_cos: float = 0.9
    """For the text cut, two slots whose consensus directions have a cosine above this are one
    text (the same or a near-identical string, which no encoder can be asked to tell apart);
    the consensus of two different texts of the shipped corpus are at most 0.56 apart."""
    composition_full: float = 0.15
    """Mean composition agreement (a cosine, over an encoder's passing cells of the round) at or
    above which the composition factor is 1; below, the factor is agreement / composition_full
    (0 for agreement <= 0). Low: agreement must not decide among real models (a better model of
    another architecture composes unlike the majority: aligned all-mpnet-base-v2 0.32 against
    MiniLM's 0.91, and 0.17-0.36 a round on a real testnet, aligned on 240 certified
    embeddings), only sink forged inverses (0.05); the probe factor ranks."""
    zero_norm_eps: float = 1e-6
    """An embedding whose L2 norm is <= this is invalid (not DL 0)."""
    collapse_min_rank: float = 1.2
    """Absolute collapse gate: an encoder whose round effective rank is below this scores 0."""
    collapse_rel_rank: float = 0.5
    """Relative collapse gate: effective rank below this fraction of the median rank scores 0."""
    dl_spread: float = 4.0
    """How far a cell's DL may be from the shard's median DL, as a ratio either way, before the
    DL factor reaches its minimum, 1 - dl_weight (a DL of median x 4 or median / 4 by default:
    the too-exact gate's distance). Two-sided because a DL below the pool's is as cheap to make
    as it is suspect: mixing the full embedding into the mask and inverse keeps the residual and
    shrinks DL (docs/VALIDITY.md, fourth study)."""
    dl_weight: float = 0.25
    """How much DL can discount a score (0: DL ignored, 1: a DL dl_spread off the median scores
    0)."""
    min_encoders_for_lof: int = 3
    """Fewer valid encoders on a shard than this: no peer comparison (LOF and consensus = 1)."""
    min_dl_ratio: float = 0.25
    """A cell whose DL is below this fraction of the median DL of the shard's valid encoders is
    an outlier: composition that is exact where real encoders' is not is forged (inverse =
    full - mask) or a bag of units (docs/VALIDITY.md). 0 turns the gate off. Applies only with
    at least min_encoders_for_lof valid encoders."""
    duplicate_cos: float = 0.999
    """Two ok cells of a shard whose directions have a cosine above this on EVERY slot are
    near-duplicates: they are one voice in the peer statistics (consensus direction, composition
    consensus, LOF reference, too-exact median, the small-pool rule) and share one voice's weight
    in the weighted embedding. 1 turns merging off."""
    probe_texts: int = 16
    """Texts in each round's probe (§2.8, protocol/probes.py): the round's prober splits this
    many texts of its own in two and every encoder embeds the halves; an encoder's score is
    multiplied by its pooled probe grade. 0 turns probes off (every probe factor is 1).
    A probe grades only what no encoder could read before the round: its key makes its texts
    public, so a prober's texts must be fresh (docs/OPERATING.md, `--probe-texts`)."""
    probe_window: int = 12
    """How many of an encoder's latest probe grades its probe factor takes (`probes.probe_factor`:
    the median over their probers of each prober's mean)."""

    def problems(self) -> list[tuple[str, str]]:
        """Return ``(field, "what is wrong — how to fix")`` for every invalid value."""
        out: list[tuple[str, str]] = []

        def bad(name: str, text: str) -> None:
            out.append((name, text))

        if self.dl_form not in ("literal", "count_weighted"):
            bad("dl_form", f"unknown form {self.dl_form!r} — use 'literal' or 'count_weighted'")
        if self.lof_k < 1:
            bad("lof_k", f"must be >= 1, got {self.lof_k} — use e.g. 5")
        if self.min_encoders_for_lof < 2:
            bad(
                "min_encoders_for_lof",
                f"must be >= 2, got {self.min_encoders_for_lof} — use e.g. 3",
            )
        if self.probe_texts != 0 and not 2 <= self.probe_texts <= MAX_PROBE_TEXTS:
            bad(
                "probe_texts",
                f"must be 0 (off) or in [2, {MAX_PROBE_TEXTS}], got {self.probe_texts} "
                "— use e.g. 16",
            )
        if not 1 <= self.text_cut_slots <= MAX_SLOTS:
            bad(
                "text_cut_slots",
                f"must be in [1, {MAX_SLOTS}], got {self.text_cut_slots} — use e.g. 2",
            )
        if not 1 <= self.probe_window <= 1024:
            bad("probe_window", f"must be in [1, 1024], got {self.probe_window} — use e.g. 12")
        floats: dict[str, tuple[float, float, bool, bool]] = {
            # name: (low, high, low inclusive, high inclusive)
            "lof_threshold": (1.0, math.inf, False, False),
            "min_consensus_cos": (-1.0, 1.0, True, False),
            "min_text_margin": (-2.0, 2.0, True, False),
            "same_text_cos": (0.0, 1.0, False, True),
            "composition_full": (0.0, 1.0, False, True),
            "zero_norm_eps": (0.0, math.inf, True, False),
            "collapse_min_rank": (0.0, math.inf, True, False),
            "collapse_rel_rank": (0.0, 1.0, True, True),
            "dl_spread": (1.0, math.inf, False, False),
            "dl_weight": (0.0, 1.0, True, True),
            "min_dl_ratio": (0.0, 1.0, True, False),
            "duplicate_cos": (0.0, 1.0, False, True),
        }
        for name, (lo, hi, lo_in, hi_in) in floats.items():
            value = getattr(self, name)
            ok = (
                math.isfinite(value)
                and (value >= lo if lo_in else value > lo)
                and (value <= hi if hi_in else value < hi)
            )
            if not ok:
                lo_s = f"{'[' if lo_in else '('}{lo:g}"
                hi_s = f"{hi:g}{']' if hi_in else ')'}"
                bad(
                    name,
                    f"must be a finite number in {lo_s}, {hi_s}, got {value!r} — fix the value",
                )
        return out


@dataclass(frozen=True)
class ConsensusParams:
    """The ``[consensus]`` table of the network config."""

    kappa: float = 0.5
    """The κ of the κ-median: a consensus value needs the support of this share of the stake.
    At 0.5, validators holding less than half the stake cannot move it."""
    finality_num: int = 2
    finality_den: int = 3
    """A result is final once validators holding MORE than num/den of the stake signed it."""

    def problems(self) -> list[tuple[str, str]]:
        """Return ``(field, "what is wrong — how to fix")`` for every invalid value."""
        out: list[tuple[str, str]] = []
        if not (math.isfinite(self.kappa) and 0.0 < self.kappa < 1.0):
            out.append(("kappa", f"must be in (0, 1), got {self.kappa!r} — use 0.5"))
        if self.finality_num < 1:
            out.append(("finality_num", f"must be >= 1, got {self.finality_num} — use 2"))
        if self.finality_den < 1:
            out.append(("finality_den", f"must be >= 1, got {self.finality_den} — use 3"))
        elif self.finality_num >= 1 and not (
            Fraction(1, 2) <= Fraction(self.finality_num, self.finality_den) < 1
        ):
            out.append(
                (
                    "finality_num",
                    f"finality_num/finality_den = {self.finality_num}/{self.finality_den} must be "
                    "in [1/2, 1) so that two final results always share a signer — use 2 and 3",
                )
            )
        return out

    @property
    def kappa_fraction(self) -> Fraction:
        """κ as the exact fraction of its shortest decimal spelling (0.5 -> 1/2)."""
        return Fraction(repr(self.kappa))


MAX_DIFFICULTY: Final = 64

MAX_REGISTERED: Final = 512
"""Largest ``max_encoders``: members plus newcomers (2 x 512) fit the wire's 1,024 encoders."""

DEFAULT_DIFFICULTY: Final = 6
"""Calibrated in docs/BENCHMARKS.md ("Registration work"): about 5 s of one core per identity on
the reference machine (a 13-encoder testnet pays it once at start), 1.3 CPU-hours per 1,000."""


@dataclass(frozen=True)
class RegistrationParams:
    """``[registration]`` table of the network config."""

    max_encoders: int = 256
    """Most registered encoders (1 .. 512)."""
    difficulty: int = DEFAULT_DIFFICULTY
    """Leading zero bits the proof's work must have (0 = any nonce; 0 .. 64)."""
    immunity_rounds: int = 8
    """Rounds after entering during which a member cannot be replaced (0 .. 2^16)."""

    def problems(self) -> list[tuple[str, str]]:
        """``(field, "what is wrong — how to fix")`` for every invalid value."""
        out: list[tuple[str, str]] = []
        if not 1 <= self.max_encoders <= MAX_REGISTERED:
            out.append(
                (
                    "max_encoders",
                    f"must be in [1, {MAX_REGISTERED}], got {self.max_encoders} — use 256",
                )
            )
        if not 0 <= self.difficulty <= MAX_DIFFICULTY:
            out.append(
                (
                    "difficulty",
                    f"must be in [0, {MAX_DIFFICULTY}], got {self.difficulty} — "
                    f"use {DEFAULT_DIFFICULTY}",
                )
            )
        if not 0 <= self.immunity_rounds <= 2**16:
            out.append(
                ("immunity_rounds", f"must be in [0, 65536], got {self.immunity_rounds} — use 8")
            )
        return out

    @property
    def listed_limit(self) -> int:
        """Most encoders an attestation or a round result may name: members + newcomers."""
        return 2 * self.max_encoders
