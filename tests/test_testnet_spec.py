"""`dlnet testnet --encoders`: the spec grammar, its one-line errors, and the node arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlnet.node.adversaries import parse_behaviour
from dlnet.node.testnet import (
    KINDS,
    EncoderGroup,
    SpecError,
    _encoder_args,
    parse_encoder_groups,
    parse_encoder_spec,
)


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
        "cut": {"text": 2, "consensus": 5},
        "transport": {},
        "peak_rss_mb": {},
    }
    text = format_testnet(rep)
    assert "cells scored 0, by why (summed over validators): consensus=5, text=2" in text
    assert "round 2: FINALIZED, EMPTY result" in text
    assert "round 4: FINALIZED" in text and "only real encoders: NO" in text
    assert text.splitlines()[-1] == (
        "summary: 1 of 4 rounds finalized with a non-empty result of real encoders; "
        "FAILED rounds: 2, 3, 4"
    )


def test_scaled_and_cheapcopy_kinds() -> None:
    assert parse_encoder_spec("honest:6,scaled@7:1,scaled@1e6:1,cheapcopy:8,cheapcopy@0.001:1") == (
        ("honest", 6),
        ("scaled@7", 1),
        ("scaled@1e6", 1),
        ("cheapcopy", 8),
        ("cheapcopy@0.001", 1),
    )
    assert _encoder_args("scaled@1e6", 2)[-1] == "factor=1e6"
    assert _encoder_args("cheapcopy@0.001", 2)[-1] == "level=0.001"
    assert "seed=4" in _encoder_args("cheapcopy", 4)  # the copy's own noise; the map is shared


def test_late_start_is_parsed() -> None:
    assert parse_encoder_groups("honest:3, cheapcopy:8@3,static@mean:2@10,py:m:f:1@2") == (
        EncoderGroup("honest", 3, 1),
        EncoderGroup("cheapcopy", 8, 3),
        EncoderGroup("static@mean", 2, 10),
        EncoderGroup("py:m:f", 1, 2),
    )
    assert parse_encoder_groups("honest:3@1") == (EncoderGroup("honest", 3, 1),)
    with pytest.raises(SpecError, match="starts every encoder in round 1") as err:
        parse_encoder_spec("honest:3,cheapcopy:8@3")  # the launcher does not start late yet
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("scaled@0:1", "factor=0.0 must be greater than 0"),
        ("scaled@-7:1", "at least 0"),
        ("scaled@inf:1", "must be finite"),
        ("cheapcopy@x:1", "is not a number"),
        ("cheapcopy:8@0", "start round after '@' must be an integer >= 1"),
        ("cheapcopy:8@", "start round after '@' must be an integer >= 1"),
        ("cheapcopy:8@three", "start round after '@' must be an integer >= 1"),
        ("cheapcopy:@3", "is not kind:count"),
    ],
)
def test_new_spec_errors_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        parse_encoder_groups(spec)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("--encoders: ")


def test_late_groups_and_seeds_make_the_plan(tmp_path: Path) -> None:
    from dlnet.node.runtime import encoder_first_round
    from dlnet.node.testnet import (
        TestnetPlan,
        encoder_names,
        encoder_start_rounds,
        late_due,
        late_start_time,
        parse_seeds,
        plan_encoders,
        testnet_config,
    )
    from dlnet.protocol.identity import SigningKey
    from dlnet.protocol.rounds import round_times

    encoders, starts = plan_encoders(parse_encoder_groups("honest:3,cheapcopy:2@3,noise:1"))
    assert encoders == (("honest", 3), ("cheapcopy", 2), ("noise", 1))
    assert starts == (1, 3, 1)
    plan = TestnetPlan(1, encoders, 4, tmp_path, start_rounds=starts, seeds=("honest",))
    assert encoder_start_rounds(plan) == [1, 1, 1, 3, 3, 1]
    assert [k for _, k, _ in encoder_names(plan)][3] == "cheapcopy"
    assert encoder_start_rounds(TestnetPlan(1, encoders, 4, tmp_path)) == [1] * 6
    assert parse_seeds("honest, noise", ["honest", "cheapcopy", "noise"]) == ("honest", "noise")
    assert parse_seeds("none", ["honest"]) == ()
    with pytest.raises(SpecError, match="--seeds: 'static' is not a kind") as err:
        parse_seeds("static", ["honest", "noise"])
    assert "\n" not in str(err.value)
    keys = [SigningKey.generate().public_key for _ in range(2)]
    cfg = testnet_config(plan, [SigningKey.generate()], 1_000_000, tmp_path, keys[::-1])
    assert cfg.seed_encoders == tuple(sorted(keys))
    # Started at late_start_time with --first-round 3, 8 encoders commit first in round 3
    # whenever they come up between their start and round 3's commit deadline (less the join
    # margin): never in round 2, however fast they load (the earlier note: `@3` joined 4).
    t = late_start_time(cfg, 3, 8)
    times = round_times(cfg, 3)
    assert t < round_times(cfg, 2).start
    for up in (t, t + 1, round_times(cfg, 2).commit_deadline, times.commit_deadline - 5.5):
        assert encoder_first_round(cfg, up, 3) == 3
    # Budget for loading 8 models and 8 registration proofs at once: over 2 rounds (83 s
    # measured for 8 at once on a loaded 2-core machine).
    assert times.commit_deadline - 5.5 - t > max(2 * cfg.timing.round_seconds, 83)
    assert encoder_first_round(cfg, times.commit_deadline - 4.5, 3) == 4  # too late: the next
    assert encoder_first_round(cfg, t, None) < 3  # without the flag: an earlier round
    assert late_start_time(cfg, 3, 1) > t  # fewer at once: later
    # They wait until the encoders started before them are up, at most half a round.
    half = cfg.timing.round_seconds / 2
    assert not late_due(cfg, t, t - 1, True)
    assert late_due(cfg, t, t, True) and not late_due(cfg, t, t + half - 1, False)
    assert late_due(cfg, t, t + half, False)
    # Even started half a round late they have 1.5 rounds to load before round 3's commit.
    assert times.commit_deadline - 5.5 - (t + half) > 1.5 * cfg.timing.round_seconds


def test_emit_compose_names_the_seed_kinds_keys_in_the_genesis(tmp_path: Path) -> None:
    from dlnet.node.keyfile import read_key
    from dlnet.node.testnet import TestnetPlan, emit_compose
    from dlnet.protocol.config import parse_config

    plan = TestnetPlan(1, (("honest", 2), ("noise", 1)), 2, tmp_path, seeds=("honest",))
    cfg = emit_compose(plan, tmp_path, 60.0)
    keys = tmp_path / "testnet" / "keys"
    honest = sorted(read_key(keys / f"encoder-{i}-honest.key").public_key for i in (0, 1))
    assert cfg.seed_encoders == tuple(honest)
    assert parse_config((tmp_path / "testnet" / "network.toml").read_text()) == cfg
