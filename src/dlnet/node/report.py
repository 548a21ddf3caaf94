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
from dlnet.protocol.consensus import (
    DISAGREEMENT_ROUNDS,
    CertificateError,
    disagreeing,
    verify_certificate,
)
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


def finality_latency(store: Store, rnd: int) -> float | None:
    """Seconds from the round's reveal deadline to when this node assembled its certificate;
    None if the node did not (not finalized, adopted by catch-up, or recorded before latency
    was)."""
    record = store.finalized_at(rnd)
    return None if record is None else record["latency"]


def outcome_rows(store: Store, lo: int = 0, hi: int = MAX_ROUND) -> list[dict[str, Any]]:
    """How the rounds in [lo, hi] ended, as the node recorded them, with the finality latency
    (`finality_latency`) and ``caught_up`` (the certificate came from a peer by catch-up)."""
    rows = []
    for r, fin, d in store.round_outcomes(lo, hi):
        record = store.finalized_at(r) if fin else None
        rows.append(
            {
                "round": r,
                "finalized": fin,
                "result_digest": d.hex() if d else None,
                "latency": None if record is None else record["latency"],
                "caught_up": record is not None and record["via"] == "catch_up",
            }
        )
    return rows


def latency_summary(latencies: Iterable[float | None]) -> dict[str, Any]:
    """The median (lower median for an even count) and the maximum of the known latencies,
    and how many were known; p50 and max are None when none was."""
    known = sorted(x for x in latencies if x is not None)
    return {
        "p50": known[(len(known) - 1) // 2] if known else None,
        "max": known[-1] if known else None,
        "n": len(known),
    }


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def _round_mark(r: dict[str, Any]) -> str:
    """``3✓`` / ``3✗`` for `dlnet status`, with the finality latency when known (``3✓6.4s``)."""
    latency = r.get("latency")
    return f"{r['round']}{'✓' if r['finalized'] else '✗'}" + (
        "" if latency is None else f"{latency:.1f}s"
    )


def node_status(data_dir: Path) -> dict[str, Any]:
    store = _open(data_dir)
    try:
        return {
            "node": read_info(data_dir),
            "last_finalized": store.outcome_summary().last_finalized,
            "rounds": outcome_rows(store),
            "counters": dict(store.counters()),
            "store_bytes": dict(zip(("used", "free"), store.size(), strict=True)),
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
        "rounds    " + (" ".join(map(_round_mark, st["rounds"])) or "-"),
        "store     {:.1f} MB in use, {:.1f} MB free for reuse (--keep-rounds)".format(
            st["store_bytes"]["used"] / 1e6, st["store_bytes"]["free"] / 1e6
        ),
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
        cert = checked_certificate(cfg, data)
        if cert is not None:
            return cert
    return None


def checked_certificate(cfg: NetworkConfig, data: bytes) -> Certificate | None:
    """The certificate encoded in ``data`` if it decodes strictly and verifies against
    ``cfg`` (`consensus.verify_certificate`), else None."""
    cert, _ = certificate_verdict(cfg, data)
    return cert


def certificate_verdict(cfg: NetworkConfig, data: bytes) -> tuple[Certificate | None, str | None]:
    """(the certificate, None) if ``data`` decodes strictly and verifies against ``cfg``, else
    (None, why not): ``malformed``, or a `CertificateReason` value such as ``empty_result`` or
    ``insufficient_attestations`` (a result that names no encoder or did not use attestations
    of more than the finality fraction of the stake is never final)."""
    try:
        cert = decode(data, cfg, Kind.CERTIFICATE)
        assert isinstance(cert, Certificate)
    except Reject:
        return None, "malformed"
    try:
        verify_certificate(cfg, cert)
    except CertificateError as exc:
        return None, exc.reason.value
    return cert, None


def validator_agreement(store: Store, cfg: NetworkConfig) -> dict[str, dict[str, Any]]:
    """Per validator of the config: its agreement (0..1) with the latest certified result held
    (None if that result did not use its attestation) and whether it is `disagreeing` over
    the last DISAGREEMENT_ROUNDS certified results."""
    finalized = [r for r, fin, _ in store.round_outcomes() if fin][-DISAGREEMENT_ROUNDS:]
    results = [c.result for r in finalized if (c := verified_certificate(store, cfg, r))]
    flagged = disagreeing(results)
    latest = dict(results[-1].agreement) if results else {}
    return {
        v.pubkey.hex(): {
            "agreement": latest[v.pubkey] / U16 if v.pubkey in latest else None,
            "disagreeing": v.pubkey in flagged,
        }
        for v in cfg.validators
    }


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


def testnet_report(
    cfg: NetworkConfig, procs: Sequence[Proc], rounds: range, stopped_at: float | None = None
) -> dict[str, Any]:
    """The testnet's report.json: per round, what every validator holds and decided; per
    process, its role, peak RSS and CPU seconds as sampled at ``stopped_at`` (epoch seconds,
    when the testnet stopped its nodes, kept in the report; each process's CPU after that is
    its teardown)."""
    kinds = {
        pk: kind
        for p in procs
        if p.role == "encoder"
        for _, kind, pk in (p.identities or [(p.name, p.kind, p.public_key or "")])
        if pk
    }
    validators = [p for p in procs if p.role == "validator"]
    rejected: Counter[str] = Counter()
    transport: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    cut: Counter[str] = Counter()
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
                    elif verdict == "cut":
                        cut[reason] += n
            finally:
                st.close()
        for rnd in rounds:
            vals: dict[str, Any] = {}
            cert: Certificate | None = None
            committed: set[str] = set()
            refused: Counter[str] = Counter()
            for vkey, st in views.items():
                certified = False
                for r, data in st.certificates(rnd, rnd):
                    held, why = certificate_verdict(cfg, data) if r == rnd else (None, None)
                    if held is not None:
                        certified = True
                        cert = cert or held
                    elif why is not None:
                        refused[why] += 1
                settled = {r: fin for r, fin, _ in st.round_outcomes()}
                raw = st.get_round_state(rnd, "result")
                own = result_digest(decode_result(raw)).hex() if raw is not None else None
                reveals = json.loads(st.get_round_state(rnd, "reveals") or b"{}")
                committed.update(reveals)
                honest = [e for e in reveals if kinds.get(e, "").partition("@")[0] in HONEST]
                vals[vkey] = {
                    "result_digest": own,
                    # What the validator recorded; the round counts as finalized only with a
                    # certificate that verifies ("certified").
                    "finalized": settled.get(rnd, False),
                    "certified": certified,
                    "latency": finality_latency(st, rnd) if settled.get(rnd) else None,
                    "reveals_expected": sum(reveals[e]["expected"] for e in honest),
                    "reveals_held": sum(reveals[e]["held"] for e in honest),
                    "reveals": {e: {**v, "kind": kinds.get(e, "?")} for e, v in reveals.items()},
                }
            named = [e.hex() for e in cert.result.encoders] if cert else []
            per_round.append(
                {
                    "round": rnd,
                    "finalized": cert is not None,
                    "empty": cert is not None and not named,
                    # Every encoder of the result is one the testnet started and whose commit
                    # a validator held (no made-up keys).
                    "only_real_encoders": all(e in kinds and e in committed for e in named),
                    "result_digest": result_digest(cert.result).hex() if cert else None,
                    # Certificates held that do not verify, by reason (empty_result,
                    # insufficient_attestations, ...): such a round is never finalized.
                    "refused_certificates": dict(refused),
                    "validators": vals,
                    "latency": latency_summary(v["latency"] for v in vals.values()),
                    "ranking": [
                        {
                            **row,
                            "counted_by": sum(
                                row["encoder"] in v["reveals"] for v in vals.values()
                            ),
                        }
                        for row in (ranking(cert.result, kinds) if cert else [])
                    ],
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
        "cut": dict(cut),
        "transport": dict(sorted(transport.items())),
        "peak_rss_mb": {role: round(v / 2**20, 1) for role, v in peak.items()},
        "stopped_at": stopped_at,
        "processes": {
            p.name: {
                "role": p.role,
                "kind": p.kind,
                "api": p.api,
                "exit_code": p.exit_code,
                "peak_rss_mb": round(p.peak_rss / 2**20, 1),
                "cpu_seconds": round(p.cpu_seconds, 2),
                "pid": p.popen.pid if p.popen is not None else None,
                "encoders": [name for name, _, _ in p.identities],
            }
            for p in procs
        },
    }


def round_ok(r: dict[str, Any]) -> bool:
    """A testnet round counts as a success: finalized (a certificate that verifies, hence a
    result naming encoders, over attestations of more than the finality fraction of the
    stake), non-empty, only real encoders."""
    return bool(r["finalized"] and not r.get("empty") and r.get("only_real_encoders", True))


def format_testnet(rep: dict[str, Any]) -> str:
    lines = [f"network {rep['network_id'][:16]}"]
    for r in rep["rounds"]:
        digests = {v["result_digest"] for v in r["validators"].values()}
        state = "not finalized"
        if r["finalized"]:
            state = "FINALIZED, EMPTY result" if r.get("empty") else "FINALIZED"
        lines.append(
            f"round {r['round']}: {state}"
            f"  validators agree: {'yes' if len(digests) == 1 and None not in digests else 'no'}"
            f"  only real encoders: {'yes' if r.get('only_real_encoders', True) else 'NO'}"
        )
        refused = r.get("refused_certificates") or {}
        claims = [
            k[:8]
            for k, v in r["validators"].items()
            if v.get("finalized") and not v.get("certified", True)
        ]
        if refused or (claims and not r["finalized"]):
            lines.append(
                "  NOT counted as finalized: "
                + ", ".join(
                    [f"certificate refused ({k}) x{n}" for k, n in sorted(refused.items())]
                    + (
                        [f"recorded finalized without a valid certificate: {' '.join(claims)}"]
                        if claims
                        else []
                    )
                )
            )
        lat = r.get("latency")
        if lat and lat["n"]:
            each = ", ".join(
                f"{k[:8]} {_seconds(v.get('latency'))}" for k, v in r["validators"].items()
            )
            lines.append(
                f"  finality latency (after the reveal deadline): p50 {_seconds(lat['p50'])}"
                f"  max {_seconds(lat['max'])}  ({lat['n']} of {len(r['validators'])}"
                f" validators: {each})"
            )
        for i, row in enumerate(r["ranking"], 1):
            counted = row.get("counted_by", len(r["validators"]))
            lines.append(
                f"  {i:>2}. {row['kind']:<12} {row['score']:.4f}"
                f"{'  outlier' if row['outlier'] else ''}  {row['encoder'][:12]}"
                + (
                    f"  (commit counted by {counted} of {len(r['validators'])} validators)"
                    if counted < len(r["validators"])
                    else ""
                )
            )
    if rep["rejected"]:
        lines.append(
            "rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(rep["rejected"].items()))
        )
    if rep["ignored"]:
        lines.append(
            "ignored:  " + ", ".join(f"{k}={v}" for k, v in sorted(rep["ignored"].items()))
        )
    if rep["cut"]:
        lines.append(
            "cells scored 0, by why (summed over validators): "
            + ", ".join(f"{k}={v}" for k, v in sorted(rep["cut"].items()))
        )
    dropped = {k: v for k, v in rep["transport"].items() if k.startswith("dropped")}
    lines.append(
        "gossip: "
        + ", ".join(f"{k}={rep['transport'].get(k, 0)}" for k in ("published", "delivered"))
        + (", " + ", ".join(f"{k}={v}" for k, v in dropped.items()) if dropped else "")
        + " (anything dropped is fetched by pull repair)"
    )
    lines.append("peak RSS (MB): " + ", ".join(f"{k}={v}" for k, v in rep["peak_rss_mb"].items()))
    overall = latency_summary(
        v.get("latency") for r in rep["rounds"] for v in r["validators"].values()
    )
    if overall["n"]:
        lines.append(
            f"finality latency: p50 {_seconds(overall['p50'])}, max {_seconds(overall['max'])}"
            f" over {overall['n']} validator-rounds (seconds after the reveal deadline)"
        )
    bad = [r["round"] for r in rep["rounds"] if not round_ok(r)]
    lines.append(
        f"summary: {len(rep['rounds']) - len(bad)} of {len(rep['rounds'])} rounds finalized with "
        "a non-empty result of real encoders"
        + (f"; FAILED rounds: {', '.join(map(str, bad))}" if bad else "")
    )
    return "\n".join(lines)
