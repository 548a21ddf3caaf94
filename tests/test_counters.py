"""The counters registry (node/counters.py): every counting site names a declared counter, the
stored keys are those the readers (status, report, transport.json) always used, and /metrics
shows one dlnet signature verify per delivered embedding, duplicates costing none."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from test_verified_once import setup

from dlnet.node import counters as C
from dlnet.node.api import NodeView, build_app
from dlnet.node.counters import Counters, UndeclaredCounter
from dlnet.node.host import Verdict
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.reveals import push_body, receive
from dlnet.node.store import Store
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Kind, encode, make_embedding

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "src" / "dlnet" / "node"
METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def test_every_declared_counter_is_a_valid_prometheus_family() -> None:
    assert len(C.DECLARED) >= 40
    for metric, name in C.DECLARED.items():
        assert METRIC.fullmatch(metric) and metric.startswith("dlnet_"), metric
        assert not metric.endswith("_total") and name.help.strip(), metric
        assert name.label is None or METRIC.fullmatch(name.label)
        assert not (name.total and (name.persistent or name.label is None)), metric
    keys = [(n.persistent, n.key) for n in C.DECLARED.values()]
    assert len(keys) == len(set(keys))


def _counting_calls() -> list[tuple[str, str, ast.Call]]:
    """Every call in node/ that counts: ``<x>.count(...)``, ``<x>.add(...)`` on a counters
    object, ``bump_counter(...)``."""
    calls = []
    for path in sorted(NODE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = ast.unparse(node.func.value)
            attr = node.func.attr
            if attr == "bump_counter" or (
                (attr == "count" and owner.endswith("ingest"))
                or (attr == "add" and owner.endswith(("counters", "_counters")))
            ):
                calls.append((f"{path.name}:{node.lineno}", attr, node))
    return calls


def test_every_counting_site_names_a_declared_counter() -> None:
    """Counter names are never built from strings: each site passes a declared `C.<NAME>`."""
    calls = _counting_calls()
    assert len(calls) > 60  # the host's, ingest's, sync's, reveals', encoder's, validator's
    for where, attr, call in calls:
        if where.startswith("counters.py:") or attr == "bump_counter":
            # Only the registry writes to the store's table.
            assert where.startswith("counters.py:"), f"{where}: bump_counter outside the registry"
            continue
        first = call.args[0]
        # `C.IGNORED if window else C.SYNC` counts one of two declared counters.
        names = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
        for arg in names:
            text = ast.unparse(arg)
            if isinstance(arg, ast.Name):  # a parameter/variable holding a declared Name
                continue
            assert text.startswith("C."), f"{where}: counts {text}, not a declared counter"
            assert isinstance(getattr(C, text[2:]), C.Name), f"{where}: {text}"


def test_undeclared_and_mislabelled_counts_raise(tmp_path: Path) -> None:
    counters = Counters()
    with pytest.raises(UndeclaredCounter):
        counters.add(C.Name("made_up", "dlnet_made_up", "not declared"))
    with pytest.raises(UndeclaredCounter):
        counters.add(C.GOSSIP_REJECTED)  # needs its reason
    with pytest.raises(UndeclaredCounter):
        counters.add(C.PUBLISHED, "extra")
    with pytest.raises(UndeclaredCounter):
        counters.add(C.PENALTY, "two words")
    with pytest.raises(UndeclaredCounter):
        counters.add(C.REJECTED, "bad_signature")  # persistent, and no store


def test_stored_keys_are_the_ones_readers_use(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.sqlite")
    counters = Counters(store)
    assert counters.values == {"published": 0, "delivered": 0, "dropped": 0}
    counters.add(C.GOSSIP_REJECTED, "bad_signature")
    counters.add(C.GOSSIP_REJECTED, "wrong_network")
    counters.add(C.DROPPED, "spam", 2)
    counters.add(C.PENALTY, "oversize")
    counters.add(C.PX_DIALS)
    counters.add(C.REJECTED, "bad_signature")
    counters.add(C.ACCEPTED, "embedding")
    assert counters.values == {
        "published": 0,
        "delivered": 0,
        "dropped": 2,
        "dropped.spam": 2,
        "rejected": 2,
        "rejected.bad_signature": 1,
        "rejected.wrong_network": 1,
        "penalty.oversize": 1,
        "px.dials": 1,
    }
    assert store.counters() == {"rejected:bad_signature": 1, "accepted:embedding": 1}
    assert counters.get(C.REJECTED, "bad_signature") == 1
    assert counters.get(C.GOSSIP_REJECTED, "bad_signature") == 1
    got = {n.metric: rows for n, rows in C.samples(counters.values, store.counters())}
    assert set(got) == set(C.DECLARED)
    assert got["dlnet_transport_rejected"] == [("bad_signature", 1), ("wrong_network", 1)]
    assert got["dlnet_transport_px_dials"] == [(None, 1)]
    assert got["dlnet_transport_evicted"] == [(None, 0)]
    assert got["dlnet_messages_rejected"] == [("bad_signature", 1)]
    assert got["dlnet_transport_penalty"] == [("oversize", 1)]
    store.close()


@dataclasses.dataclass
class RegistryHost:
    """A host stand-in whose counters are a node registry's in-memory values."""

    counters: dict[str, int]
    peer_id: str = "12D3KooWStub"
    addrs: list[str] = dataclasses.field(default_factory=list)

    def connected_peers(self) -> list[str]:
        return []


def test_one_verify_per_delivered_embedding_read_off_metrics(tmp_path: Path) -> None:
    """N distinct embeddings arrive by gossip (topic validator, then drain) and by reveal
    push, each several times over both paths: /metrics shows exactly N verifies."""
    cfg, _, _ = setup(tmp_path)  # the one-validator network of test_verified_once
    rnd = 2
    now = round_times(cfg, rnd).commit_deadline + 2.0
    store = Store.open(tmp_path / "v.sqlite")
    counters = Counters(store)  # as node/runtime.py: one registry for host and ingest
    ingest = Ingest(cfg, store, lambda: now, counters)
    rng = np.random.default_rng(1)
    reveals = [
        encode(
            make_embedding(
                SigningKey.from_seed(bytes([20 + e]) * 32),
                cfg.network_id,
                rnd,
                s,
                0,
                bytes(16),
                rng.standard_normal(cfg.dim),
            )
        )
        for e in range(3)
        for s in range(cfg.shards_per_round)
    ]
    gossiped, pushed = reveals[::2], reveals[1::2]
    for data in gossiped:
        assert ingest.check(Kind.EMBEDDING, data) is Verdict.ACCEPT
        assert ingest.check(Kind.EMBEDDING, data) is Verdict.IGNORE  # a second copy in flight
        assert ingest.admit_checked(data) is Outcome.NEW
        assert ingest.check(Kind.EMBEDDING, data) is Verdict.IGNORE  # a copy after storing
    push = push_body(pushed, None)
    assert receive(ingest, push) == [Outcome.NEW] * len(pushed)
    again = push_body(reveals, None)  # every one pushed once more
    assert receive(ingest, again) == [Outcome.DUPLICATE] * len(reveals)
    for data in pushed:  # and the pushed ones gossiped after
        assert ingest.check(Kind.EMBEDDING, data) is Verdict.IGNORE
    n = len(reveals)
    assert ingest.verifies[Kind.EMBEDDING] == n

    counters.peak(C.LOOP_MAX_STALL_MS, 1500)  # a peak is exported as a gauge, not a total
    view = NodeView(
        cfg, store, RegistryHost(counters.values), frozenset({"validator"}), None, lambda: now
    )

    async def scrape() -> str:
        transport = httpx.ASGITransport(app=build_app(view))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            r = await client.get("/metrics")
            assert r.status_code == 200
            return r.text

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(trio.run(scrape))
        for s in family.samples
    }
    kind = (("kind", "embedding"),)
    assert samples[("dlnet_signature_verifies_total", kind)] == n
    assert samples[("dlnet_messages_accepted_total", kind)] == n
    dup = (("reason", "duplicate"),)
    assert samples[("dlnet_messages_ignored_total", dup)] == 2 * len(gossiped) + len(pushed)
    assert samples[("dlnet_push_events_total", (("event", "duplicate"),))] == n
    assert ("dlnet_signature_verifies_total", (("kind", "commit"),)) not in samples
    assert samples[("dlnet_transport_loop_max_stall_ms", ())] == 1500
    assert "# TYPE dlnet_transport_loop_max_stall_ms gauge" in trio.run(scrape)
    store.close()


def test_api_md_lists_every_declared_counter() -> None:
    doc = (ROOT / "docs" / "API.md").read_text()
    missing = [m for m, n in C.DECLARED.items() if f"`{m}{'' if n.peak else '_total'}`" not in doc]
    assert missing == [], "add them to docs/API.md, Counters"


def test_a_peak_keeps_the_largest_value_and_is_no_counter() -> None:
    counters = C.Counters()
    for ms in (1200, 4800, 2500):
        counters.peak(C.LOOP_MAX_STALL_MS, ms)
    assert counters.get(C.LOOP_MAX_STALL_MS) == 4800
    with pytest.raises(C.UndeclaredCounter):
        counters.add(C.LOOP_MAX_STALL_MS)
    with pytest.raises(C.UndeclaredCounter):
        counters.peak(C.LOOP_STALLS, 3)
    exported = dict(
        ((name.metric, name.peak), rows) for name, rows in C.samples(counters.values, {})
    )
    assert exported[("dlnet_transport_loop_max_stall_ms", True)] == [(None, 4800)]


def test_counts_inside_a_batch_are_read_at_once_and_kept_only_if_it_commits(
    tmp_path: Path,
) -> None:
    """A batch sums its counter bumps in memory and writes them once at its end: readers see
    them meanwhile, a rolled-back batch loses them with its messages, another connection
    sees them once committed."""
    store = Store.open(tmp_path / "node.sqlite")
    store.bump_counter("accepted:embedding", 2)
    with store.batch():
        for _ in range(5):
            store.bump_counter("accepted:embedding")
        store.bump_counter("push:received")
        assert store.counters() == {"accepted:embedding": 7, "push:received": 1}
        other = Store.open(tmp_path / "node.sqlite")
        assert other.counters() == {"accepted:embedding": 2}  # not committed yet
    assert other.counters() == {"accepted:embedding": 7, "push:received": 1}
    with pytest.raises(RuntimeError), store.batch():
        store.bump_counter("accepted:embedding", 10)
        raise RuntimeError("the batch fails")
    assert store.counters() == other.counters() == {"accepted:embedding": 7, "push:received": 1}
