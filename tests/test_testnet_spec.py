"""`dlnet testnet --encoders`: the spec grammar, its one-line errors, and the node arguments."""

from __future__ import annotations

import pytest

from dlnet.node.encoder import parse_behaviour
from dlnet.node.testnet import KINDS, SpecError, _encoder_args, parse_encoder_spec


def test_kinds_with_levels() -> None:
    spec = (
        "honest:6, finetuned:1,truncated@2:1,noisy@0.5:2,static@mean:1,random-init:1,"
        "fabricated@0.2:1,fabricated:1"
    )
    assert parse_encoder_spec(spec) == (
        ("honest", 6),
        ("finetuned", 1),
        ("truncated@2", 1),
        ("noisy@0.5", 2),
        ("static@mean", 1),
        ("random-init", 1),
        ("fabricated@0.2", 1),
        ("fabricated", 1),
    )
    assert parse_encoder_spec("py:mod:make:2") == (("py:mod:make", 2),)


def test_level_becomes_the_kinds_option() -> None:
    args = _encoder_args("noisy@0.5", 7)
    assert args[:2] == ["--model", KINDS["noisy"][0]]
    assert args[-4:] == ["--behaviour", "honest", "--model-option", "level=0.5"]
    assert "seed=7" in args
    assert _encoder_args("truncated@2", 0)[-1] == "layers=2"
    assert _encoder_args("honest", 0)[-2:] == ["--behaviour", "honest"]


def test_jitter_goes_to_the_fabricated_behaviour() -> None:
    args = _encoder_args("fabricated@0.2", 3)
    assert args == [
        "--model",
        KINDS["fabricated"][0],
        "--model-option",
        "seed=3",
        "--behaviour",
        "fabricated@0.2",
    ]
    assert parse_behaviour(args[-1]) == ("fabricated", 0.2)
    assert _encoder_args("fabricated", 3)[-2:] == ["--behaviour", "fabricated"]
    assert parse_behaviour("fabricated") == ("fabricated", 0.0)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("cheat", "unknown encoder behaviour 'cheat'"),
        ("copycat@0.2", "behaviour copycat takes no @level"),
        ("fabricated@-0.1", "at least 0"),
        ("fabricated@", "is not a number"),
    ],
)
def test_behaviour_errors_are_one_line(behaviour: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_behaviour(behaviour)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("honest:two", "is not kind:count"),
        ("honest", "is not kind:count"),
        ("cheater:1", "unknown kind 'cheater'"),
        ("honest@2:1", "kind honest takes no @level"),
        ("truncated@9:1", "layers=9 must be in 1..6"),
        ("truncated@two:1", "not an integer"),
        ("noisy@-1:1", "at least 0"),
        ("noisy@inf:1", "must be finite"),
        ("static@max:1", "sum or mean"),
        ("fabricated@-0.2:1", "jitter=-0.2 must be finite and at least 0"),
        ("fabricated@nan:1", "must be finite"),
        ("fabricated@inf:1", "must be finite"),
        ("fabricated@lots:1", "jitter='lots' is not a number"),
        ("copycat@0.2:1", "kind copycat takes no @level"),
    ],
)
def test_spec_errors_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        parse_encoder_spec(spec)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("--encoders: ")


def test_byzantine_spec() -> None:
    from dlnet.node.testnet import parse_byzantine_spec

    assert parse_byzantine_spec("1:fake-encoders", 4) == (1, "fake-encoders")
    assert parse_byzantine_spec("2:late-attest", 4) == (2, "late-attest")
    for bad, why in (("5:inverted", "1..4"), ("0:inverted", "1..4"), ("1:lazy", "unknown mode")):
        with pytest.raises(SpecError, match=why):
            parse_byzantine_spec(bad, 4)


def test_an_empty_or_unfinalized_or_padded_round_fails_the_testnet() -> None:
    """Finding 6: an EMPTY result was printed as FINALIZED and the driver exited 0."""
    from dlnet.node.report import format_testnet, round_ok

    def rnd(n: int, finalized: bool, empty: bool, real: bool) -> dict[str, object]:
        return {
            "round": n,
            "finalized": finalized,
            "empty": empty,
            "only_real_encoders": real,
            "validators": {"v": {"result_digest": "ab"}},
            "ranking": [],
        }

    rounds = [rnd(1, True, False, True), rnd(2, True, True, True), rnd(3, False, False, True)]
    rounds.append(rnd(4, True, False, False))
    assert [round_ok(r) for r in rounds] == [True, False, False, False]
    rep = {
        "network_id": "00" * 32,
        "rounds": rounds,
        "rejected": {},
        "ignored": {},
        "transport": {},
        "peak_rss_mb": {},
    }
    text = format_testnet(rep)
    assert "round 2: FINALIZED, EMPTY result" in text
    assert "round 4: FINALIZED" in text and "only real encoders: NO" in text
    assert text.splitlines()[-1] == (
        "summary: 1 of 4 rounds finalized with a non-empty result of real encoders; "
        "FAILED rounds: 2, 3, 4"
    )
