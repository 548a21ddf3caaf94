"""The dashboard page, rendered by headless Chromium against a real node set (one validator,
an honest and a noise encoder) once a round is final: what a person opening /dashboard sees.
Needs Debian's chromium (`apt-get install chromium`); skipped where /usr/bin/chromium is absent.
Set DLNET_DASHBOARD_PNG=PATH to also keep the screenshot (docs/dashboard.png is made so)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from netutil import Nodes, dlnet, wait_json
from test_api_e2e import FINAL_WITHIN, GENESIS_IN, ROUND_SECONDS, wait_final_round

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.network,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs headless Chromium: apt-get install chromium"
    ),
]


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with nothing fetched but the URL given (no updates, sync, QUIC)."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_dashboard_shows_the_final_round(tmp_path: Path, nodes: Nodes) -> None:
    pubkeys = {k: dlnet("keygen", "--out", f"{k}.key", cwd=tmp_path).stdout.strip() for k in "vbc"}
    dlnet(
        *("init", "--validator", "@v.key:100", "--out", "network.toml"),
        *("--genesis-in", str(GENESIS_IN), "--round-seconds", str(ROUND_SECONDS)),
        cwd=tmp_path,
    )
    a = nodes.start("a", "--key", "v.key", "--role", "validator", "--api", "127.0.0.1:0")
    for name, kind in (("b", "honest"), ("c", "noise")):
        nodes.start(
            name,
            *("--key", f"{name}.key", "--role", "encoder", "--bootstrap", a["addrs"][0]),
            *("--api", "127.0.0.1:0", "--model", f"dlnet.node.models.kinds:{kind}"),
        )
    url = wait_json(tmp_path / "a" / "node.json", 5)["api"]
    encoders = {pubkeys["b"], pubkeys["c"]}
    try:
        result = wait_final_round(url, encoders, time.time() + FINAL_WITHIN)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{nodes.logs()}") from None
    rnd = result["round"]

    shown = chromium(tmp_path, "--dump-dom", f"{url}/dashboard")
    dom = shown.stdout
    assert 'data-loaded="1"' in dom, shown.stderr[-2000:]
    assert re.search(rf'data-round="{rnd}" data-state="finalized"', dom), dom
    for row in result["ranking"]:
        enc = row["encoder"]
        assert f'data-encoder="{enc}"' in dom
        assert f"{row['score']:.4f}" in dom
    # score history lines (one per encoder) and one agreement bar for the one validator
    assert dom.count('class="score-line"') == len(encoders)
    assert dom.count('class="agreement-bar"') == 1
    # the validator assembled the certificate itself: its finality latency is known and plotted
    assert re.search(rf'class="latency-bar"[^>]*data-round="{rnd}"', dom), dom
    assert 'data-counter="accepted:commit"' in dom
    assert "last finalized" in dom

    png = tmp_path / "dashboard.png"
    shot = chromium(tmp_path, "--window-size=1200,1000", f"--screenshot={png}", f"{url}/dashboard")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot.stderr[-2000:]
    keep = os.environ.get("DLNET_DASHBOARD_PNG")
    if keep:
        shutil.copyfile(png, keep)
