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
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from netutil import kill_pid, wait_json

from dlnet.node.store import Store
from dlnet.protocol.config import parse_config
from dlnet.protocol.rounds import round_times

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(400)]

ROUND_SECONDS = 20
# The finalize loop runs this long past a round's finality deadline (validator.FINALITY_GRACE).
SETTLE = 4.0 + 3.0


def dlnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlnet.node", *args], capture_output=True, text=True, timeout=60
    )


class Net:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> dict[str, Any]:
        data_dir = self.root / name
        data_dir.mkdir()
        log = open(data_dir / "node.log", "wb")  # noqa: SIM115 - the process owns it
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dlnet.node",
                    "run",
                    "--config",
                    str(self.root / "network.toml"),
                    "--data-dir",
                    str(data_dir),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        )
        return wait_json(data_dir / "node.json", 60)

    def stop(self) -> None:
        for p in self.procs:
            kill_pid(p.pid)
            p.wait()


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
    keys = []
    for name in ("v0", "v1", "v2", "e0", "e1"):
        done = dlnet("keygen", "--out", str(tmp_path / f"{name}.key"))
        assert done.returncode == 0, done.stderr
        keys.append(done.stdout.strip())
    done = dlnet(
        "init",
        *(f"--validator=@{tmp_path / v}.key:100" for v in ("v0", "v1", "v2")),
        "--out",
        str(tmp_path / "network.toml"),
        "--genesis-in",
        "25",
        "--round-seconds",
        str(ROUND_SECONDS),
    )
    assert done.returncode == 0, done.stderr
    cfg = parse_config((tmp_path / "network.toml").read_text())
    net = Net(tmp_path)
    try:
        boot = net.start("v0", "--role", "validator", "--key", str(tmp_path / "v0.key"))
        addr = ["--bootstrap", boot["addrs"][0]]
        net.start("v1", "--role", "validator", "--key", str(tmp_path / "v1.key"), *addr)
        for i in range(2):
            net.start(
                f"e{i}",
                "--role",
                "encoder",
                "--key",
                str(tmp_path / f"e{i}.key"),
                "--model",
                "dlnet.node.models.kinds:noise",
                "--model-option",
                f"seed={i}",
                *addr,
            )
        sleep_until(round_times(cfg, 1).finality_deadline + SETTLE)
        early = {v: outcomes(tmp_path / v) for v in ("v0", "v1")}
        for v, held in early.items():
            assert 1 in held, (v, held)
            finalized, digest = held[1]
            assert not finalized and digest is not None, (v, held[1])
        assert early["v0"][1] == early["v1"][1], "both computed the same result"
        status = dlnet("status", "--data-dir", str(tmp_path / "v0"))
        assert status.returncode == 0 and "1✗" in status.stdout, status.stdout
        assert f"addr      {boot['addrs'][0]}" in status.stdout, "what to pass to --bootstrap"
        refused = dlnet(
            "results",
            "--data-dir",
            str(tmp_path / "v0"),
            "--config",
            str(tmp_path / "network.toml"),
            "--round",
            "1",
        )
        assert refused.returncode == 2 and "no valid certificate" in refused.stderr

        net.start("v2", "--role", "validator", "--key", str(tmp_path / "v2.key"), *addr)
        joined = time.time()
        # The first round the late validator sees from its start.
        full = int((joined - cfg.genesis_time) // ROUND_SECONDS) + 1
        sleep_until(round_times(cfg, full).finality_deadline + SETTLE)
        for v in ("v0", "v1", "v2"):
            held = outcomes(tmp_path / v)
            assert held.get(1, (False, None))[0] is False, (v, held)
            assert held.get(full, (False, None))[0], (v, full, held)
        shown = dlnet(
            "results",
            "--data-dir",
            str(tmp_path / "v2"),
            "--config",
            str(tmp_path / "network.toml"),
            "--round",
            str(full),
            "--json",
        )
        assert shown.returncode == 0, shown.stderr
        res = json.loads(shown.stdout)
        assert sorted(res["signers"]) == sorted(keys[:3])
        assert {row["encoder"] for row in res["ranking"]} == set(keys[3:])
    finally:
        net.stop()
