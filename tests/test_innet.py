"""Whole networks in one process (tests/innet.py): the roles of `dlnet run`, their stores and
admission, over an in-memory transport in trio's virtual time."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from innet import Encoder, InNet
from trio.testing import MockClock

from dlnet.node.context import TrioClock
from dlnet.node.dataset_io import load_items, resolve_dataset_path
from dlnet.node.models.kinds import honest, noise
from dlnet.node.report import ranking
from dlnet.protocol.config import DatasetRef, NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.consensus import verify_certificate
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Certificate, Kind, decode

GENESIS = 1_900_000_000


def keys(n: int, base: int) -> list[SigningKey]:
    return [SigningKey.from_seed(bytes([base + i]) * 32) for i in range(n)]


def network(
    tmp: Path, validators: list[SigningKey], seeds: list[SigningKey]
) -> tuple[NetworkConfig, tuple[str, ...]]:
    ref = DatasetRef("builtin:corpus.txt", b"", "lines")
    data = resolve_dataset_path(ref, tmp).read_bytes()
    ref = DatasetRef(ref.path, hashlib.sha256(data).digest(), "lines")
    cfg = default_config(
        [ValidatorEntry(k.public_key, 100) for k in validators],
        GENESIS,
        dataset=ref,
        round_seconds=40,
        registration=RegistrationParams(difficulty=0),
        seed_encoders=tuple(sorted(k.public_key for k in seeds)),
    )
    return cfg, load_items(cfg.dataset, tmp)


def run(
    cfg: NetworkConfig,
    items: tuple[str, ...],
    tmp: Path,
    scenario: Callable[[InNet], Awaitable[None]],
    until_round: int,
) -> None:
    """Run ``scenario`` (it starts the nodes) from 5 s before genesis, then the network until
    round ``until_round``'s finality deadline has passed, all in virtual time."""

    async def main() -> None:
        clock = TrioClock(GENESIS - 5 - trio.current_time())
        async with trio.open_nursery() as nursery:
            net = InNet(nursery, cfg, items, tmp, clock)
            await scenario(net)
            await clock.sleep_until(round_times(cfg, until_round).finality_deadline + 2)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))


def certificate(net_dir: Path, cfg: NetworkConfig, name: str, rnd: int) -> Certificate | None:
    from dlnet.node.report import STORE_FILE
    from dlnet.node.store import Store

    store = Store.open(net_dir / name / STORE_FILE)
    try:
        held = store.certificates(rnd, rnd)
    finally:
        store.close()
    if not held:
        return None
    cert = decode(held[0][1], cfg, Kind.CERTIFICATE)
    assert isinstance(cert, Certificate)
    verify_certificate(cfg, cert)
    return cert


def test_three_validators_finalize_every_round_and_rank_honest_first(tmp_path: Path) -> None:
    vals = keys(3, 1)
    good = keys(4, 20)
    bad = keys(2, 40)
    cfg, items = network(tmp_path, vals, good)

    async def scenario(net: InNet) -> None:
        for i, k in enumerate(vals):
            await net.start(f"validator-{i}", validator=k)
        await net.start("relay")
        for i, k in enumerate(good):
            model = honest(cfg.dim, cfg.projection_seed, seed=i)
            await net.start(f"honest-{i}", encoders=[Encoder(k, model)])
        for i, k in enumerate(bad):
            model = noise(cfg.dim, cfg.projection_seed, seed=i)
            await net.start(f"noise-{i}", encoders=[Encoder(k, model)])

    run(cfg, items, tmp_path, scenario, until_round=3)
    for rnd in (1, 2, 3):
        certs = [certificate(tmp_path, cfg, f"validator-{i}", rnd) for i in range(3)]
        assert all(c is not None for c in certs), rnd
        assert len({c.result for c in certs if c is not None}) == 1, rnd
        cert = certs[0]
        assert cert is not None
        kinds = {k.public_key.hex(): "honest" for k in good} | {
            k.public_key.hex(): "noise" for k in bad
        }
        ranked = [row["kind"] for row in ranking(cert.result, kinds)]
        assert ranked == ["honest"] * 4 + ["noise"] * 2, (rnd, ranked)
