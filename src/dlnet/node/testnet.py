"""`dlnet testnet`: a whole network on 127.0.0.1 — bootstrap, validators and encoders as
separate OS processes — run for a number of rounds, stopped by PID, and reported."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

from dlnet.node import compose, report
from dlnet.node.byzantine import MODES as BYZANTINE_MODES
from dlnet.node.dataset_io import resolve_dataset_path
from dlnet.node.identities import EncoderIdentity, render_encoders_file
from dlnet.node.keyfile import write_key
from dlnet.node.models.kinds import LEVEL_OPTIONS
from dlnet.node.retention import DEFAULT_KEEP_ROUNDS
from dlnet.protocol.config import (
    DatasetRef,
    NetworkConfig,
    ValidatorEntry,
    default_config,
    dump_config,
)
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import DEFAULT_DIFFICULTY, RegistrationParams
from dlnet.protocol.rounds import round_at, round_times

ADVERSARIES: Final = ("noise", "zero", "additive", "fabricated", "copycat", "replay", "equivocator")
DEFAULT_ENCODERS: Final[tuple[tuple[str, int], ...]] = (
    ("honest", 6),
    *tuple((k, 1) for k in ADVERSARIES),
)
MODELS: Final = "dlnet.node.models.kinds"
# kind -> (model factory, behaviour of the encoder role, option that `kind@LEVEL` sets: the
# model's, or the behaviour's if in BEHAVIOUR_OPTIONS)
KINDS: Final[dict[str, tuple[str, str, str | None]]] = {
    "honest": (f"{MODELS}:honest", "honest", None),
    "finetuned": (f"{MODELS}:finetuned", "honest", None),
    "truncated": (f"{MODELS}:truncated", "honest", "layers"),
    "noisy": (f"{MODELS}:noisy", "honest", "level"),
    "random-init": (f"{MODELS}:random_init", "honest", None),
    "static": (f"{MODELS}:static", "honest", "pooling"),
    "noise": (f"{MODELS}:noise", "honest", None),
    "zero": (f"{MODELS}:zero", "honest", None),
    "additive": (f"{MODELS}:additive", "honest", None),
    "scaled": (f"{MODELS}:scaled", "honest", "factor"),
    "cheapcopy": (f"{MODELS}:cheapcopy", "honest", "level"),
    "fabricated": (f"{MODELS}:honest", "fabricated", "jitter"),
    "leaky": (f"{MODELS}:honest", "leaky", "leak"),
    "copycat": (f"{MODELS}:noise", "copycat", None),
    "replay": (f"{MODELS}:honest", "replay", None),
    "equivocator": (f"{MODELS}:honest", "equivocator", None),
}
# Options that `kind@LEVEL` gives the behaviour (`--behaviour fabricated@JITTER`), not the model.
BEHAVIOUR_OPTIONS: Final = ("jitter", "leak")
# Time from launching the processes until round 1 starts: the bootstrap and validators come
# up, then every encoder loads torch and its model at once on 2 cores. Measured: ~40 s for ~10
# encoders on a quiet machine, 53 s for 10 on a loaded one (the bootstrap itself took 40 s
# there). Round 1 must not start before the encoders are up: an empty round is not finalized
# (docs/PROTOCOL.md §4), so the allowance grows with the number of encoders. An encoder still
# joins round 1 up to 5 s before its commit deadline.
STARTUP_SECONDS: Final = 45.0
STARTUP_SECONDS_PER_ENCODER: Final = 3.0
# Each encoder solves its registration proof at start (docs/PROTOCOL.md §2.7): about 5 s of one
# core at the default difficulty (docs/BENCHMARKS.md), 2.5 s of wall time per encoder on 2 cores;
# the number of evaluations is geometric, so one of a few encoders often takes 2-3 x the mean:
# REGISTRATION_SECONDS once more for that tail (14 s measured beside a running testnet; in the
# default testnet, 13 proofs beside 13 model loads, 22-60 s of wall time, and the slowest
# encoder missed round 1 by 7 s with 10 s here).
REGISTRATION_SECONDS: Final = 20.0
REGISTRATION_SECONDS_PER_ENCODER: Final = 2.5
ENCODERS_FILE: Final = "encoders.toml"
"""The encoders file (`dlnet run --encoders-file`) of a process running several encoders."""
# The testnet's round unless --round-seconds. 17 processes on 2 cores once overran the 6 s
# repair and attest phases of 40 s rounds; since reveals are pushed, validators attest as soon
# as they hold every reveal and a certificate forms on quorum, the default testnet finalizes
# 0.9 s after the reveal deadline (p50, idle machine) and 2-6 s with the machine at load 10,
# well inside 30 s rounds' 4 + 4 + 4 s of repair, attest and finality (docs/BENCHMARKS.md,
# "Default testnet round").
TESTNET_ROUND_SECONDS: Final = 30
# Seconds the nodes keep answering once every round is settled (clients poll every 5 s).
SERVE_GRACE: Final = 6.0
# The least start-up time of an encoder that starts late (`late_start_time`).
LATE_LOAD_SECONDS: Final = 15.0
# A node shuts libp2p down cleanly in ~2 s alone; with 17 stopping at once on 2 cores, more.
STOP_GRACE: Final = 20.0
# The bootstrap keeps every node connected (docs/BENCHMARKS.md: a hub bounded at 4 peers
# delivered 47% of a reveal burst by gossip within 10 s, one bounded at 24 delivered 100%).
BOOTSTRAP_MAX_PEERS: Final = 24
# Validators are hubs too (`dlnet testnet` only): they need every reveal. Bounded at the default
# 4 peers they evicted the bootstrap first (the highest degree), kept two other validators and
# two encoders, and so lost the reveals of every encoder connected to neither (encoders do not
# relay reveals): with 11 encoders all three validators lacked 6 encoders' reveals after repair,
# though the bootstrap held all of them (docs/SYBIL.md). Both get `TestnetPlan.hub_max_peers`.
# Hubs (bootstrap, validators) keep room for every other node process and a few spare slots
# (a reconnect is counted before the old connection is gone): every encoder process must keep
# one connection to a validator or relay, its outlet for commits and reveals.
HUB_SPARE_PEERS: Final = 4
# Many encoders share an OS process (`dlnet run --encoders-file`) once there are more than
# GROUP_ABOVE: at most ENCODERS_PER_PROCESS each (an encoder process costs ~200 MB before any
# model, a torch one ~600 MB; 100 encoders one a process do not fit 2 cores and 8 GB). Each
# process also costs CPU while it waits (its event loop, gossip heartbeats, connections: ~0.7 %
# of a core here), so at 100 encoders x 7 validators 13 processes of 8 spent ~2 s a round doing
# nothing; 24 a process makes them 5 (docs/BENCHMARKS.md, scale ladder).
GROUP_ABOVE: Final = 16
ENCODERS_PER_PROCESS: Final = 24
# The registration proof costs 2^difficulty evaluations (~70 ms each) per identity. A testnet of
# more than GROUP_ABOVE encoders lowers the genesis' difficulty so that all its proofs together
# cost about what GROUP_ABOVE encoders at the default difficulty do (100 encoders: difficulty 3,
# ~0.6 s each); the production default (protocol/registration.py) is unchanged.
REGISTRATION_BUDGET: Final = GROUP_ABOVE * 2**DEFAULT_DIFFICULTY


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class EncoderGroup:
    """One term of the `--encoders` spec: ``count`` encoders of ``kind`` that start in round
    ``start_round`` (1 unless the term ends in ``@ROUND``)."""

    kind: str
    count: int
    start_round: int = 1


def parse_encoder_groups(spec: str) -> tuple[EncoderGroup, ...]:
    """`kind:count,kind@level:count@round,...`; a custom model is `py:module:factory:count`.

    `kind@level` sets the kind's level option (KINDS), e.g. `truncated@2` (layers),
    `noisy@0.5` (noise level), `static@mean` (pooling), `fabricated@0.2` (jitter of the forged
    inverses), `leaky@0.5` (share of the full mixed into the halves), `scaled@1e6` (factor),
    `cheapcopy@0.01` (noise level); the level is checked here.
    `:count@round` starts those encoders late, in round `round` (>= 1), e.g. `cheapcopy:8@3`."""
    out: list[EncoderGroup] = []
    for part in spec.split(","):
        part = part.strip()
        body, sep, tail = part.rpartition(":")
        count_text, late, round_text = tail.partition("@")
        if not sep or not count_text.isdigit() or int(count_text) < 1:
            raise SpecError(f"--encoders: {part!r} is not kind:count (e.g. honest:6,noise:1)")
        if late and (not round_text.isdigit() or int(round_text) < 1):
            raise SpecError(
                f"--encoders: {part!r}: the start round after '@' must be an integer >= 1 "
                "(e.g. cheapcopy:8@3)"
            )
        start = int(round_text) if late else 1
        if body.startswith("py:") and body.count(":") == 2:
            out.append(EncoderGroup(body, int(count_text), start))
            continue
        kind, at, level = body.partition("@")
        if kind not in KINDS:
            raise SpecError(
                f"--encoders: unknown kind {kind!r}; kinds: {', '.join(KINDS)}, py:module:factory"
            )
        option = KINDS[kind][2]
        if at and option is None:
            raise SpecError(f"--encoders: {part!r}: kind {kind} takes no @level")
        if at and option is not None:
            try:
                LEVEL_OPTIONS[option](level)
            except ValueError as exc:
                raise SpecError(f"--encoders: {part!r}: {exc}") from None
        out.append(EncoderGroup(body, int(count_text), start))
    return tuple(out)


def parse_encoder_spec(spec: str) -> tuple[tuple[str, int], ...]:
    """The `(kind, count)` terms of an `--encoders` spec (`parse_encoder_groups`) for a network
    whose encoders all start with it (`--emit-compose`): a late start (`:count@round`, round >
    1) is refused in one line rather than silently started early."""
    groups = parse_encoder_groups(spec)
    for g in groups:
        if g.start_round > 1:
            raise SpecError(
                f"--encoders: {g.kind}:{g.count}@{g.start_round}: --emit-compose starts every "
                "encoder in round 1 — drop the @round (late starts need `dlnet testnet`)"
            )
    return tuple((g.kind, g.count) for g in groups)


def parse_seeds(spec: str, kinds: Sequence[str]) -> tuple[str, ...]:
    """`--seeds`: a comma list of kinds of the `--encoders` spec (as written there, e.g.
    `honest`, `noisy@0.5`) whose encoders the genesis names as seed encoders, or `none`."""
    if spec.strip() in ("", "none"):
        return ()
    out = []
    for part in spec.split(","):
        kind = part.strip()
        if kind not in kinds:
            raise SpecError(
                f"--seeds: {kind!r} is not a kind of --encoders ({', '.join(dict.fromkeys(kinds))})"
                " — name one of them, or none"
            )
        out.append(kind)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class TestnetPlan:
    validators: int
    encoders: tuple[tuple[str, int], ...]
    rounds: int
    out: Path
    round_seconds: int | None = None
    byzantine: tuple[int, str] = (0, "")
    """TEST ONLY: (N, MODE): the first N validators run node/byzantine.py's MODE."""
    start_rounds: tuple[int, ...] = ()
    """Per term of ``encoders``: the round its encoders start in (empty: all round 1)."""
    seeds: tuple[str, ...] = ()
    """Kinds of ``encoders`` whose encoders the genesis names as seed encoders."""
    per_process: int | None = None
    """Most encoders in one OS process (None: 1 up to GROUP_ABOVE encoders, else
    ENCODERS_PER_PROCESS)."""
    difficulty: int | None = None
    """The genesis' registration difficulty (None: `registration_difficulty`'s choice)."""

    @property
    def encoder_count(self) -> int:
        return sum(n for _, n in self.encoders)

    def encoders_per_process(self) -> int:
        if self.per_process is not None:
            return self.per_process
        return 1 if self.encoder_count <= GROUP_ABOVE else ENCODERS_PER_PROCESS

    def registration_difficulty(self) -> int:
        """The genesis' registration difficulty: the plan's if it names one, else the default,
        lowered for a big testnet so that every proof together costs about
        REGISTRATION_BUDGET evaluations."""
        if self.difficulty is not None:
            return self.difficulty
        n = self.encoder_count
        if n <= GROUP_ABOVE:
            return DEFAULT_DIFFICULTY
        return max(0, min(DEFAULT_DIFFICULTY, (REGISTRATION_BUDGET // n).bit_length() - 1))

    def hub_max_peers(self, encoder_processes: int) -> int:
        """max_peers of the bootstrap and the validators: every other node process plus spare
        slots, never below BOOTSTRAP_MAX_PEERS."""
        others = self.validators + encoder_processes
        return max(BOOTSTRAP_MAX_PEERS, others + HUB_SPARE_PEERS)


def plan_encoders(
    groups: Sequence[EncoderGroup],
) -> tuple[tuple[tuple[str, int], ...], tuple[int, ...]]:
    """`TestnetPlan.encoders` and `.start_rounds` of parsed `--encoders` groups."""
    return tuple((g.kind, g.count) for g in groups), tuple(g.start_round for g in groups)


def parse_byzantine_spec(spec: str, validators: int) -> tuple[int, str]:
    """`N:MODE`: N (1..validators) of the validators run the byzantine MODE."""
    count, sep, mode = spec.partition(":")
    if not sep or not count.isdigit() or not 1 <= int(count) <= validators:
        raise SpecError(f"expected N:MODE with N in 1..{validators}, e.g. 1:fake-encoders")
    if mode not in BYZANTINE_MODES:
        raise SpecError(f"unknown mode {mode!r}: one of {', '.join(BYZANTINE_MODES)}")
    return int(count), mode


@dataclass
class Proc:
    name: str
    role: str  # bootstrap | validator | encoder
    kind: str
    data_dir: Path
    popen: subprocess.Popen[bytes]
    public_key: str | None = None
    peak_rss: int = 0
    exit_code: int | None = None
    api: str | None = None  # the node's HTTP API URL, once its node.json names it
    log: Any = field(default=None, repr=False)
    identities: list[tuple[str, str, str]] = field(default_factory=list)
    """(encoder name, kind, public key hex) of every encoder identity the process runs."""
    cpu_seconds: float = 0.0
    """User + system CPU time of the process, last sampled while it ran."""


@dataclass(frozen=True)
class EncoderProcess:
    """One encoder OS process of a testnet: ``members`` (name, index) of `encoder_names`, all of
    one ``kind`` and start round."""

    name: str
    kind: str
    start_round: int
    members: tuple[tuple[str, int], ...]


def encoder_processes(plan: TestnetPlan) -> list[EncoderProcess]:
    """The plan's encoders grouped into processes: consecutive encoders of one kind and start
    round, at most `TestnetPlan.encoders_per_process` each. One encoder a process keeps its
    encoder's name; a group is ``encoders-<kind>-<n>``."""
    per = plan.encoders_per_process()
    out: list[EncoderProcess] = []
    runs: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for (name, kind, index), start in zip(
        encoder_names(plan), encoder_start_rounds(plan), strict=True
    ):
        runs.setdefault((kind, start), []).append((name, index))
    for (kind, start), members in runs.items():
        for lo in range(0, len(members), per):
            chunk = tuple(members[lo : lo + per])
            name = (
                chunk[0][0]
                if per == 1
                else f"encoders-{kind.replace(':', '_').replace('@', '_')}-{len(out)}"
            )
            out.append(EncoderProcess(name, kind, start, chunk))
    return out


def _node_cmd(
    config: Path, data_dir: Path, extra: Sequence[str], keep: int = DEFAULT_KEEP_ROUNDS
) -> list[str]:
    """`dlnet run` of one testnet node; ``keep``: its `--keep-rounds`."""
    return [
        sys.executable,
        "-m",
        "dlnet.node",
        "--log-level",
        "info",
        "run",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir),
        "--api",
        "127.0.0.1:0",
        "--keep-rounds",
        str(keep),
        *extra,
    ]


def _start(name: str, role: str, kind: str, out: Path, cmd: list[str]) -> Proc:
    data_dir = out / "nodes" / name
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "node.log", "wb")  # noqa: SIM115 - closed in _stop
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    popen = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    return Proc(name, role, kind, data_dir, popen, log=log)


def _wait_info(proc: Proc, timeout: float) -> dict[str, Any]:
    end = time.time() + timeout
    while time.time() < end:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}; see {proc.data_dir / 'node.log'}"
            )
        info = report.read_info(proc.data_dir)
        if info:
            return info
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not come up in {timeout:.0f} s")


def _note_apis(procs: Sequence[Proc], echo: Any) -> None:
    """Print each node's HTTP API URL as soon as its node.json names it."""
    for p in procs:
        if p.api is None:
            p.api = report.read_info(p.data_dir).get("api")
            if p.api is not None:
                echo(f"testnet: {p.name} HTTP API {p.api}")


def _sample_rss(procs: Sequence[Proc]) -> None:
    """Each running process's peak RSS so far and its CPU time (user + system) now."""
    for p in procs:
        if p.popen.poll() is not None:
            continue
        with contextlib.suppress(psutil.Error):
            ps = psutil.Process(p.popen.pid)
            p.peak_rss = max(p.peak_rss, ps.memory_info().rss)
            cpu = ps.cpu_times()
            p.cpu_seconds = max(p.cpu_seconds, cpu.user + cpu.system)


@dataclass(frozen=True)
class StartupProbe:
    """What coming up costs on this machine, under its load of the moment (`probe_startup`):
    ``load_seconds`` from spawning a Python process to its default model loaded, as an encoder
    process does before anything else, and ``proof_seconds`` for one registration-proof
    evaluation (a proof takes 2^difficulty of them on average)."""

    load_seconds: float
    proof_seconds: float


PROBE_TIMEOUT: Final = 300.0
# The measured allowance: what the processes of round 1 must compute before they are up, spread
# over the cores with a margin for contention, plus the bootstrap's and validators' own start
# and connections, plus the unluckiest proof (a proof's evaluations are geometric: the longest
# of 13 is about 3.6 times the mean). On this 2-core machine, idle: encoders up 10-35 s after
# launch; the fixed formula (STARTUP_SECONDS ... REGISTRATION_SECONDS_PER_ENCODER) allowed
# 136 s for the default plan (docs/BENCHMARKS.md, "Default testnet round").
PROBED_BASE_SECONDS: Final = 20.0
PROBED_CONTENTION: Final = 1.5
PROOF_TAIL: Final = 3.0
PROBE_MAX_CORES: Final = 4
PROBE_CODE: Final = "from dlnet.node.testnet import _probe_child; _probe_child()"


def probe_startup() -> StartupProbe | None:
    """Time an encoder process's start on this machine now (a child process that loads the
    default model, then times one proof evaluation); None if the probe failed, and the fixed
    allowance applies. It costs one model load (2-5 s), and it warms the page cache for the
    encoders that follow."""
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE_CODE, str(time.time())],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        )
        load, proof = (float(x) for x in done.stdout.split()[-2:])
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    if done.returncode != 0 or not 0 < load <= time.monotonic() - began + 1 or proof <= 0:
        return None
    return StartupProbe(load, proof)


def _probe_child() -> None:
    """The probe process: seconds since the parent spawned it until the default model is loaded,
    then seconds of one registration-proof evaluation; it exits without tearing torch down."""
    from dlnet.node.models import load_model
    from dlnet.protocol.config import ValidatorEntry, default_config
    from dlnet.protocol.registration import work

    spawned = float(sys.argv[1])
    key = SigningKey.from_seed(bytes(32)).public_key
    cfg = default_config([ValidatorEntry(key, 1)], 0, dataset_sha256=bytes(32))
    load_model(None, cfg, {})
    loaded = time.time() - spawned
    began = time.perf_counter()
    work(cfg.network_id, key, 0)
    print(f"{loaded:.3f} {time.perf_counter() - began:.5f}", flush=True)
    os._exit(0)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one, e.g. Linux)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def startup_seconds(plan: TestnetPlan, probe: StartupProbe | None = None) -> float:
    """Seconds from launch until round 1 starts.

    Measured (given a ``probe``): PROBED_BASE_SECONDS, plus PROBED_CONTENTION times the start-up
    work of round 1 — a model load per encoder process and per validator beyond 3, and every
    identity's proof at the plan's difficulty — over the cores (at most PROBE_MAX_CORES), plus
    PROOF_TAIL mean proofs for the unluckiest one. Fixed (no probe): STARTUP_SECONDS,
    STARTUP_SECONDS_PER_ENCODER per such process, REGISTRATION_SECONDS and
    REGISTRATION_SECONDS_PER_ENCODER per identity at the default difficulty, halved for each
    step the testnet lowered it."""
    groups = [g for g in encoder_processes(plan) if g.start_round == 1]
    identities = sum(len(g.members) for g in groups)
    processes = len(groups) + max(0, plan.validators - 3)
    if probe is not None:
        proof = 2.0 ** plan.registration_difficulty() * probe.proof_seconds
        work = processes * probe.load_seconds + identities * proof
        cores = max(1, min(usable_cores(), PROBE_MAX_CORES))
        return PROBED_BASE_SECONDS + PROBED_CONTENTION * work / cores + PROOF_TAIL * proof
    lowered = DEFAULT_DIFFICULTY - plan.registration_difficulty()
    per_proof = REGISTRATION_SECONDS_PER_ENCODER / 2.0**lowered
    return (
        STARTUP_SECONDS
        + STARTUP_SECONDS_PER_ENCODER * processes
        + REGISTRATION_SECONDS
        + per_proof * identities
    )


def _stop(procs: Sequence[Proc]) -> float:
    """SIGTERM every process by PID, then SIGKILL what is still there after a grace period
    (their CPU time and RSS are sampled a last time first). Returns when (epoch seconds) that
    last sample was taken: the end of the network's work, before any node's teardown."""
    _sample_rss(procs)
    stopped_at = time.time()
    for p in procs:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    end = time.time() + STOP_GRACE
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()
        p.exit_code = p.popen.returncode
        if p.log is not None:
            p.log.close()
    return stopped_at


def _encoder_args(kind: str, index: int) -> list[str]:
    """`dlnet run` options of testnet encoder ``index`` of ``kind`` in a process of its own
    (the options of its `encoder_identity`)."""
    ident = encoder_identity(kind, index, Path(), 1)
    assert ident.model is not None
    if kind.startswith("py:"):
        return ["--model", ident.model]  # a custom factory gets no testnet options
    options = dict(ident.model_options)
    seed = options.pop("seed")
    extra = [x for k, v in options.items() for x in ("--model-option", f"{k}={v}")]
    return [
        "--model",
        ident.model,
        "--model-option",
        f"seed={seed}",
        "--behaviour",
        ident.behaviour,
        *extra,
    ]


def encoder_identity(kind: str, index: int, key: Path, start: int) -> EncoderIdentity:
    """The encoders-file entry of testnet encoder ``index`` of ``kind`` (what `_encoder_args`
    gives a process of its own)."""
    first = start if start > 1 else None
    if kind.startswith("py:"):
        return EncoderIdentity(key, kind[3:], first_round=first)
    name, at, level = kind.partition("@")
    model, behaviour, option = KINDS[name]
    options = {"seed": str(index)}
    if at and option in BEHAVIOUR_OPTIONS:
        behaviour = f"{behaviour}@{level}"
    elif at and option is not None:
        options[option] = level
    return EncoderIdentity(key, model, options, behaviour, first)


def testnet_config(
    plan: TestnetPlan,
    validators: Sequence[SigningKey],
    genesis: int,
    base: Path,
    seeds: Sequence[bytes] = (),
) -> NetworkConfig:
    """The testnet's network config: equal stakes, the shipped corpus, ``seeds`` as the
    genesis' seed encoders."""
    ref = DatasetRef("builtin:corpus.txt", b"", "lines")
    data = resolve_dataset_path(ref, base).read_bytes()
    ref = DatasetRef(ref.path, hashlib.sha256(data).digest(), "lines")
    overrides: dict[str, Any] = {"name": "dlnet-testnet", "dataset": ref}
    overrides["round_seconds"] = plan.round_seconds or TESTNET_ROUND_SECONDS
    overrides["seed_encoders"] = tuple(sorted(set(seeds)))
    overrides["registration"] = RegistrationParams(difficulty=plan.registration_difficulty())
    entries = tuple(ValidatorEntry(k.public_key, 100) for k in validators)
    return default_config(entries, genesis, **overrides)


def encoder_names(plan: TestnetPlan) -> list[tuple[str, str, int]]:
    """(node name, kind, index) of every encoder of the plan, in start order."""
    kinds = [kind for kind, count in plan.encoders for _ in range(count)]
    return [(f"encoder-{i}-{kind.replace(':', '_')}", kind, i) for i, kind in enumerate(kinds)]


def encoder_start_rounds(plan: TestnetPlan) -> list[int]:
    """The start round of every encoder of `encoder_names`, in the same order."""
    starts = plan.start_rounds or (1,) * len(plan.encoders)
    return [
        start for (_, count), start in zip(plan.encoders, starts, strict=True) for _ in range(count)
    ]


def late_start_time(cfg: NetworkConfig, start_round: int, starting: int) -> float:
    """When the launcher starts the ``starting`` encoders of ``start_round`` > 1: they run with
    ``--first-round start_round``, so none commits before that round whenever it comes up, and
    they start early enough to be up for it: LATE_LOAD_SECONDS plus, per encoder starting at
    once, STARTUP_SECONDS_PER_ENCODER and REGISTRATION_SECONDS_PER_ENCODER before round
    ``start_round - 1`` starts (8 at once took 83 s on a loaded 2-core machine; this gives them
    one round more)."""
    per_encoder = STARTUP_SECONDS_PER_ENCODER + REGISTRATION_SECONDS_PER_ENCODER
    lead = LATE_LOAD_SECONDS + per_encoder * starting
    return round_times(cfg, start_round - 1).start - lead


def late_due(cfg: NetworkConfig, at: float, now: float, others_up: bool) -> bool:
    """Whether to start a late encoder planned for ``at`` (`late_start_time`) now: from ``at``
    on once every encoder started before it is up (loading at once on 2 cores, it would slow
    them down and make them miss round 1), and in any case from half a round after ``at``."""
    return now >= at and (others_up or now >= at + cfg.timing.round_seconds / 2)


def emit_compose(plan: TestnetPlan, out: Path, genesis_in: float) -> NetworkConfig:
    """Write ``out/compose.yaml`` (one container per node, see ``dlnet.node.compose``) and
    ``out/testnet/``: the genesis config (round 0 in ``genesis_in`` seconds) and every key."""
    net = out / "testnet"
    shutil.rmtree(net / "keys", ignore_errors=True)
    (net / "keys").mkdir(parents=True)
    keys: dict[str, SigningKey] = {}
    for name in [f"validator-{i}" for i in range(plan.validators)] + [
        n for n, _, _ in encoder_names(plan)
    ]:
        keys[name] = SigningKey.generate()
        write_key(net / "keys" / f"{name}.key", keys[name])
    validators = [keys[f"validator-{i}"] for i in range(plan.validators)]
    seeds = [keys[n].public_key for n, kind, _ in encoder_names(plan) if kind in plan.seeds]
    cfg = testnet_config(plan, validators, int(time.time() + genesis_in), out, seeds)
    (net / "network.toml").write_text(dump_config(cfg))

    def key_arg(name: str) -> list[str]:
        return ["--key", f"{compose.NET_DIR}/keys/{name}.key"]

    nodes: list[tuple[str, list[str]]] = [("bootstrap", ["--max-peers", str(BOOTSTRAP_MAX_PEERS)])]
    nodes += [
        (f"validator-{i}", ["--role", "validator", *key_arg(f"validator-{i}")])
        for i in range(plan.validators)
    ]
    nodes += [
        (name, ["--role", "encoder", *key_arg(name), *_encoder_args(kind, index)])
        for name, kind, index in encoder_names(plan)
    ]
    (out / "compose.yaml").write_text(compose.render(nodes))
    return cfg


def run_testnet(plan: TestnetPlan, *, echo: Any = print) -> int:
    out = plan.out
    for sub in ("nodes", "keys"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "keys").mkdir(parents=True, exist_ok=True)

    def keyed(name: str) -> tuple[Path, SigningKey]:
        key = SigningKey.generate()
        path = out / "keys" / f"{name}.key"
        write_key(path, key)
        return path, key

    vkeys = [keyed(f"validator-{i}") for i in range(plan.validators)]
    ekeys = {name: keyed(name) for name, _, _ in encoder_names(plan)}
    seeds = [ekeys[n][1].public_key for n, kind, _ in encoder_names(plan) if kind in plan.seeds]
    probe = testnet_config(plan, [k for _, k in vkeys], 0, out)
    # Round 1 starts once every process of round 1 is up; round 0 lies before it (replay
    # copies it). Encoders of a later round start later (`late_start_time`).
    groups = encoder_processes(plan)
    measured = probe_startup()
    allowance = startup_seconds(plan, measured)
    echo(
        "testnet: start-up measured: "
        + (
            f"a model load {measured.load_seconds:.1f} s, a proof evaluation "
            f"{measured.proof_seconds * 1000:.0f} ms"
            if measured is not None
            else "probe failed, the fixed allowance applies"
        )
        + f"; round 1 starts in {allowance:.0f} s"
    )
    genesis = int(time.time() + allowance) - probe.timing.round_seconds
    cfg = testnet_config(plan, [k for _, k in vkeys], genesis, out, seeds)
    config_path = out / "network.toml"
    config_path.write_text(dump_config(cfg))
    echo(
        f"testnet: network {cfg.network_id.hex()[:16]}, {plan.validators} validators, "
        f"{plan.encoder_count} encoders in {len(groups)} processes, rounds 1..{plan.rounds}, "
        f"registration difficulty {cfg.registration.difficulty}, out {out}"
    )
    hub_peers = str(plan.hub_max_peers(len(groups)))

    procs: list[Proc] = []
    # Every round of the run stays in the stores for the report (and no fewer than a node's
    # default).
    keep = max(DEFAULT_KEEP_ROUNDS, plan.rounds + 2)
    try:
        boot = _start(
            "bootstrap",
            "bootstrap",
            "relay",
            out,
            _node_cmd(
                config_path,
                out / "nodes" / "bootstrap",
                ["--max-peers", hub_peers],
                keep=keep,
            ),
        )
        procs.append(boot)
        boot_addr = _wait_info(boot, 60.0)["addrs"][0]
        for i, (path, key) in enumerate(vkeys):
            name = f"validator-{i}"
            byzantine = i < plan.byzantine[0]
            p = _start(
                name,
                "validator",
                f"byzantine:{plan.byzantine[1]}" if byzantine else "validator",
                out,
                _node_cmd(
                    config_path,
                    out / "nodes" / name,
                    [
                        "--role",
                        "validator",
                        "--key",
                        str(path),
                        "--bootstrap",
                        boot_addr,
                        "--max-peers",
                        hub_peers,
                        *(["--byzantine", plan.byzantine[1]] if byzantine else []),
                    ],
                    keep=keep,
                ),
            )
            p.public_key = key.public_key.hex()
            procs.append(p)

        def start_encoder(group: EncoderProcess) -> None:
            data_dir = out / "nodes" / group.name
            if len(group.members) == 1:
                name, index = group.members[0]
                path = ekeys[name][0]
                extra = [
                    "--key",
                    str(path),
                    *_encoder_args(group.kind, index),
                    *(["--first-round", str(group.start_round)] if group.start_round > 1 else []),
                ]
            else:
                data_dir.mkdir(parents=True, exist_ok=True)
                listed = [
                    encoder_identity(group.kind, index, ekeys[name][0].resolve(), group.start_round)
                    for name, index in group.members
                ]
                (data_dir / ENCODERS_FILE).write_text(render_encoders_file(listed))
                extra = ["--encoders-file", str(data_dir / ENCODERS_FILE)]
            p = _start(
                group.name,
                "encoder",
                group.kind,
                out,
                _node_cmd(
                    config_path,
                    data_dir,
                    ["--role", "encoder", "--bootstrap", boot_addr, *extra],
                    keep=keep,
                ),
            )
            p.identities = [
                (name, group.kind, ekeys[name][1].public_key.hex()) for name, _ in group.members
            ]
            if len(group.members) == 1:
                p.public_key = p.identities[0][2]
            procs.append(p)

        pending: list[tuple[float, EncoderProcess]] = []
        for group in groups:
            if group.start_round > 1:
                starting = encoder_start_rounds(plan).count(group.start_round)
                pending.append((late_start_time(cfg, group.start_round, starting), group))
                continue
            start_encoder(group)
        last = round_times(cfg, plan.rounds)
        end = last.finality_deadline + 8.0
        validators = [p for p in procs if p.role == "validator" and p.kind == "validator"]
        while time.time() < end:
            up = all(p.api is not None for p in procs if p.role == "encoder")
            for item in [x for x in pending if late_due(cfg, x[0], time.time(), up)]:
                pending.remove(item)
                group = item[1]
                echo(
                    f"testnet: starting {group.name} late (now round "
                    f"{round_at(cfg, time.time())}), first commit in round {group.start_round}"
                )
                start_encoder(group)
            _sample_rss(procs)
            _note_apis(procs, echo)
            for p in procs:
                if p.popen.poll() is not None and p.exit_code is None:
                    p.exit_code = p.popen.returncode
                    echo(f"testnet: {p.name} exited with {p.exit_code}; the network goes on")
            if report.all_settled([p.data_dir for p in validators], range(1, plan.rounds + 1)):
                # A `dlnet embeddings` polling every 5 s still gets the last round's answers.
                time.sleep(SERVE_GRACE)
                break
            time.sleep(1.0)
    finally:
        stopped_at = _stop(procs)
    rep = report.testnet_report(cfg, procs, range(1, plan.rounds + 1), stopped_at)
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    echo(report.format_testnet(rep))
    echo(f"testnet: wrote {out / 'report.json'}")
    return 0 if all(report.round_ok(r) for r in rep["rounds"]) else 1


def _spawn(cmd: Sequence[str], log: Any) -> subprocess.Popen[bytes]:
    """A node process in its own session (a terminal's Ctrl-C reaches only the driver, which
    stops its nodes by PID), unbuffered output into ``log``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def restart(proc: Proc) -> None:
    """Start an exited node again with the same command (data dir, key, arguments). Its log goes
    on in the same node.log; node.json is removed first, so `_wait_info` waits for the new
    process."""
    if proc.popen.poll() is None:
        raise RuntimeError(f"{proc.name} is still running (pid {proc.popen.pid})")
    if proc.log is not None:
        proc.log.close()
    (proc.data_dir / report.INFO_FILE).unlink(missing_ok=True)
    proc.log = open(proc.data_dir / "node.log", "ab")  # noqa: SIM115 - closed in _stop
    proc.popen = _spawn(proc.popen.args, proc.log)  # type: ignore[arg-type]
    proc.exit_code = None
