"""The scale ladder: real `dlnet testnet` runs of growing size, one markdown row per rung.

    python scripts/bench_scale.py                      # every rung of RUNGS (about 8-10 min)
    python scripts/bench_scale.py --rungs 13x3,24x3 --lock /work/testnet.lock

A rung ``ExV`` runs E encoders and V validators for ``--rounds`` rounds: 13 encoders are the
default testnet (6 honest and one of each adversary); more are ``honest:6,noise:E-6``, which
`dlnet testnet` runs 24 to an OS process. With ``--lock FILE`` each rung waits for that lock
(``flock``) so that two testnets never share the machine. Per rung, from the testnet's own
report and the validators' stores:

* rounds finalized (a certificate that verifies, with a non-empty result) of those run;
* reveals held: at the reveal deadline (read from every validator's store, read-only, at the
  deadline) and after repair (the counts the validator records when it scores), summed over
  validators and rounds, against what the encoders committed to;
* CPU per delivered embedding: user + system CPU (``/proc/<pid>/stat``) of every node process
  from the start of round 1 to the moment the testnet stops its nodes (its report's last CPU
  sample per process, ``stopped_at``; start-up — torch imports, model loads, registration
  proofs — and each node's teardown after SIGTERM left out), over the embeddings the
  validators admitted in that window (their ``accepted:embedding`` counters), in ms and as a
  multiple of one Ed25519 verify measured right after the rung;
* the share of the machine's cores that CPU is over the same window, and its split by role;
* finality latency (seconds after the reveal deadline) p50 / max over validator-rounds;
* peak RSS per role (MB).

``--json FILE`` keeps every number; the table goes to stdout (and ``--markdown FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dlnet.node.report import HONEST, latency_summary
from dlnet.protocol.config import NetworkConfig, parse_config
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Commit, Kind, Reject, decode

RUNGS = "13x3,24x3,40x3,100x7"
HONEST_ENCODERS = 6


def verify_ms(n: int = 2000) -> float:
    """CPU ms of one Ed25519 verify (``cryptography``) of a 4 KB message, measured now."""
    key = Ed25519PrivateKey.generate()
    msg = os.urandom(4200)
    sig = key.sign(msg)
    pub = key.public_key()
    began = time.process_time()
    for _ in range(n):
        pub.verify(sig, msg)
    return (time.process_time() - began) * 1000 / n


def parse_rungs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        e, sep, v = part.strip().partition("x")
        if not sep or not e.isdigit() or not v.isdigit() or int(e) < 13 or int(v) < 1:
            raise SystemExit(f"bench_scale: --rungs {part!r}: expected ExV with E >= 13, V >= 1")
        out.append((int(e), int(v)))
    return out


def encoders_spec(encoders: int) -> list[str]:
    if encoders == 13:
        return []  # the default testnet
    return ["--encoders", f"honest:{HONEST_ENCODERS},noise:{encoders - HONEST_ENCODERS}"]


TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` from /proc/<pid>/stat; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def node_pids(out: Path) -> dict[str, int]:
    """Node name -> pid, from each node's node.json."""
    pids = {}
    for info in (out / "nodes").glob("*/node.json"):
        try:
            pids[info.parent.name] = int(json.loads(info.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
    return pids


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


def admitted(db: Path) -> int:
    """The validator's ``accepted:embedding`` counter now (0 if unreadable)."""
    try:
        con = _ro(db)
        try:
            row = con.execute(
                "SELECT value FROM counters WHERE name = 'accepted:embedding'"
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def held_commitments(db: Path, rnd: int) -> set[bytes]:
    """Commitments of the round's embeddings in a validator's store now."""
    try:
        con = _ro(db)
        try:
            rows = con.execute(
                "SELECT commitment FROM messages WHERE kind = ? AND round = ?",
                (int(Kind.EMBEDDING), rnd),
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return set()
    return {bytes(r[0]) for r in rows if r[0] is not None}


def committed(cfg: NetworkConfig, db: Path, rnd: int, kinds: dict[str, str]) -> set[bytes]:
    """Every commitment listed by the round's commits of honest encoders (kinds in
    report.HONEST) the validator holds, first commit per encoder."""
    con = _ro(db)
    try:
        rows = con.execute(
            "SELECT data FROM messages WHERE kind = ? AND round = ?", (int(Kind.COMMIT), rnd)
        ).fetchall()
    finally:
        con.close()
    seen: dict[bytes, Commit] = {}
    for (data,) in rows:
        try:
            msg = decode(bytes(data), cfg, Kind.COMMIT)
        except Reject:
            continue
        honest = kinds.get(msg.encoder.hex(), "").partition("@")[0] in HONEST
        if isinstance(msg, Commit) and honest:
            seen.setdefault(msg.encoder, msg)
    return {h for c in seen.values() for h in c.hashes}


def run_rung(
    encoders: int,
    validators: int,
    rounds: int,
    out: Path,
    lock: Path | None,
    round_seconds: int | None = None,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "dlnet.node",
        "testnet",
        "--validators",
        str(validators),
        "--rounds",
        str(rounds),
        "--out",
        str(out),
        *encoders_spec(encoders),
        *(["--round-seconds", str(round_seconds)] if round_seconds else []),
    ]
    if lock is not None:
        cmd = ["flock", str(lock), *cmd]
    out.mkdir(parents=True, exist_ok=True)
    (out / "network.toml").unlink(missing_ok=True)
    log = open(out / "testnet.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    at_deadline: dict[tuple[str, int], set[bytes]] = {}
    cfg: NetworkConfig | None = None
    cpu_first: dict[str, float] = {}
    cpu_last: dict[str, float] = {}
    window: list[float] = []
    admitted_before: dict[str, int] = {}
    next_sample = 0.0
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            if cfg is None and (out / "network.toml").exists():
                cfg = parse_config((out / "network.toml").read_text())
            if cfg is None:
                continue
            now = time.time()
            if now >= round_times(cfg, 1).start and now >= next_sample:
                next_sample = now + 1.0
                for name, pid in node_pids(out).items():
                    cpu = proc_cpu(pid)
                    if cpu is not None:
                        cpu_first.setdefault(name, cpu)
                        cpu_last[name] = cpu
                if not window:
                    admitted_before = {
                        v.name: admitted(v / "node.sqlite")
                        for v in (out / "nodes").glob("validator-*")
                    }
                window = [window[0] if window else now, now]
            for rnd in range(1, rounds + 1):
                if now < round_times(cfg, rnd).reveal_deadline:
                    continue
                for vdir in sorted((out / "nodes").glob("validator-*")):
                    key = (vdir.name, rnd)
                    if key not in at_deadline:
                        at_deadline[key] = held_commitments(vdir / "node.sqlite", rnd)
    except BaseException:
        os.killpg(proc.pid, 15)
        proc.wait()
        raise
    finally:
        log.close()
    verify = verify_ms()
    rep = json.loads((out / "report.json").read_text())
    assert cfg is not None
    # The window ends where the testnet stopped its nodes: its own last CPU sample of each
    # process, taken just before SIGTERM (a node's teardown is not work of the rounds).
    teardown = 0.0
    for name, proc_rep in rep["processes"].items():
        if name in cpu_first and proc_rep.get("cpu_seconds") is not None:
            at_stop = max(cpu_first[name], proc_rep["cpu_seconds"])
            teardown += max(0.0, cpu_last[name] - at_stop)
            cpu_last[name] = at_stop
    end = rep.get("stopped_at") or (window[1] if window else 0.0)
    wall = end - window[0] if window else 0.0
    spent = {name: cpu_last[name] - cpu_first[name] for name in cpu_last}
    summary = summarise(
        cfg,
        rep,
        out,
        (encoders, validators, rounds),
        at_deadline,
        admitted_before,
        spent,
        wall,
        verify,
    )
    # Seen by this script's own samples after the stop, up to each process's exit (at most
    # its last second): not in the window, kept to show what the window leaves out.
    summary["teardown_cpu_seconds"] = round(teardown, 1)
    return summary


def summarise(
    cfg: NetworkConfig,
    rep: dict[str, Any],
    out: Path,
    size: tuple[int, int, int],
    at_deadline: dict[tuple[str, int], set[bytes]],
    admitted_before: dict[str, int],
    cpu_by_node: dict[str, float],
    wall: float,
    verify: float,
) -> dict[str, Any]:
    encoders, validators, rounds = size
    kinds: dict[str, str] = rep["encoders"]
    finalized = sum(
        1 for r in rep["rounds"] if r["finalized"] and not r.get("empty") and r["ranking"]
    )
    expected = held_after = held_deadline = 0
    delivered = 0
    for vdir in sorted((out / "nodes").glob("validator-*")):
        db = vdir / "node.sqlite"
        for rnd in range(1, rounds + 1):
            wanted = committed(cfg, db, rnd, kinds)
            expected += len(wanted)
            held_deadline += len(at_deadline.get((vdir.name, rnd), set()) & wanted)
            held_after += len(held_commitments(db, rnd) & wanted)
        delivered += admitted(db) - admitted_before.get(vdir.name, 0)
    cpu = sum(cpu_by_node.values())
    by_role: dict[str, float] = {}
    for name, seconds in cpu_by_node.items():
        role = rep["processes"].get(name, {}).get("role", "?")
        by_role[role] = by_role.get(role, 0.0) + seconds
    per = cpu * 1000 / delivered if delivered else float("nan")
    lat = latency_summary(v.get("latency") for r in rep["rounds"] for v in r["validators"].values())
    return {
        "encoders": encoders,
        "validators": validators,
        "processes": len(rep["processes"]),
        "rounds": rounds,
        "finalized": finalized,
        "reveals_expected": expected,
        "reveals_at_deadline": held_deadline,
        "reveals_after_repair": held_after,
        "delivered": delivered,
        "cpu_seconds": round(cpu, 1),
        "cpu_by_role": {k: round(v, 1) for k, v in sorted(by_role.items())},
        "cpu_ms_per_delivery": round(per, 2),
        "verify_ms": round(verify, 4),
        "x_verify": round(per / verify, 1) if delivered else None,
        "core_share": round(cpu / (wall * (os.cpu_count() or 1)), 2) if wall else None,
        "window_seconds": round(wall),
        "latency_p50": lat["p50"],
        "latency_max": lat["max"],
        "peak_rss_mb": rep["peak_rss_mb"],
    }


def _pct(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f} %)" if whole else "-"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| encoders x validators (processes) | rounds finalized | reveals held at the reveal "
        "deadline | after repair | CPU per delivered embedding | share of cores | finality "
        "p50 / max | peak RSS MB (bootstrap / validator / encoder process) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for r in rows:
        rss = r["peak_rss_mb"]
        lines.append(
            f"| {r['encoders']} x {r['validators']} ({r['processes']}) "
            f"| {r['finalized']}/{r['rounds']} "
            f"| {_pct(r['reveals_at_deadline'], r['reveals_expected'])} "
            f"| {_pct(r['reveals_after_repair'], r['reveals_expected'])} "
            f"| {r['cpu_ms_per_delivery']} ms = {r['x_verify']}x verify ({r['verify_ms']} ms) "
            f"| {round(100 * (r['core_share'] or 0))} % "
            f"| {_s(r['latency_p50'])} / {_s(r['latency_max'])} "
            f"| {rss.get('bootstrap', '-')} / {rss.get('validator', '-')} / "
            f"{rss.get('encoder', '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rungs", default=RUNGS, help=f"comma list of ExV (default {RUNGS})")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--round-seconds", type=int, default=None, help="round length (default: the testnet's)"
    )
    ap.add_argument("--out", type=Path, default=Path("bench-scale-out"))
    ap.add_argument("--lock", type=Path, default=None, help="flock this file around each rung")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for e, v in parse_rungs(args.rungs):
        print(f"bench_scale: rung {e}x{v} ...", file=sys.stderr, flush=True)
        row = run_rung(e, v, args.rounds, args.out / f"{e}x{v}", args.lock, args.round_seconds)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=1))
    text = table(rows)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
