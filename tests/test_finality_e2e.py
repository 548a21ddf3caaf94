"""Finality needs MORE than 2/3 of the stake, with real processes over 127.0.0.1.

Done the way an operator does it (`dlnet keygen`, `dlnet init`, `dlnet run`): three
validators of equal stake in the genesis, only two of them running at first. Two thirds is
not more than two thirds, so the early rounds must be recorded as not finalized — by both
running validators, over the same result digest, with no certificate. Then the third
validator starts late: it must not finalize those rounds after the fact, and the first round it
takes part in from the start finalizes with all three signatures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from netutil import Nodes, dlnet

from dlnet.node.store import Store
from dlnet.protocol.config import parse_config
from dlnet.protocol.rounds import round_times

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(400)]

ROUND_SECONDS = 20
# The finalize loop runs this long past a round's finality deadline (validator.FINALITY_GRACE).
SETTLE = 4.0 + 3.0


def outcomes(data_dir: Path) -> dict[int, tuple[bool, bytes | None]]:
    store = Store.open(data_dir / "node.sqlite")
    try:
        return {r: (fin, d) for r, fin, d in store.round_outcomes()}
    finally:
        store.close()


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def test_two_thirds_is_not_final_and_a_late_validator_cannot_change_that(
    tmp_path: Path,
) -> None:
    keys = [
        dlnet("keygen", "--out", f"{name}.key", cwd=tmp_path).stdout.strip()
        for name in ("v0", "v1", "v2", "e0", "e1")
    ]
    dlnet(
        "init",
        *(f"--validator=@{v}.key:100" for v in ("v0", "v1", "v2")),
        *("--out", "network.toml", "--genesis-in", "25"),
        *("--round-seconds", str(ROUND_SECONDS)),
        cwd=tmp_path,
    )
    cfg = parse_config((tmp_path / "network.toml").read_text())
    nodes = Nodes(tmp_path)
    try:
        boot = nodes.start("v0", "--role", "validator", "--key", "v0.key")
        addr = ("--bootstrap", boot["addrs"][0])
        nodes.start("v1", "--role", "validator", "--key", "v1.key", *addr)
        for i in range(2):
            nodes.start(
                f"e{i}",
                *("--role", "encoder", "--key", f"e{i}.key", *addr),
                *("--model", "dlnet.node.models.kinds:noise", "--model-option", f"seed={i}"),
            )
        sleep_until(round_times(cfg, 1).finality_deadline + SETTLE)
        early = {v: outcomes(tmp_path / v) for v in ("v0", "v1")}
        for v, held in early.items():
            assert 1 in held, (v, held, nodes.logs())
            finalized, _ = held[1]
            assert not finalized, (v, held[1])
        # Attestations from 2/3 of the stake are too few: no result to sign (PROTOCOL.md §4).
        assert early["v0"][1] == early["v1"][1] == (False, None), early
        status = dlnet("status", "--data-dir", "v0", cwd=tmp_path).stdout
        assert "1✗" in status, status
        assert f"addr      {boot['addrs'][0]}" in status, "what to pass to --bootstrap"
        refused = dlnet(
            *("results", "--data-dir", "v0", "--config", "network.toml", "--round", "1"),
            cwd=tmp_path,
            expect=2,
        )
        assert "no valid certificate" in refused.stderr

        nodes.start("v2", "--role", "validator", "--key", "v2.key", *addr)
        joined = time.time()
        # The first round the late validator sees from its start.
        full = int((joined - cfg.genesis_time) // ROUND_SECONDS) + 1
        sleep_until(round_times(cfg, full).finality_deadline + SETTLE)
        for v in ("v0", "v1", "v2"):
            held = outcomes(tmp_path / v)
            assert held.get(1, (False, None))[0] is False, (v, held)
            assert held.get(full, (False, None))[0], (v, full, held, nodes.logs())
        shown = dlnet(
            *("results", "--data-dir", "v2", "--config", "network.toml"),
            *("--round", str(full), "--json"),
            cwd=tmp_path,
        )
        res = json.loads(shown.stdout)
        assert sorted(res["signers"]) == sorted(keys[:3])
        assert {row["encoder"] for row in res["ranking"]} == set(keys[3:])
    finally:
        nodes.kill()
