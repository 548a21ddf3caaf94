"""Alignment into the network's space (`dlnet align`, `dlnet run --align`): the fits, the map
file, the certified pairs read from a node's data dir (forged certificates refused), and the
operator's mistakes."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from test_cli import dlnet, one_line_error

from dlnet.data import shipped_path
from dlnet.node.align import certificates, certified_pairs, fit_alignment
from dlnet.node.models import ProjectedModel
from dlnet.node.models.aligned import (
    AlignedModel,
    AlignError,
    AlignMap,
    fit_map,
    load_map,
    save_map,
)
from dlnet.node.store import Store
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config, dump_config
from dlnet.protocol.consensus import compute_result
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.masks import split_units
from dlnet.protocol.result import RoundResult, result_digest
from dlnet.protocol.wire import Certificate, encode, sign_attestation, sign_vote

NATIVE = 16
ALIGN_DIM = 64


class WordSum:
    """A tiny native model: the sum of a pseudo-random 16-d vector per word, squashed per text
    (so it is not additive)."""

    native_dim = NATIVE

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), NATIVE), dtype=np.float32)
        for i, text in enumerate(texts):
            acc = np.zeros(NATIVE)
            for w in split_units(text):
                seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "big")
                acc += np.random.default_rng(seed).standard_normal(NATIVE)
            out[i] = np.tanh(acc / 3.0) * 10.0
        return out


def true_map(dim: int) -> NDArray[np.float64]:
    """The network's space as seen from WordSum: a fixed linear map (what a fit must find)."""
    return np.random.default_rng(7).standard_normal((NATIVE, dim))


def synthetic(n: int, noise: float, seed: int = 0) -> tuple[NDArray[np.float64], ...]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, NATIVE))
    w = true_map(64)
    y = x @ w + noise * rng.standard_normal((n, 64)) * np.linalg.norm(w) / 8
    return x, y


def test_both_fits_recover_a_linear_map_deterministically() -> None:
    x, y = synthetic(200, 0.01)
    for method in ("ridge", "procrustes", "auto"):
        kept, w1, held = fit_map(x, y, method)
        _, w2, _ = fit_map(x, y, method)
        assert w1.dtype == np.float32 and w1.shape == (NATIVE, 64)
        assert w1.tobytes() == w2.tobytes()  # deterministic
        assert held[kept] == max(held.values())
    _, _, held = fit_map(x, y)
    assert set(held) == {"ridge", "procrustes"}
    # Ridge fits any linear map; Procrustes only a rotation and a scale, which this is not.
    assert held["ridge"] > 0.99
    assert held["procrustes"] < held["ridge"]


def test_procrustes_keeps_geometry_and_finds_a_rotation() -> None:
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((64, NATIVE)))
    x = rng.standard_normal((40, NATIVE))
    y = 5.0 * x @ q.T
    kept, w, held = fit_map(x, y, "procrustes")
    assert kept == "procrustes" and held["procrustes"] > 0.999
    # A scaled rotation: every pairwise cosine of the inputs survives the map.
    a, b = x @ w.astype(np.float64), x
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    assert np.allclose(ua @ ua.T, ub @ ub.T, atol=1e-5)


def test_too_few_pairs_is_one_line() -> None:
    x, y = synthetic(5, 0.0)
    with pytest.raises(AlignError, match="at least 10"):
        fit_map(x, y)


def test_a_linear_map_keeps_the_composition_residual_linear() -> None:
    """No intercept: E(full) - E(mask) - E(inverse) of the aligned model is the native residual
    mapped, so what validators measure is the model's own composition."""
    m = AlignMap(true_map(64).astype(np.float32), "ridge", bytes(32))
    native = WordSum()
    model = AlignedModel(ProjectedModel(native, 64, bytes(32)), m)
    texts = ["a b c d", "a b", "c d"]
    e = model.embed(texts).astype(np.float64)
    n = native.embed_native(texts).astype(np.float64)
    assert np.allclose(e[0] - e[1] - e[2], (n[0] - n[1] - n[2]) @ m.matrix, rtol=1e-4, atol=1e-3)
    assert model.embed([]).shape == (0, 64)


def test_map_file_round_trip_and_refusals(tmp_path: Path) -> None:
    net = bytes(range(32))
    m = AlignMap(
        true_map(64).astype(np.float32), "procrustes", net, {"ridge": 0.5, "procrustes": 0.6}, 80
    )
    path = tmp_path / "map.npz"
    save_map(path, m)
    back = load_map(path, net, 64)
    assert back.matrix.tobytes() == m.matrix.tobytes()
    assert (back.method, back.heldout_cos, back.pairs) == ("procrustes", m.heldout_cos, 80)
    with pytest.raises(AlignError, match="fitted for network"):
        load_map(path, bytes(32), 64)
    with pytest.raises(AlignError, match="maps into 64 dims"):
        load_map(path, net, 1024)
    with pytest.raises(AlignError, match="no such file"):
        load_map(tmp_path / "nope.npz", net, 64)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(AlignError, match="not a map"):
        load_map(tmp_path / "junk.npz", net, 64)
    with pytest.raises(AlignError, match="16-dim inputs"):
        AlignedModel(ProjectedModel(_Wide(), 64, bytes(32)), m)


class _Wide:
    native_dim = 8

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        return np.ones((len(texts), 8), dtype=np.float32)


def _corpus_config(validators: list[SigningKey]) -> NetworkConfig:
    sha = hashlib.sha256(shipped_path("corpus.txt").read_bytes()).digest()
    # dim 64, not the default 1024: what these tests check does not depend on the width, and
    # `dlnet align` with the 1024-d `noise` model spent ~16 s in 1024 x 1024 solves and SVDs.
    return default_config(
        [ValidatorEntry(k.public_key, 100) for k in validators],
        1_800_000_000,
        dataset_sha256=sha,
        dim=ALIGN_DIM,
    )


def _certificate(
    cfg: NetworkConfig,
    rnd: int,
    weighted: list[NDArray[np.float32]],
    signers: list[SigningKey],
    named: tuple[bytes, ...] = (),
) -> bytes:
    """A certificate over ``weighted``; ``named``: the shard text digests the result names."""
    encoders = sorted(SigningKey.from_seed(bytes([50 + i]) * 32).public_key for i in range(3))
    grid = np.array([[60000, 30000, 20000]] * cfg.shards_per_round, dtype="<u2")
    flags = np.zeros((cfg.shards_per_round, 3), dtype=np.uint8)
    atts = [
        sign_attestation(
            k, cfg.network_id, rnd, tuple(encoders), grid.tobytes(), flags.tobytes(), bytes(32)
        )
        for k in signers
    ]
    fulls = {
        (s, e): np.ones(cfg.dim, dtype=np.float32)
        for s in range(cfg.shards_per_round)
        for e in encoders
    }
    named = named or (bytes(32),) * cfg.shards_per_round
    result: RoundResult = compute_result(cfg, rnd, atts, fulls, texts=named)
    result = dataclasses.replace(
        result, weighted=tuple(w.astype("<f4").tobytes() for w in weighted)
    )
    digest = result_digest(result)
    votes = sorted(
        (k.public_key, sign_vote(k, cfg.network_id, rnd, digest).signature) for k in signers
    )
    return encode(Certificate(cfg.network_id, rnd, result, tuple(votes)))


@pytest.fixture
def certified_dir(tmp_path: Path) -> tuple[NetworkConfig, Path, tuple[str, ...]]:
    from dlnet.protocol.dataset import parse_dataset
    from dlnet.protocol.masks import round_tasks, text_digests

    validators = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    cfg = _corpus_config(validators)
    items = parse_dataset(shipped_path("corpus.txt").read_bytes(), "lines")
    native, w = WordSum(), true_map(cfg.dim)
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    store = Store.open(data_dir / "node.sqlite")
    for rnd in range(12):
        tasks = round_tasks(cfg, items, rnd)
        texts = [t.texts[0] for t in tasks]
        weighted = list((native.embed_native(texts).astype(np.float64) @ w).astype(np.float32))
        if rnd == 5:
            weighted[1] = np.zeros(cfg.dim, dtype=np.float32)  # nothing certified there
        named = text_digests(tasks)
        if rnd == 7:  # a shard that carried submitted texts names another text: left out
            named = (bytes(32), *named[1:])
        data = _certificate(cfg, rnd, weighted, validators, named)
        store.put_certificate(rnd, data)
        store.put_round_outcome(rnd, True, hashlib.sha256(data).digest())
    junk = [np.full(cfg.dim, 9.0, dtype=np.float32)] * cfg.shards_per_round
    store.put_certificate(40, _certificate(cfg, 40, junk, validators[:2]))  # 2/3: not final
    store.put_round_outcome(40, True, bytes(32))  # a node that lies about round 40
    store.close()
    (tmp_path / "network.toml").write_text(dump_config(cfg))
    return cfg, data_dir, items


def test_certified_pairs_from_a_data_dir(
    certified_dir: tuple[NetworkConfig, Path, tuple[str, ...]],
) -> None:
    cfg, data_dir, items = certified_dir
    certs, refused = certificates(cfg, str(data_dir))
    assert refused == 1 and [c.round for c in certs] == list(range(12))
    pairs = certified_pairs(cfg, items, certs, refused)
    # The zero shard and the shard that named another text (round 7) are left out.
    assert len(pairs.texts) == 12 * cfg.shards_per_round - 2
    fitted = fit_alignment(cfg, ProjectedModel(WordSum(), cfg.dim, bytes(32)), pairs)
    assert fitted.pairs == len(pairs.texts) and fitted.rounds == tuple(range(12))
    assert max(fitted.heldout_cos.values()) > 0.99
    x = WordSum().embed_native(pairs.texts).astype(np.float64)
    got = x @ fitted.matrix.astype(np.float64)
    cos = np.sum(got * pairs.targets, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(pairs.targets, axis=1)
    )
    assert float(np.min(cos)) > 0.99
    with pytest.raises(AlignError, match="neither an http"):
        certificates(cfg, str(data_dir.parent / "elsewhere"))


class _Host:
    peer_id = "12D3KooWStub"
    addrs: list[str] = []  # noqa: RUF012
    counters: dict[str, int] = {}  # noqa: RUF012

    def connected_peers(self) -> list[str]:
        return []


def test_certified_pairs_from_a_node_api(
    certified_dir: tuple[NetworkConfig, Path, tuple[str, ...]],
) -> None:
    """The same pairs through a node's HTTP API (served over TCP on 127.0.0.1), the forged
    round-40 certificate refused."""
    import trio

    from dlnet.node.api import NodeView, build_app, open_listener, serve_api
    from dlnet.protocol.rounds import round_times

    cfg, data_dir, items = certified_dir
    store = Store.open(data_dir / "node.sqlite")
    now = round_times(cfg, 41).start
    view = NodeView(cfg, store, _Host(), frozenset({"validator"}), None, clock=lambda: now)

    async def main() -> tuple[list[Certificate], int]:
        sock, url = open_listener("127.0.0.1", 0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_api, build_app(view), sock)
            got = await trio.to_thread.run_sync(certificates, cfg, url)
            nursery.cancel_scope.cancel()
        return got

    try:
        certs, refused = trio.run(main)
    finally:
        store.close()
    assert refused == 1 and [c.round for c in certs] == list(range(12))
    direct, _ = certificates(cfg, str(data_dir))
    assert certified_pairs(cfg, items, certs).texts == certified_pairs(cfg, items, direct).texts
    with pytest.raises(AlignError, match="cannot reach"):
        certificates(cfg, "http://127.0.0.1:9")


def test_align_and_run_on_the_command_line(
    certified_dir: tuple[NetworkConfig, Path, tuple[str, ...]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg, data_dir, _ = certified_dir
    config = str(tmp_path / "network.toml")
    out = tmp_path / "map.npz"
    model = "dlnet.node.models.kinds:noise"  # cheap: its own 1024-d output is the input
    done = dlnet(
        capsys,
        *("align", "--config", config, "--model", model, "--from", str(data_dir)),
        *("--out", str(out)),
    )
    assert done.code == 0, done.err
    assert "46 certified embeddings" in done.out and "1 certificates refused" in done.out
    fitted = load_map(out, cfg.network_id, cfg.dim)
    assert fitted.in_dim == cfg.dim and fitted.model == model

    key = tmp_path / "e.key"
    assert dlnet(capsys, "keygen", "--out", str(key)).code == 0
    bad = tmp_path / "bad.npz"
    bad.write_text("garbage")
    for path, needle in ((bad, "not a map"), (tmp_path / "none.npz", "no such file")):
        done = dlnet(
            capsys,
            "--log-level", "warning", "run", "--config", config, "--key", str(key),
            "--role", "encoder", "--model", model,
            "--data-dir", str(tmp_path / "enc"), "--align", str(path),
        )  # fmt: skip
        one_line_error(done, "--align", needle)
    done = dlnet(capsys, "run", "--config", config, "--key", str(key),
                 "--data-dir", str(tmp_path / "r"), "--align", str(out))  # fmt: skip
    assert done.code == 2 and "only an encoder uses a map" in done.err
    done = dlnet(capsys, "align", "--config", config, "--model", model,
                 "--from", str(tmp_path / "x"), "--out", str(out))  # fmt: skip
    assert done.code == 2 and "neither an http" in done.err


def test_outsiders_say_what_to_install_and_lsa_needs_nothing() -> None:
    from dlnet.node.models import outsiders

    with pytest.raises(outsiders.OutsiderMissing, match=r"requirements-outsiders\.txt"):
        outsiders._package_file("dlnet-no-such-package", ".zip.001")
    corpus = [f"item {i} about {w} and {v}" for i, (w, v) in enumerate(
        (a, b) for a in ("cats", "dogs", "ships", "stars", "rain") for b in ("milk", "iron", "sand")
    )]  # fmt: skip
    a, b = outsiders.LsaNative(corpus, dim=4), outsiders.LsaNative(corpus, dim=4)
    x = a.embed_native(["cats and milk", "ships"])
    assert x.shape == (2, 4) and x.dtype == np.float32
    assert x.tobytes() == b.embed_native(["cats and milk", "ships"]).tobytes()
