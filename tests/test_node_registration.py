"""An encoder's registration proof at start: solved once, kept in the data dir, re-checked."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from dlnet.node import runtime
from dlnet.node.runtime import REGISTRATION_FILE, registration_nonce
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.registration import valid

KEY = bytes([5]) * 32


def config(difficulty: int) -> NetworkConfig:
    return default_config(
        [ValidatorEntry(bytes([1]) * 32, 1)],
        1_800_000_000,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=difficulty),
    )


def test_the_proof_is_solved_saved_and_reused_while_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(3)
    ticks = iter(range(0, 10_000, 3))  # a clock 3 s further at every look: progress is logged
    monkeypatch.setattr(runtime.time, "monotonic", lambda: float(next(ticks)))
    with caplog.at_level(logging.INFO, logger="dlnet"):
        nonce = registration_nonce(cfg, KEY, tmp_path / "data")
    assert valid(cfg.network_id, KEY, nonce, 3)
    saved = json.loads((tmp_path / "data" / REGISTRATION_FILE).read_text())
    assert saved == {"key": KEY.hex(), "network_id": cfg.network_id.hex(), "nonce": nonce}
    assert any("registration proof: nonce" in r.getMessage() for r in caplog.records)
    if nonce > 0:  # more than one evaluation: progress lines (every 2 s of the clock)
        assert any("evaluations in" in r.getMessage() for r in caplog.records)

    def never(*_a: object, **_k: object) -> int:
        raise AssertionError("solved again")

    monkeypatch.setattr(runtime, "solve", never)
    assert registration_nonce(cfg, KEY, tmp_path / "data") == nonce  # reused, not solved
    # Another key, a corrupt file, or a harder network: solved again.
    for change in ("key", "corrupt", "difficulty"):
        monkeypatch.setattr(runtime, "solve", lambda *a, **k: 424242)
        (tmp_path / "data" / REGISTRATION_FILE).write_text(json.dumps(saved))
        key, c = KEY, cfg
        if change == "key":
            key = bytes([6]) * 32
        elif change == "corrupt":
            (tmp_path / "data" / REGISTRATION_FILE).write_text("{not json")
        else:
            c = dataclasses.replace(cfg, registration=RegistrationParams(difficulty=40))
        assert registration_nonce(c, key, tmp_path / "data") == 424242, change


def test_difficulty_zero_needs_no_work(tmp_path: Path) -> None:
    assert registration_nonce(config(0), KEY, tmp_path) == 0
