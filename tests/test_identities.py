"""Several encoder identities in one process: the encoders file, `dlnet run`'s key options and
their one-line errors, and how `dlnet testnet` groups encoders into processes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from test_cli import dlnet, one_line_error

from dlnet.node import testnet
from dlnet.node.identities import (
    MAX_IDENTITIES,
    EncoderIdentity,
    IdentityError,
    read_encoders_file,
    render_encoders_file,
)
from dlnet.node.models.kinds import generator
from dlnet.node.runtime import NodeOptions, encoder_identities, scaled_gossip
from dlnet.node.testnet import (
    BOOTSTRAP_MAX_PEERS,
    ENCODERS_PER_PROCESS,
    GROUP_ABOVE,
    REGISTRATION_SECONDS,
    REGISTRATION_SECONDS_PER_ENCODER,
    STARTUP_SECONDS,
    STARTUP_SECONDS_PER_ENCODER,
    StartupProbe,
    TestnetPlan,
    encoder_identity,
    encoder_names,
    encoder_processes,
    probe_startup,
    startup_seconds,
)
from dlnet.node.transport import GossipParams
from dlnet.protocol.params import DEFAULT_DIFFICULTY, RegistrationParams

GOOD = """
[[encoder]]
key = "keys/a.key"
model = "dlnet.node.models.kinds:honest"
model_options = { seed = "3" }

[[encoder]]
key = "keys/b.key"
behaviour = "fabricated@0.2"
first_round = 4
"""


def test_encoders_file_is_read_relative_to_itself(tmp_path: Path) -> None:
    path = tmp_path / "enc.toml"
    path.write_text(GOOD)
    a, b = read_encoders_file(path)
    assert a.key_path == tmp_path.resolve() / "keys" / "a.key"
    assert (a.model, dict(a.model_options), a.behaviour, a.first_round) == (
        "dlnet.node.models.kinds:honest",
        {"seed": "3"},
        "honest",
        None,
    )
    assert (b.model, b.behaviour, b.first_round) == (None, "fabricated@0.2", 4)
    # Written back and read again, the same identities.
    again = tmp_path / "again.toml"
    again.write_text(render_encoders_file([a, b]))
    assert read_encoders_file(again) == (a, b)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "[[encoder]]"),
        ("not toml [", "not valid TOML"),
        ('[[encoder]]\nmodel = "m:f"\n', "no key"),
        ('[[encoder]]\nkey = "a"\ncolour = "red"\n', "unknown field 'colour'"),
        ('[[encoder]]\nkey = "a"\nbehaviour = "sneaky"\n', "unknown encoder behaviour"),
        ('[[encoder]]\nkey = "a"\nfirst_round = 0\n', "first_round"),
        ('[[encoder]]\nkey = "a"\nmodel_options = { seed = 3 }\n', "model_options"),
        ('[[encoder]]\nkey = "a"\n[[encoder]]\nkey = "./a"\n', "named twice"),
        ('key = "a"\n', "[[encoder]]"),
    ],
)
def test_bad_encoders_files(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "enc.toml"
    path.write_text(text)
    with pytest.raises(IdentityError) as err:
        read_encoders_file(path)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_too_many_identities_for_one_process(tmp_path: Path) -> None:
    path = tmp_path / "enc.toml"
    many = [EncoderIdentity(Path(f"k{i}.key")) for i in range(MAX_IDENTITIES + 1)]
    path.write_text(render_encoders_file(many))
    with pytest.raises(IdentityError, match="at most"):
        read_encoders_file(path)


def test_single_encoder_options_make_one_identity(tmp_path: Path) -> None:
    opts = NodeOptions(
        tmp_path / "n.toml",
        tmp_path,
        frozenset({"encoder"}),
        key_path=tmp_path / "k",
        model="m:f",
        behaviour="replay",
        first_round=2,
    )
    (only,) = encoder_identities(opts)
    assert (only.key_path, only.model, only.behaviour, only.first_round) == (
        tmp_path / "k",
        "m:f",
        "replay",
        2,
    )
    relay = NodeOptions(tmp_path / "n.toml", tmp_path)
    assert encoder_identities(relay) == ()


def test_publish_budget_grows_with_the_identities() -> None:
    base = GossipParams()
    assert scaled_gossip(base, 1) is base
    eight = scaled_gossip(base, 8)
    assert eight.publish_rate == 8 * base.publish_rate
    assert eight.publish_burst == 8 * base.publish_burst


def _cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    done = dlnet(capsys, *argv)
    one_line_error(done)
    return done.err.strip()


def test_run_key_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, data = str(tmp_path / "n.toml"), str(tmp_path / "d")
    base = ("run", "--config", cfg, "--data-dir", data)
    line = _cli_error(capsys, *base, "--role", "validator", "--key", "a", "--key", "b")
    assert "--key" in line and "encoder-only" in line
    line = _cli_error(capsys, *base, "--role", "encoder", "--key", "a", "--key", "a")
    assert "named twice" in line
    enc = tmp_path / "enc.toml"
    enc.write_text(GOOD)
    line = _cli_error(capsys, *base, "--encoders-file", str(enc))
    assert "--role encoder" in line
    line = _cli_error(capsys, *base, "--role", "encoder", "--encoders-file", str(enc), "--key", "a")
    assert "validator's key" in line
    missing = str(tmp_path / "nope.toml")
    line = _cli_error(capsys, *base, "--role", "encoder", "--encoders-file", missing)
    assert "cannot read" in line


def test_testnet_per_process_mistake(capsys: pytest.CaptureFixture[str]) -> None:
    line = _cli_error(capsys, "testnet", "--encoders-per-process", "0")
    assert "--encoders-per-process 0" in line


def test_testnet_registration_difficulty_mistake(capsys: pytest.CaptureFixture[str]) -> None:
    line = _cli_error(capsys, "testnet", "--registration-difficulty", "65")
    assert "--registration-difficulty 65" in line and "0..64" in line


def test_a_named_registration_difficulty_is_the_genesis_and_shortens_the_start() -> None:
    default = _plan((("honest", 6), ("noise", 1)))
    easy = _plan((("honest", 6), ("noise", 1)), difficulty=2)
    assert easy.registration_difficulty() == 2
    assert _plan((("noise", 100),), difficulty=6).registration_difficulty() == 6
    # 4 steps easier: each proof costs 1/16 of the default's, and the allowance follows
    saved = (1 - 1 / 16) * REGISTRATION_SECONDS_PER_ENCODER * 7
    assert startup_seconds(default) - startup_seconds(easy) == pytest.approx(saved)


def _plan(encoders: tuple[tuple[str, int], ...], **kw: object) -> TestnetPlan:
    return TestnetPlan(3, encoders, 2, Path("out"), **kw)  # type: ignore[arg-type]


def test_small_testnets_keep_one_encoder_per_process() -> None:
    plan = _plan((("honest", 6), ("noise", 1), ("copycat", 1)))
    groups = encoder_processes(plan)
    assert [g.name for g in groups] == [name for name, _, _ in encoder_names(plan)]
    assert all(len(g.members) == 1 for g in groups)
    assert plan.registration_difficulty() == DEFAULT_DIFFICULTY
    assert plan.hub_max_peers(len(groups)) == BOOTSTRAP_MAX_PEERS
    # The default testnet's start-up allowance is what it was before grouping.
    per_encoder = STARTUP_SECONDS_PER_ENCODER + REGISTRATION_SECONDS_PER_ENCODER
    assert startup_seconds(plan) == STARTUP_SECONDS + REGISTRATION_SECONDS + per_encoder * 8


def test_big_testnets_group_encoders_by_kind() -> None:
    plan = _plan((("honest", 6), ("noise", 94)))
    groups = encoder_processes(plan)
    assert len(groups) == 1 + math.ceil(94 / ENCODERS_PER_PROCESS)
    members = [m for g in groups for m in g.members]
    assert sorted(members) == sorted((name, i) for name, _, i in encoder_names(plan))
    assert all(1 <= len(g.members) <= ENCODERS_PER_PROCESS for g in groups)
    names = dict(((name, i), kind) for name, kind, i in encoder_names(plan))
    assert all(names[m] == g.kind for g in groups for m in g.members)
    assert len({g.name for g in groups}) == len(groups)
    # Every proof together costs about what GROUP_ABOVE encoders at the default cost.
    d = plan.registration_difficulty()
    assert 0 < d < DEFAULT_DIFFICULTY
    assert 100 * 2**d <= GROUP_ABOVE * 2**DEFAULT_DIFFICULTY < 100 * 2 ** (d + 1)
    RegistrationParams(difficulty=d)  # a valid genesis value
    assert plan.hub_max_peers(len(groups)) >= 3 + len(groups)
    assert startup_seconds(plan) < 200  # not 100 x 5.5 s: processes and cheap proofs
    one_each = _plan((("noise", 30),), per_process=1)
    assert len(encoder_processes(one_each)) == 30
    assert one_each.hub_max_peers(30) >= 33


def test_late_groups_stay_apart_and_keep_their_round() -> None:
    plan = _plan((("noise", 10), ("noise", 10)), start_rounds=(1, 3))
    groups = encoder_processes(plan)
    assert {g.start_round for g in groups} == {1, 3}
    assert sum(len(g.members) for g in groups if g.start_round == 3) == 10


def test_testnet_identity_matches_a_process_of_its_own(tmp_path: Path) -> None:
    ident = encoder_identity("noisy@0.5", 7, tmp_path / "k", 3)
    assert ident.model == "dlnet.node.models.kinds:noisy"
    assert dict(ident.model_options) == {"seed": "7", "level": "0.5"}
    assert (ident.behaviour, ident.first_round) == ("honest", 3)
    fab = encoder_identity("fabricated@0.2", 1, tmp_path / "k", 1)
    assert (fab.behaviour, fab.first_round) == ("fabricated@0.2", None)
    custom = encoder_identity("py:mod:make", 2, tmp_path / "k", 1)
    assert (custom.model, dict(custom.model_options)) == ("mod:make", {})


class CountingNative:
    """Stands in for MiniLM (whose loading, ~10 s, tests/test_models.py pays): a pseudo-random
    native vector per text, and a count of the forward passes."""

    native_dim = 384

    def __init__(self, **options: object) -> None:
        self.options = options
        self.passes = 0

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        self.passes += 1
        rows = [generator(b"test", 0, t.encode()).standard_normal(self.native_dim) for t in texts]
        return np.array(rows, dtype=np.float32)


def test_minilm_kinds_share_one_native_model_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from dlnet.node.models import kinds

    monkeypatch.setattr(kinds, "MiniLM", CountingNative)
    monkeypatch.setattr(kinds, "_SHARED", {})
    a = kinds.honest(64, b"\0" * 32, seed=1)
    b = kinds.honest(64, b"\0" * 32, seed=2)
    c = kinds.noisy(64, b"\0" * 32, seed=3)
    assert a.native is b.native  # one set of weights
    assert c.native.base is a.native  # type: ignore[attr-defined]
    assert kinds.truncated(64, b"\0" * 32, seed=4).native is not a.native  # another variant
    base = a.native.base  # type: ignore[attr-defined]
    assert isinstance(base, CountingNative) and base.options == {"threads": 1}
    texts = ["a red fox", "the quiet river bank"]
    first = a.native.embed_native(texts)
    assert np.array_equal(b.native.embed_native(texts), first)  # the same round's texts: once
    assert base.passes == 1
    other = a.native.embed_native(["something else entirely"])
    assert base.passes == 2
    assert other.shape == (1, first.shape[1]) and not np.allclose(other[0], first[0])
    fresh = base.embed_native(texts)
    assert np.allclose(a.native.embed_native(texts), fresh, atol=1e-4)
    assert not np.allclose(a.embed(texts), b.embed(texts))  # private maps still differ


def test_the_measured_allowance_is_the_work_of_round_one_over_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(testnet, "usable_cores", lambda: 2)
    plan = _plan((("honest", 6), ("noise", 1)), difficulty=4)
    probe = StartupProbe(load_seconds=3.0, proof_seconds=0.05)
    proof = 16 * 0.05
    work = 7 * 3.0 + 7 * proof  # 7 processes load a model, 7 identities prove
    expected = testnet.PROBED_BASE_SECONDS + testnet.PROBED_CONTENTION * work / 2
    assert startup_seconds(plan, probe) == pytest.approx(expected + testnet.PROOF_TAIL * proof)
    # A slower machine (or a busier one) gets a longer allowance; so does a harder proof.
    slow = StartupProbe(load_seconds=6.0, proof_seconds=0.1)
    assert startup_seconds(plan, slow) > startup_seconds(plan, probe)
    hard = _plan((("honest", 6), ("noise", 1)), difficulty=6)
    assert startup_seconds(hard, probe) > startup_seconds(plan, probe)
    # Four cores share the work; more than PROBE_MAX_CORES do not shorten it further.
    monkeypatch.setattr(testnet, "usable_cores", lambda: 64)
    four = testnet.PROBED_BASE_SECONDS + testnet.PROBED_CONTENTION * work / 4
    assert startup_seconds(plan, probe) == pytest.approx(four + testnet.PROOF_TAIL * proof)


def test_usable_cores_without_an_affinity_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no sched_getaffinity: the CPU count stands in."""
    assert testnet.usable_cores() >= 1
    monkeypatch.delattr(testnet.os, "sched_getaffinity")
    monkeypatch.setattr(testnet.os, "cpu_count", lambda: 6)
    assert testnet.usable_cores() == 6
    monkeypatch.setattr(testnet.os, "cpu_count", lambda: None)
    assert testnet.usable_cores() == 1


@pytest.mark.xdist_group("minilm")
def test_the_start_up_probe_times_a_model_load_and_a_proof_evaluation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe = probe_startup()
    assert probe is not None
    assert 0.1 < probe.load_seconds < testnet.PROBE_TIMEOUT
    assert 0 < probe.proof_seconds < 5
    # A probe that fails leaves the fixed allowance in place.
    monkeypatch.setattr(testnet, "PROBE_CODE", "raise SystemExit(3)")
    assert probe_startup() is None
    monkeypatch.setattr(testnet, "PROBE_CODE", "print('not numbers')")
    assert probe_startup() is None
