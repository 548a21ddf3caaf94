"""A 24-encoder testnet on real processes, its encoders grouped to OS processes
(ENCODERS_PER_PROCESS): every encoder identity commits as a separate encoder, and no round is
reported finalized unless a certificate the test checks itself (against the genesis alone)
proves a non-empty result built on attestations of more than 2/3 of the stake. Run it under
the machine lock: ``flock /work/testnet.lock python -m pytest tests/test_scale_e2e.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from netutil import finish, start_testnet

from dlnet.node.report import round_ok
from dlnet.node.store import Store
from dlnet.node.testnet import ENCODERS_PER_PROCESS
from dlnet.protocol.config import NetworkConfig, parse_config
from dlnet.protocol.consensus import finality_reached, verify_certificate
from dlnet.protocol.wire import Certificate, Kind, decode

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(900)]

ENCODERS = 24


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], int]:
    out = tmp_path_factory.mktemp("scale")
    spec = f"honest:6,noise:{ENCODERS - 6}"
    driver = start_testnet(out, "--encoders", spec, "--validators", "3", "--rounds", "2")
    code = finish(driver, out, 800)
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return out, report, code


def _certificates(out: Path, cfg: NetworkConfig, rnd: int) -> list[Certificate]:
    """Every certificate of ``rnd`` any validator stored, decoded strictly (not verified)."""
    found = []
    for db in sorted((out / "nodes").glob("validator-*/node.sqlite")):
        store = Store.open(db)
        try:
            for r, data in store.certificates(rnd, rnd):
                cert = decode(data, cfg, Kind.CERTIFICATE)
                assert isinstance(cert, Certificate) and r == rnd
                found.append(cert)
        finally:
            store.close()
    return found


def test_encoders_share_processes_and_each_commits(
    run: tuple[Path, dict[str, Any], int],
) -> None:
    _, report, _ = run
    assert len(report["encoders"]) == ENCODERS
    groups = [p for p in report["processes"].values() if p["role"] == "encoder"]
    assert len(groups) < ENCODERS
    assert all(1 <= len(p["encoders"]) <= ENCODERS_PER_PROCESS for p in groups)
    assert sum(len(p["encoders"]) for p in groups) == ENCODERS
    committed = {
        enc for r in report["rounds"] for v in r["validators"].values() for enc in v["reveals"]
    }
    assert committed == set(report["encoders"])


def test_no_round_is_reported_final_without_a_full_certificate(
    run: tuple[Path, dict[str, Any], int],
) -> None:
    out, report, code = run
    cfg = parse_config((out / "network.toml").read_text())
    for r in report["rounds"]:
        rnd = r["round"]
        proofs = []
        for cert in _certificates(out, cfg, rnd):
            try:
                verify_certificate(cfg, cert)
            except Exception:
                continue
            proofs.append(cert)
        if not r["finalized"]:
            assert not proofs, rnd  # the report must not miss a proven round either
            continue
        assert proofs, f"round {rnd} reported finalized with no certificate that verifies"
        for cert in proofs:
            res = cert.result
            assert res.encoders, f"round {rnd}: finalized with an empty result"
            attested = sum(cfg.stake_of(v) for v, _ in res.agreement)
            assert finality_reached(cfg, attested), f"round {rnd}: too few attestations"
        assert r["ranking"] and r["result_digest"] in {
            v["result_digest"] for v in r["validators"].values()
        }
    assert (code == 0) == all(round_ok(r) for r in report["rounds"]), code
