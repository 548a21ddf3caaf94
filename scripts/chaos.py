"""Chaos suite: faults injected into a real dlnet network on 127.0.0.1, one scenario at a time.

Each scenario starts a fresh small network (a relay-only bootstrap, 4 validators of equal stake,
3 light encoders, all separate `dlnet run` processes, as `dlnet testnet` starts them), injects
its fault at a fixed point of the round clock (kill -9 and restart, SIGSTOP/SIGCONT, a
byzantine validator, a hostile peer), lets the rounds settle, stops every process by PID and
reads the validators' stores. Per scenario it reports:

- rounds finalized / expected: a round is *expected* to finalize when the honest validators
  that were up and undisturbed for the whole round hold more than 2/3 of the stake; a round
  in which validators holding >= 1/3 of the stake were down for the whole round must have
  *no* certificate (`unexpected` counts the ones that do);
- conflicting certificates: distinct verified certified result digests for one round across
  all honest validators' stores, summed over the rounds (must be 0);
- messages lost: for every honest validator undisturbed in a round, the reveals of the
  undisturbed encoders' commits it does not hold, plus the commits it lacks that another
  honest validator holds (must be 0);
- crashes: honest processes that exited other than by the script's own kill (must be 0);
- fake encoders: certified encoders that no encoder process of the network holds the key of.

`python scripts/chaos.py` runs every scenario (~30 min on 2 cores); `--scenario NAME`
(repeatable) a subset, `--list` names them, `--json PATH` writes the report. Scenarios whose
feature (a CLI flag, a hostile-peer mode, a persistent peer id) this tree lacks report
`unsupported`; a network that does not come up reports `error`, one in which no round was
expected either way `inconclusive`. Exit code: 0 when every scenario passed or is unsupported,
1 otherwise, 2 for a bad argument. If the nodes come up only after round 1 has started (a
loaded machine), the scenario's rounds start with the first round after they are all up.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlnet.node import report, testnet
from dlnet.node.keyfile import write_key
from dlnet.node.store import Store
from dlnet.protocol.config import NetworkConfig, parse_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.result import decode_result, result_digest
from dlnet.protocol.rounds import RoundTimes, round_at, round_times

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile_peer.py"
VALIDATORS = 4
ENCODERS = 3
ENCODER_KIND = "noise"  # no model to load: 8 processes fit 2 cores
ROUND_SECONDS = 20
ROUNDS = 5
# From the launch until round 1 starts: 8 processes start at once on 2 cores.
STARTUP_SECONDS = 45.0
# How long a node may take to come up (write its node.json) on a loaded machine.
UP_SECONDS = 120.0
# A node SIGCONTed or restarted is counted as disturbed for this long after it is back.
RECOVERY_SECONDS = 5.0
# After the last round's finality deadline, how long to wait for every store to record it.
SETTLE_SECONDS = 8.0
BYZANTINE_VALIDATOR = f"validator-{VALIDATORS - 1}"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Unsupported(Exception):
    """This tree lacks what the scenario exercises; the text says what."""


@dataclass
class Net:
    """One running network of a scenario and what the scenario did to it."""

    out: Path
    cfg: NetworkConfig
    rounds: int
    procs: dict[str, testnet.Proc]
    byzantine: set[str]
    boot_addr: str
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)  # down by our hand: not a crash
    stopped: set[str] = field(default_factory=set)  # SIGSTOPped now
    down: dict[str, list[list[float]]] = field(default_factory=dict)  # name -> [[t0, t1]]
    crashes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)  # scenario-specific, must be True
    first: int = 1  # the scenario's first round (later than 1 when the nodes came up late)

    def times(self, k: int) -> RoundTimes:
        """The clock of the scenario's k-th round (k = 1 is `first`)."""
        return round_times(self.cfg, self.first + k - 1)

    def start_of(self, k: int) -> float:
        return self.times(k).start

    @property
    def round_range(self) -> range:
        return range(self.first, self.first + self.rounds)

    def proc(self, name: str) -> testnet.Proc:
        return self.procs[name]

    def watch(self) -> None:
        """Record every honest process that exited without our hand (a crash)."""
        for name, p in self.procs.items():
            if p.exit_code is None and p.popen.poll() is not None:
                p.exit_code = p.popen.returncode
                if name in self.byzantine:
                    self.notes.append(f"byzantine {name} exited with {p.exit_code}")
                elif name not in self.killed:
                    self.crashes.append(
                        {"node": name, "exit_code": p.exit_code, "at": round(time.time(), 1)}
                    )
                    print(f"chaos: {name} exited with {p.exit_code}", flush=True)

    def sleep_until(self, t: float) -> None:
        while True:
            self.watch()
            left = t - time.time()
            if left <= 0:
                return
            time.sleep(min(0.5, left))

    def _begin(self, name: str) -> None:
        self.down.setdefault(name, []).append([time.time(), float("inf")])

    def _end(self, name: str) -> None:
        self.down[name][-1][1] = time.time() + RECOVERY_SECONDS

    def kill9(self, name: str) -> None:
        p = self.proc(name)
        self.killed.add(name)
        self._begin(name)
        p.popen.send_signal(signal.SIGKILL)
        p.popen.wait()
        p.exit_code = p.popen.returncode
        print(f"chaos: kill -9 {name} (pid {p.popen.pid})", flush=True)

    def restart(self, name: str) -> dict[str, Any]:
        p = self.proc(name)
        testnet.restart(p)
        self.killed.discard(name)
        info = testnet._wait_info(p, 90.0)
        self._end(name)
        print(f"chaos: restarted {name} (pid {p.popen.pid})", flush=True)
        return info

    def sigstop(self, *names: str) -> None:
        for name in names:
            self.proc(name).popen.send_signal(signal.SIGSTOP)
            self.stopped.add(name)
            self._begin(name)
        print(f"chaos: SIGSTOP {', '.join(names)}", flush=True)

    def sigcont(self, *names: str) -> None:
        for name in names:
            self.proc(name).popen.send_signal(signal.SIGCONT)
            self.stopped.discard(name)
            self._end(name)
        print(f"chaos: SIGCONT {', '.join(names)}", flush=True)

    def hostile(self, mode: str, seconds: float) -> None:
        """A hostile peer (tests/hostile_peer.py --mode MODE) connected to validator-0."""
        addr = report.read_info(self.proc("validator-0").data_dir)["addrs"][0]
        log = open(self.out / f"hostile-{mode}.log", "wb")  # noqa: SIM115 - the process owns it
        cmd = [sys.executable, str(HOSTILE), "--mode", mode, "--config", str(self.config_path)]
        cmd += ["--bootstrap", addr, "--seconds", str(seconds)]
        self.extra.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        log.close()
        print(f"chaos: hostile peer --mode {mode} against validator-0", flush=True)

    @property
    def config_path(self) -> Path:
        return self.out / "network.toml"

    def stop(self) -> None:
        """Every process we started, by PID, whatever state it is in (a second Ctrl-C while
        this runs is ignored, so that nothing is left behind)."""
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> None:
        for p in self.procs.values():
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        for e in self.extra:
            if e.poll() is None:
                e.kill()
            e.wait()
        self.watch()
        testnet._stop(list(self.procs.values()))


def _keyed(out: Path, name: str) -> tuple[Path, SigningKey]:
    key = SigningKey.generate()
    path = out / "keys" / f"{name}.key"
    write_key(path, key)
    return path, key


def launch(out: Path, rounds: int, byzantine: dict[str, str], round_seconds: int) -> Net:
    """A fresh network in ``out``: genesis by `dlnet init`, then the processes; round 1 starts
    STARTUP_SECONDS from now."""
    (out / "keys").mkdir(parents=True)
    vkeys = [_keyed(out, f"validator-{i}") for i in range(VALIDATORS)]
    subprocess.run(
        [sys.executable, "-m", "dlnet.node", "init", "--out", str(out / "network.toml")]
        + [f"--validator=@{path}:100" for path, _ in vkeys]
        + ["--genesis-in", str(STARTUP_SECONDS - round_seconds)]
        + ["--round-seconds", str(round_seconds), "--name", "dlnet-chaos"],
        check=True,
        capture_output=True,
    )
    config = out / "network.toml"
    cfg = parse_config(config.read_text())
    procs: dict[str, testnet.Proc] = {}
    net = Net(out, cfg, rounds, procs, set(byzantine), "")
    try:
        boot = testnet._start(
            "bootstrap",
            "bootstrap",
            "relay",
            out,
            testnet._node_cmd(
                config,
                out / "nodes" / "bootstrap",
                ["--max-peers", str(testnet.BOOTSTRAP_MAX_PEERS)],
            ),
        )
        procs["bootstrap"] = boot
        net.boot_addr = testnet._wait_info(boot, UP_SECONDS)["addrs"][0]
        for i, (path, key) in enumerate(vkeys):
            name = f"validator-{i}"
            args = ["--role", "validator", "--key", str(path), "--bootstrap", net.boot_addr]
            if name in byzantine:
                args += ["--byzantine", byzantine[name]]
            cmd = testnet._node_cmd(config, out / "nodes" / name, args)
            p = testnet._start(name, "validator", "validator", out, cmd)
            p.public_key = key.public_key.hex()
            procs[name] = p
        for i in range(ENCODERS):
            name = f"encoder-{i}"
            path, key = _keyed(out, name)
            args = ["--role", "encoder", "--key", str(path), "--bootstrap", net.boot_addr]
            args += testnet._encoder_args(ENCODER_KIND, i)
            cmd = testnet._node_cmd(config, out / "nodes" / name, args)
            p = testnet._start(name, "encoder", ENCODER_KIND, out, cmd)
            p.public_key = key.public_key.hex()
            procs[name] = p
        for p in procs.values():
            testnet._wait_info(p, UP_SECONDS)
        # On a loaded machine the nodes may come up after round 1 has started: the scenario
        # then starts with the first round that starts after every node is up.
        net.first = max(1, round_at(cfg, time.time()) + 1)
        if net.first > 1:
            print(f"chaos: nodes up late; the scenario starts at round {net.first}", flush=True)
    except BaseException:
        net.stop()
        raise
    return net


# ---------------------------------------------------------------------------- feature probes


def need_byzantine(mode: str) -> None:
    # The option is hidden from --help (test only); click rejects an unknown option before it
    # shows the help, so the exit code tells whether `dlnet run` has it.
    cmd = [sys.executable, "-m", "dlnet.node", "run", "--byzantine", mode, "--help"]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        raise Unsupported("`dlnet run` has no --byzantine option")
    try:
        modes = importlib.import_module("dlnet.node.byzantine").MODES
    except (ImportError, AttributeError):
        return
    if mode not in modes:
        raise Unsupported(f"`dlnet run --byzantine` has no mode {mode} (modes: {modes})")


def need_hostile(mode: str) -> None:
    done = subprocess.run([sys.executable, str(HOSTILE), "--help"], capture_output=True, text=True)
    if "--mode" not in done.stdout or mode not in HOSTILE.read_text():
        raise Unsupported(f"tests/hostile_peer.py has no --mode {mode}")


# ---------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    act: Callable[[Net], None]
    rounds: int = ROUNDS
    byzantine: str | None = None  # --byzantine MODE for BYZANTINE_VALIDATOR
    probe: Callable[[], None] | None = None


def _kill_restart(net: Net) -> None:
    t = net.times(2)
    net.sleep_until(t.commit_deadline + 1.0)  # commits held, reveals under way
    net.kill9("validator-1")
    net.sleep_until(time.time() + 3.0)
    net.restart("validator-1")


def _stop_for(names: tuple[str, ...], at: float, seconds: float) -> Callable[[Net], None]:
    def act(net: Net) -> None:
        net.sleep_until(net.start_of(2) + at)
        net.sigstop(*names)
        net.sleep_until(time.time() + seconds)
        net.sigcont(*names)

    return act


def _kill_bootstrap_restart(net: Net) -> None:
    before = report.read_info(net.proc("validator-1").data_dir)
    net.sleep_until(net.start_of(2) + 2.0)
    net.kill9("bootstrap")
    net.sleep_until(net.times(2).commit_deadline + 1.0)
    net.kill9("validator-1")
    net.sleep_until(time.time() + 3.0)
    after = net.restart("validator-1")
    back = time.time()
    if after.get("peer_id") != before.get("peer_id"):
        raise Unsupported("the restarted validator has a new peer id (no persistent peer key)")
    # It must rejoin without the bootstrap: certificates of every round after it is back.
    net.checks["restarted validator rejoins"] = False
    net.notes.append(f"validator-1 back at {back:.0f}")


def _byzantine(net: Net) -> None:
    net.sleep_until(net.start_of(1))


def _hostile(mode: str) -> Callable[[Net], None]:
    def act(net: Net) -> None:
        net.sleep_until(net.start_of(1))
        net.hostile(mode, (net.rounds + 1) * net.cfg.timing.round_seconds)

    return act


def _scenarios() -> list[Scenario]:
    out = [
        Scenario(
            "kill-restart-validator",
            "kill -9 validator-1 one second after round 2's commit deadline, restart it on the "
            "same data dir and key 3 s later",
            _kill_restart,
        ),
        Scenario(
            "stop-validator",
            "SIGSTOP validator-1 5 s into round 2 for 40 s, then SIGCONT",
            _stop_for(("validator-1",), 5.0, 40.0),
        ),
        Scenario(
            "stop-relay",
            "SIGSTOP the bootstrap (the relay every node dialled) 5 s into round 2 for 40 s",
            _stop_for(("bootstrap",), 5.0, 40.0),
        ),
        Scenario(
            "stop-encoder",
            "SIGSTOP encoder-0 (an encoder that relays gossip) 5 s into round 2 for 40 s",
            _stop_for(("encoder-0",), 5.0, 40.0),
        ),
        Scenario(
            "kill-bootstrap-restart",
            "kill -9 the bootstrap in round 2 (for good), then kill -9 and restart validator-1: it "
            "must rejoin from its saved peers (needs a persistent peer id)",
            _kill_bootstrap_restart,
        ),
        Scenario(
            "stop-two-of-four",
            "SIGSTOP validator-2 and validator-3 (1/2 of the stake) 4 s into round 2 for 60 s: "
            "rounds inside the stop must have no certificate; after SIGCONT rounds finalize again",
            _stop_for(("validator-2", "validator-3"), 4.0, 60.0),
            rounds=6,
        ),
    ]
    for mode in ("inverted", "fake-encoders", "late-attest", "spoiled-probe"):
        out.append(
            Scenario(
                f"byzantine-{mode}",
                f"{BYZANTINE_VALIDATOR} (1/4 of the stake) runs with --byzantine {mode}",
                _byzantine,
                byzantine=mode,
                probe=lambda mode=mode: need_byzantine(mode),  # type: ignore[misc]
            )
        )
    for mode in ("poison-sync", "flood-sync"):
        out.append(
            Scenario(
                mode,
                f"a peer (tests/hostile_peer.py --mode {mode}) connects to validator-0 in round 1 "
                "and stays for the whole run",
                _hostile(mode),
                probe=lambda mode=mode: need_hostile(mode),  # type: ignore[misc]
            )
        )
    return out


SCENARIOS: dict[str, Scenario] = {s.name: s for s in _scenarios()}

# ---------------------------------------------------------------------------- evaluation


def _overlaps(spans: list[list[float]], lo: float, hi: float) -> bool:
    return any(t0 <= hi and t1 >= lo for t0, t1 in spans)


def _covers(spans: list[list[float]], lo: float, hi: float) -> bool:
    return any(t0 <= lo and t1 - RECOVERY_SECONDS >= hi for t0, t1 in spans)


@contextlib.contextmanager
def _stores(net: Net, names: list[str]) -> Iterator[dict[str, Store]]:
    opened: dict[str, Store] = {}
    try:
        for name in names:
            path = net.proc(name).data_dir / report.STORE_FILE
            if path.exists():
                opened[name] = Store.open(path)
        yield opened
    finally:
        for st in opened.values():
            st.close()


def evaluate(net: Net) -> dict[str, Any]:
    cfg = net.cfg
    validators = [n for n, p in net.procs.items() if p.role == "validator"]
    honest = [n for n in validators if n not in net.byzantine]
    encoders = {n: p.public_key for n, p in net.procs.items() if p.role == "encoder"}
    real = set(encoders.values())
    stake = {n: cfg.stake_of(bytes.fromhex(net.proc(n).public_key or "")) for n in validators}
    rounds: list[dict[str, Any]] = []
    with _stores(net, honest) as stores:
        for rnd in net.round_range:
            t = round_times(cfg, rnd)
            lo, hi = t.start, t.finality_deadline

            def disturbed(name: str, lo: float = lo, hi: float = hi) -> bool:
                return _overlaps(net.down.get(name, []), lo, hi)

            live = sum(stake[n] for n in honest if not disturbed(n))
            gone = sum(stake[n] for n in validators if _covers(net.down.get(n, []), lo, hi))
            expect = "final" if 3 * live > 2 * cfg.total_stake else "either"
            if 3 * gone >= cfg.total_stake:
                expect = "not-final"
            digests: set[str] = set()
            fake = empty = 0
            holders: list[str] = []
            for name, st in stores.items():
                cert = report.verified_certificate(st, cfg, rnd)
                if cert is None:
                    continue
                holders.append(name)
                digests.add(result_digest(cert.result).hex())
                fake = max(fake, sum(e.hex() not in real for e in cert.result.encoders))
                empty += not cert.result.encoders
            reveals = {
                name: json.loads(st.get_round_state(rnd, "reveals") or b"null")
                for name, st in stores.items()
            }
            # What each validator computed (and voted for): more than one digest is a split.
            own = {
                name: result_digest(decode_result(raw)).hex()[:16]
                for name, st in stores.items()
                if (raw := st.get_round_state(rnd, "result")) is not None
            }
            held_somewhere = {e for r in reveals.values() if r for e in r}
            lost: dict[str, int] = {}
            unrecorded: list[str] = []
            for name in honest:
                if disturbed(name):
                    continue
                # A certificate the network made and this validator does not hold.
                n = int(bool(holders) and name not in holders)
                mine = reveals.get(name)
                if mine is None:
                    unrecorded.append(name)  # it never scored the round
                    n += 1
                else:
                    n += sum(1 for e in held_somewhere if e not in mine)  # commits it lacks
                    for enc_name, key in encoders.items():
                        if key in mine and not disturbed(enc_name):
                            n += mine[key]["expected"] - mine[key]["held"]
                if n:
                    lost[name] = n
            finalized = bool(digests) and not empty
            rounds.append(
                {
                    "round": rnd,
                    "expect": expect,
                    "finalized": finalized,
                    "certified_by": holders,
                    "digests": sorted(digests),
                    "conflicts": max(0, len(digests) - 1),
                    "fake_encoders": fake,
                    "empty_certificates": empty,
                    "lost": lost,
                    "unrecorded": unrecorded,
                    "computed": own,
                    "disturbed": sorted(n for n in net.procs if disturbed(n)),
                }
            )
        if "restarted validator rejoins" in net.checks:
            back = max(t1 for _, t1 in net.down["validator-1"])
            after = [r for r in rounds if r["finalized"] and r["round"] > round_at(cfg, back)]
            net.checks["restarted validator rejoins"] = bool(after) and all(
                "validator-1" in r["certified_by"] for r in after
            )
        counters = {name: st.counters() for name, st in stores.items()}
    must = [r for r in rounds if r["expect"] == "final"]
    must_not = [r for r in rounds if r["expect"] == "not-final"]
    lost_total = sum(v for r in rounds for v in r["lost"].values())
    summary = {
        "final": sum(r["finalized"] for r in must),
        "expected": len(must),
        "unexpected": sum(bool(r["digests"]) for r in must_not),
        "not_final_rounds": len(must_not),
        "conflicts": sum(r["conflicts"] for r in rounds),
        "lost": lost_total,
        "crashes": len(net.crashes),
        "fake_encoders": sum(r["fake_encoders"] for r in rounds),
    }
    ok = (
        summary["final"] == summary["expected"]
        and summary["unexpected"] == 0
        and summary["conflicts"] == 0
        and summary["lost"] == 0
        and summary["crashes"] == 0
        and summary["fake_encoders"] == 0
        and all(net.checks.values())
    )
    logs = {
        n: (p.data_dir / "node.log").stat().st_size
        for n, p in net.procs.items()
        if (p.data_dir / "node.log").exists()
    }
    tracebacks = {
        n: (p.data_dir / "node.log").read_bytes().count(b"Traceback")
        for n, p in net.procs.items()
        if (p.data_dir / "node.log").exists()
    }
    return {
        **summary,
        # Nothing was expected either way (no round measured): no verdict.
        "result": "inconclusive" if ok and not must and not must_not else "pass" if ok else "FAIL",
        "first_round": net.first,
        "checks": dict(net.checks),
        "rounds": rounds,
        "crash_list": net.crashes,
        "down": {n: [[round(a, 1), round(b, 1)] for a, b in s] for n, s in net.down.items()},
        "log_kb": {n: round(v / 1024, 1) for n, v in logs.items()},
        "tracebacks": {n: v for n, v in tracebacks.items() if v},
        "counters": counters,
        "exit_codes": {n: p.exit_code for n, p in net.procs.items()},
        "notes": net.notes,
    }


def run_scenario(sc: Scenario, base: Path, round_seconds: int = ROUND_SECONDS) -> dict[str, Any]:
    out = base / sc.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    began = time.time()
    row: dict[str, Any] = {"scenario": sc.name, "doc": sc.doc, "out": str(out)}
    # The machine's 1-min load average at the start and the end: timing faults under a load
    # far above the core count say more about the machine than about the network.
    load = [round(os.getloadavg()[0], 1)]
    try:
        if sc.probe is not None:
            sc.probe()
    except Unsupported as exc:
        return {**row, "result": "unsupported", "reason": str(exc), "seconds": 0}
    byz = {BYZANTINE_VALIDATOR: sc.byzantine} if sc.byzantine else {}
    net = launch(out, sc.rounds, byz, round_seconds)
    unsupported: str | None = None
    try:
        try:
            sc.act(net)
        except Unsupported as exc:
            unsupported = str(exc)
        # An unsupported scenario stops at once: nothing it would measure means anything.
        end = net.times(sc.rounds).finality_deadline + SETTLE_SECONDS
        if unsupported is not None:
            end = 0.0
        dirs = [net.proc(n).data_dir for n in net.procs if n.startswith("validator-")]
        while time.time() < end and not report.all_settled(dirs, net.round_range):
            net.sleep_until(time.time() + 1.0)
        net.watch()
    finally:
        net.stop()
    row.update(evaluate(net))
    if unsupported is not None:
        row.update(result="unsupported", reason=unsupported)
    row["seconds"] = round(time.time() - began)
    row["load"] = [*load, round(os.getloadavg()[0], 1)]
    (out / "chaos.json").write_text(json.dumps(row, indent=1))
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("scenario", "result", "final/exp", "no-cert", "conflicts", "lost", "crashes", "s")
    head += ("load",)
    lines = [f"{head[0]:<24} {head[1]:<12} " + " ".join(f"{h:>9}" for h in head[2:])]
    for r in rows:
        if "final" not in r or r["result"] == "unsupported":
            lines.append(f"{r['scenario']:<24} {r['result']:<12} {r.get('reason', '')}")
            continue
        no_cert = f"{r['not_final_rounds'] - r['unexpected']}/{r['not_final_rounds']}"
        cells = (
            f"{r['final']}/{r['expected']}",
            no_cert,
            r["conflicts"],
            r["lost"],
            r["crashes"],
            r["seconds"],
            "-".join(str(x) for x in r.get("load", [])),
        )
        lines.append(
            f"{r['scenario']:<24} {r['result']:<12} " + " ".join(f"{c!s:>9}" for c in cells)
        )
        if r.get("reason"):
            lines.append(f"{'':<24} {r['reason']}")
        missed = [
            f"{x['round']} ({len(set(x.get('computed', {}).values()))} results computed)"
            for x in r["rounds"]
            if x["expect"] == "final" and not x["finalized"]
        ]
        if missed:
            lines.append(f"{'':<24} not finalized: round {', '.join(missed)}")
        failed = [k for k, v in r["checks"].items() if not v]
        if failed or r["fake_encoders"]:
            lines.append(
                f"{'':<24} failed checks: {', '.join(failed) or '-'}; "
                f"fake encoders certified: {r['fake_encoders']}"
            )
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and SIGTERM stop every node by PID on the way out, also when this script was
    # started in the background (where a shell leaves SIGINT ignored).
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", default=[], metavar="NAME")
    ap.add_argument("--list", action="store_true", help="name and describe every scenario")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH")
    ap.add_argument("--out", type=Path, default=None, help="where the networks' data dirs go")
    ap.add_argument("--round-seconds", type=int, default=ROUND_SECONDS)
    args = ap.parse_args(argv)
    if args.list:
        for sc in SCENARIOS.values():
            print(f"{sc.name:<24} {sc.doc}")
        return 0
    unknown = [n for n in args.scenario if n not in SCENARIOS]
    if unknown:
        print(
            f"chaos: unknown scenario {', '.join(unknown)}; see --list for the names",
            file=sys.stderr,
        )
        return 2
    chosen = [SCENARIOS[n] for n in args.scenario] or list(SCENARIOS.values())
    base = args.out or Path(tempfile.mkdtemp(prefix="dlnet-chaos-"))
    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        for sc in chosen:
            print(f"chaos: {sc.name}: {sc.doc}", flush=True)
            try:
                rows.append(run_scenario(sc, base, args.round_seconds))
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                # The network did not come up (its processes are stopped already).
                rows.append({"scenario": sc.name, "result": "error", "reason": str(exc)})
            print(f"chaos: {sc.name}: {rows[-1]['result']}", flush=True)
    except KeyboardInterrupt:
        print("chaos: interrupted; every process stopped", file=sys.stderr)
        interrupted = True
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"out": str(base), "scenarios": rows}, indent=1))
        print(f"chaos: wrote {args.json}")
    bad = any(r["result"] in ("FAIL", "error", "inconclusive") for r in rows)
    bad = bad or len(rows) < len(chosen)
    return 130 if interrupted else 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
