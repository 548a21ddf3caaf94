"""Reading what nodes hold into reports: `dlnet status`, `dlnet results`, the testnet report."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlnet.node.store import MAX_ROUND, Store
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.consensus import CertificateError, verify_certificate
from dlnet.protocol.result import RoundResult, decode_result, result_digest
from dlnet.protocol.wire import Certificate, Kind, Reject, decode

if TYPE_CHECKING:
    from dlnet.node.testnet import Proc

STORE_FILE = "node.sqlite"
INFO_FILE = "node.json"
"""The files of a node's data dir that reports read: its store, and how to reach it."""
U16 = 65535
HONEST = ("honest", "finetuned", "truncated", "noisy", "random-init", "static")
"""Testnet kinds that are honest encoders, whatever their model's quality (everything else is an
adversary); a kind with a level (``noisy@0.5``) counts as its base kind."""


class ReportError(Exception):
    """Nothing to report from; the text says what is missing."""


def _open(data_dir: Path) -> Store:
    path = data_dir / STORE_FILE
    if not path.exists():
        raise ReportError(f"--data-dir: no node store at {path} — point it at a node's --data-dir")
    return Store.open(path)


def read_info(data_dir: Path) -> dict[str, Any]:
    """The node's node.json (written by a running node; empty if it never came up)."""
    path = data_dir / INFO_FILE
    info: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return info


def outcome_rows(store: Store, lo: int = 0, hi: int = MAX_ROUND) -> list[dict[str, Any]]:
    """How the rounds in [lo, hi] ended, as the node recorded them."""
    return [
        {"round": r, "finalized": fin, "result_digest": d.hex() if d else None}
        for r, fin, d in store.round_outcomes(lo, hi)
    ]


def node_status(data_dir: Path) -> dict[str, Any]:
    store = _open(data_dir)
    try:
        return {
            "node": read_info(data_dir),
            "last_finalized": store.outcome_summary().last_finalized,
            "rounds": outcome_rows(store),
            "counters": dict(store.counters()),
        }
    finally:
        store.close()


def format_status(st: dict[str, Any], now: float | None = None) -> str:
    """The text of `dlnet status`; ``live`` values are what the node last wrote in node.json
    (every few seconds while it runs), shown with their age."""
    node = st["node"]
    live = node.get("live") or {}
    last = st.get("last_finalized")
    if live:
        age = (time.time() if now is None else now) - float(live["updated"])
        seen = f"(as of {age:.0f} s ago{'; is the node running?' if age > 30 else ''})"
        peer_ids = live.get("peers") or []
        peers = f"{live.get('peer_count', len(peer_ids))} connected {seen}"
        rnd = live.get("round", -1)
        where = "before genesis" if rnd < 0 else f"{rnd}, phase {live.get('phase', '?')}"
        current = f"{where} {seen}"
    else:
        peer_ids, peers, current = [], "- (the node has not reported yet)", "-"
    network = node.get("network_id")
    lines = [
        f"network   {network or '?'}"
        + (f" ({node['network_name']})" if node.get("network_name") else ""),
        f"peer id   {node.get('peer_id', '?')}",
        f"roles     {', '.join(node.get('roles') or ['relay'])}",
        f"key       {node.get('public_key') or '-'}",
        *(f"addr      {a}" for a in node.get("addrs") or ["-"]),
        f"api       {node.get('api') or '-'}",
        f"peers     {peers}",
        *(f"  peer    {p}" for p in peer_ids),
        f"round     {current}",
        f"finalized {'-' if last is None else f'last round {last}'}",
        "rounds    "
        + (" ".join(f"{r['round']}{'✓' if r['finalized'] else '✗'}" for r in st["rounds"]) or "-"),
    ]
    for name, n in sorted(st["counters"].items()):
        lines.append(f"  {name:<40} {n}")
    return "\n".join(lines)


def verified_certificate(store: Store, cfg: NetworkConfig, rnd: int) -> Certificate | None:
    """The certificate the store holds for ``rnd``, if it decodes and verifies against ``cfg``
    (a node reports a round's result from nothing less)."""
    for r, data in store.certificates(rnd, rnd):
        if r != rnd:
            continue
        try:
            cert = decode(data, cfg, Kind.CERTIFICATE)
            assert isinstance(cert, Certificate)
            verify_certificate(cfg, cert)
        except (Reject, CertificateError):
            continue
        return cert
    return None


def encoder_outliers(result: RoundResult) -> list[bool]:
    """An encoder is reported as an outlier when the consensus flagged it on most shards."""
    n = len(result.encoders)
    shards = len(result.outliers) // n if n else 0
    return [2 * sum(result.outliers[s * n + i] for s in range(shards)) > shards for i in range(n)]


def ranking(result: RoundResult, kinds: dict[str, str] | None = None) -> list[dict[str, Any]]:
    outliers = encoder_outliers(result)
    rows = []
    for i in result.ranking:
        enc = result.encoders[i].hex()
        row: dict[str, Any] = {
            "encoder": enc,
            "score": result.encoder_scores[i] / U16,
            "outlier": outliers[i],
        }
        if kinds is not None:
            row["kind"] = kinds.get(enc, "?")
        rows.append(row)
    return rows


def certificate_summary(cfg: NetworkConfig, cert: Certificate) -> dict[str, Any]:
    """A verified certificate's round result as plain data: ranking, per-shard consensus
    scores and outlier flags (shards x encoders, in the order of ``encoders``), agreement,
    and who signed it with how much stake."""
    res = cert.result
    n = len(res.encoders)
    rows = range(res.shards)
    return {
        "round": cert.round,
        "result_digest": result_digest(res).hex(),
        "signers": [v.hex() for v, _ in cert.votes],
        "signed_stake": sum(cfg.stake_of(v) for v, _ in cert.votes),
        "total_stake": cfg.total_stake,
        "ranking": ranking(res),
        "agreement": {v.hex(): a / U16 for v, a in res.agreement},
        "encoders": [e.hex() for e in res.encoders],
        "shards": res.shards,
        "consensus": [[q / U16 for q in res.consensus[s * n : (s + 1) * n]] for s in rows],
        "outliers": [list(res.outliers[s * n : (s + 1) * n]) for s in rows],
        "attestations_digest": res.attestations_digest.hex(),
    }


def round_results(data_dir: Path, cfg: NetworkConfig, rnd: int) -> dict[str, Any]:
    store = _open(data_dir)
    try:
        cert = verified_certificate(store, cfg, rnd)
    finally:
        store.close()
    if cert is None:
        raise ReportError(f"--round {rnd}: this node holds no valid certificate for that round")
    return certificate_summary(cfg, cert)


def format_results(res: dict[str, Any]) -> str:
    lines = [
        f"round {res['round']}  digest {res['result_digest'][:16]}  "
        f"signed by {len(res['signers'])} validators",
        "rank  score   outlier  encoder",
    ]
    for i, row in enumerate(res["ranking"], 1):
        lines.append(
            f"{i:>4}  {row['score']:.4f}  {'yes' if row['outlier'] else 'no ':<7}  "
            f"{row['encoder'][:16]}"
        )
    return "\n".join(lines)


def all_settled(data_dirs: Sequence[Path], rounds: Iterable[int]) -> bool:
    """Every validator has recorded an outcome (finalized or not) for every round."""
    wanted = set(rounds)
    for d in data_dirs:
        if not (d / STORE_FILE).exists():
            return False
        store = Store.open(d / STORE_FILE)
        try:
            if not wanted <= {r for r, _, _ in store.round_outcomes()}:
                return False
        finally:
            store.close()
    return True


def testnet_report(cfg: NetworkConfig, procs: Sequence[Proc], rounds: range) -> dict[str, Any]:
    kinds = {p.public_key: p.kind for p in procs if p.role == "encoder" and p.public_key}
    validators = [p for p in procs if p.role == "validator"]
    rejected: Counter[str] = Counter()
    transport: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    per_round: list[dict[str, Any]] = []
    views: dict[str, Store] = {}
    try:
        for p in validators:
            if (p.data_dir / STORE_FILE).exists():
                views[p.public_key or p.name] = Store.open(p.data_dir / STORE_FILE)
        for p in procs:  # what every node rejected and ignored, validators or not
            tfile = p.data_dir / "transport.json"
            if tfile.exists():
                transport.update(json.loads(tfile.read_text()))
            if not (p.data_dir / STORE_FILE).exists():
                continue
            st = Store.open(p.data_dir / STORE_FILE)
            try:
                for name, n in st.counters().items():
                    verdict, _, reason = name.partition(":")
                    if verdict == "rejected":
                        rejected[reason] += n
                    elif verdict == "ignored":
                        ignored[reason] += n
            finally:
                st.close()
        for rnd in rounds:
            vals: dict[str, Any] = {}
            cert: Certificate | None = None
            for vkey, st in views.items():
                settled = {r: fin for r, fin, _ in st.round_outcomes()}
                raw = st.get_round_state(rnd, "result")
                own = result_digest(decode_result(raw)).hex() if raw is not None else None
                reveals = json.loads(st.get_round_state(rnd, "reveals") or b"{}")
                honest = [e for e in reveals if kinds.get(e, "").partition("@")[0] in HONEST]
                vals[vkey] = {
                    "result_digest": own,
                    "finalized": settled.get(rnd, False),
                    "reveals_expected": sum(reveals[e]["expected"] for e in honest),
                    "reveals_held": sum(reveals[e]["held"] for e in honest),
                    "reveals": {e: {**v, "kind": kinds.get(e, "?")} for e, v in reveals.items()},
                }
                cert = cert or verified_certificate(st, cfg, rnd)
            per_round.append(
                {
                    "round": rnd,
                    "finalized": cert is not None,
                    "result_digest": result_digest(cert.result).hex() if cert else None,
                    "validators": vals,
                    "ranking": ranking(cert.result, kinds) if cert else [],
                }
            )
    finally:
        for st in views.values():
            st.close()
    peak: dict[str, int] = {}
    for p in procs:
        peak[p.role] = max(peak.get(p.role, 0), p.peak_rss)
    return {
        "network_id": cfg.network_id.hex(),
        "encoders": kinds,
        "rounds": per_round,
        "rejected": dict(rejected),
        "ignored": dict(ignored),
        "transport": dict(sorted(transport.items())),
        "peak_rss_mb": {role: round(v / 2**20, 1) for role, v in peak.items()},
        "processes": {
            p.name: {
                "role": p.role,
                "kind": p.kind,
                "api": p.api,
                "exit_code": p.exit_code,
                "peak_rss_mb": round(p.peak_rss / 2**20, 1),
            }
            for p in procs
        },
    }


def format_testnet(rep: dict[str, Any]) -> str:
    lines = [f"network {rep['network_id'][:16]}"]
    for r in rep["rounds"]:
        digests = {v["result_digest"] for v in r["validators"].values()}
        lines.append(
            f"round {r['round']}: {'FINALIZED' if r['finalized'] else 'not finalized'}"
            f"  validators agree: {'yes' if len(digests) == 1 and None not in digests else 'no'}"
        )
        for i, row in enumerate(r["ranking"], 1):
            lines.append(
                f"  {i:>2}. {row['kind']:<12} {row['score']:.4f}"
                f"{'  outlier' if row['outlier'] else ''}  {row['encoder'][:12]}"
            )
    if rep["rejected"]:
        lines.append(
            "rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(rep["rejected"].items()))
        )
    if rep["ignored"]:
        lines.append(
            "ignored:  " + ", ".join(f"{k}={v}" for k, v in sorted(rep["ignored"].items()))
        )
    dropped = {k: v for k, v in rep["transport"].items() if k.startswith("dropped")}
    lines.append(
        "gossip: "
        + ", ".join(f"{k}={rep['transport'].get(k, 0)}" for k in ("published", "delivered"))
        + (", " + ", ".join(f"{k}={v}" for k, v in dropped.items()) if dropped else "")
        + " (anything dropped is fetched by pull repair)"
    )
    lines.append("peak RSS (MB): " + ", ".join(f"{k}={v}" for k, v in rep["peak_rss_mb"].items()))
    return "\n".join(lines)
