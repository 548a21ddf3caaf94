"""The validity study on its small configuration: the network's label-free score puts every
cheat below every honest encoder and agrees in sign with supervised quality."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "validity.py"


@pytest.fixture(scope="module")
def validity() -> Iterator[ModuleType]:
    """scripts/validity.py as a module (it is a script, not part of the package)."""
    name = "dlnet_validity_script"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_small_study(validity: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The study's command line, ``validity.py --small --json PATH``, run in this process
    (its own interpreter only added start-up and imports). BLAS on one thread, as a
    validator scores: in a test process where torch has run, its pool slows scoring's SVDs."""
    out = tmp_path / "validity.json"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--small", "--json", str(out)])
    with threadpool_limits(limits=1):
        assert validity.main() == 0
    res = json.loads(out.read_text())
    honest = [r["score"] for r in res["rows"] if r["group"] == "honest"]
    cheats = {r["encoder"]: r["score"] for r in res["rows"] if r["group"] == "cheat"}
    assert len(honest) >= 4 and len(cheats) == 9
    for name, score in cheats.items():
        assert score < min(honest), (name, score, min(honest))
    # The full mixed into the halves: an honest residual and a smaller DL, below the same model
    # encoded honestly (its probes are the model's own: a probe has no full to leak).
    (leaky,) = [r["score"] for r in res["rows"] if r["group"] == "leak"]
    same_model = [r["score"] for r in res["rows"] if r["encoder"].startswith("honest-")]
    assert 0.0 < leaky < min(same_model)
    # Every encoder was probed: the honest ones link a text's halves well above chance.
    assert all(r["probe"] > 0.4 for r in res["rows"] if r["group"] == "honest")
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
    # Last round's texts, embedded by the honest model: the text cut takes nearly every cell.
    assert by["cheat-replay"]["cut"] > 0.8 and by["honest-0"]["cut"] == 0.0
    assert by["honest-0"]["heldout"] > by["cheat-random"]["heldout"] + 0.2
    # Word similarity, held out too, is measured and summarised apart.
    assert by["honest-0"]["words"] > by["cheat-random"]["words"] + 0.2
    assert len(by["honest-0"]["words_boot"]) == 50 and "spearman_score_vs_quality" in res["words"]


def test_bootstrap_spearman_is_spearmanr_per_resample(validity: ModuleType) -> None:
    """The study's vectorised Spearman (all bootstrap resamples at once) is scipy's
    ``spearmanr`` of each resample, with ties, and 0 where the similarity is constant."""
    rng = np.random.default_rng(0)
    for n in (5, 40):
        a, b = rng.standard_normal(n), np.round(rng.standard_normal(n), 1)  # b has ties
        boot = rng.integers(0, n, (30, n))
        got = validity._spearman_rows(a[boot], b[boot])
        want = [validity._spearman(a[i], b[i]) for i in boot]
        assert np.allclose(got, want, rtol=0, atol=1e-12)
    flat = np.zeros((2, 6))
    assert validity._spearman_rows(flat, rng.standard_normal((2, 6))).tolist() == [0.0, 0.0]


def test_supervised_hits_is_out_of_fold_lr_and_knn(validity: ModuleType) -> None:
    """Issue 14's quality per item: half a point each for logistic regression and 10-NN, both
    predicting it from the other folds and seeing directions only. Separable classes score 1
    everywhere; labels that are independent of the vectors score near chance (in-sample they
    would score far above it); labels carried by the vectors' length alone score near chance
    too (on raw vectors logistic regression reads them perfectly)."""
    rng = np.random.default_rng(0)
    labels = ["a"] * 40 + ["b"] * 40
    centres = np.repeat(np.eye(2, 16) * 10, 40, axis=0)
    separable = (centres + rng.standard_normal((80, 16))).astype(np.float32)
    assert validity.supervised_hits(separable, labels).tolist() == [1.0] * 80
    noise = rng.standard_normal((80, 200)).astype(np.float32)
    shuffled = list(rng.permutation(labels))
    chance = validity.supervised_hits(noise, shuffled)
    assert set(chance.tolist()) <= {0.0, 0.5, 1.0} and chance.mean() < 0.65
    directions = 3.0 + rng.standard_normal((80, 16))
    length = (directions * np.where(np.array(labels) == "a", 1.0, 10.0)[:, None]).astype(np.float32)
    assert validity.supervised_hits(length, labels).mean() < 0.65
