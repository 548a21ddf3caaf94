"""The validity study on its small configuration: the network's label-free score puts every
cheat below every honest encoder and agrees in sign with supervised quality."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "validity.py"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_small_study(tmp_path: Path) -> None:
    out = tmp_path / "validity.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    honest = [r["score"] for r in res["rows"] if r["group"] == "honest"]
    cheats = {r["encoder"]: r["score"] for r in res["rows"] if r["group"] == "cheat"}
    assert len(honest) >= 4 and len(cheats) == 8
    for name, score in cheats.items():
        assert score < min(honest), (name, score, min(honest))
    assert res["spearman_score_vs_quality"] > 0
    assert res["auroc_honest_vs_cheat"] == 1.0
    # Quality carries its paired bootstrap: resamples centred on it, with a spread.
    for r in res["rows"]:
        boot = r["quality_boot"]
        assert len(boot) == 50
        assert min(boot) <= r["quality"] + 0.01 and max(boot) >= r["quality"] - 0.01
    spread = [max(r["quality_boot"]) - min(r["quality_boot"]) for r in res["rows"]]
    assert all(0.0 < x < 0.2 for x in spread)
    # The held-out side (sets never tuned on) is measured and summarised on its own.
    held = res["heldout"]
    assert held["auroc_honest_vs_cheat"] == 1.0 and held["spearman_score_vs_quality"] > 0
    for r in res["rows"]:
        assert len(r["heldout_boot"]) == 50 and 0.0 <= r["heldout"] <= 1.0
    by = {r["encoder"]: r for r in res["rows"]}
    assert by["honest-0"]["heldout"] > by["cheat-random"]["heldout"] + 0.2
