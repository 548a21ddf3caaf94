"""Helpers for end-to-end tests that start real node processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from dlnet.node.models import load_model
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.rounds import round_times
from dlnet.protocol.submissions import verify_answer

TEXTS = [
    "A lighthouse keeper watches the ships pass through the storm at night.",
    "Fresh bread from the bakery smells of butter and warm crust.",
]
"""What the submission tests send: two texts of one line each."""


def start_testnet(out: Path, *args: str) -> subprocess.Popen[bytes]:
    log = open(out / "driver.log", "wb")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "dlnet.node", "testnet", "--out", str(out), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_json(path: Path, timeout: float) -> dict[str, Any]:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists():
            with contextlib.suppress(json.JSONDecodeError):
                data: dict[str, Any] = json.loads(path.read_text())
                return data
        time.sleep(0.2)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def node_pids(out: Path) -> Iterator[int]:
    for info in (out / "nodes").glob("*/node.json"):
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            yield int(json.loads(info.read_text())["pid"])


def kill_pid(pid: int) -> None:
    """SIGKILL a node process of ours (never a reused PID that belongs to someone else)."""
    with contextlib.suppress(psutil.Error, ProcessLookupError):
        if "dlnet.node" in " ".join(psutil.Process(pid).cmdline()):
            os.kill(pid, signal.SIGKILL)


def finish(driver: subprocess.Popen[bytes], out: Path, timeout: float) -> int:
    """Wait for the testnet driver; whatever happens, no node process outlives the test."""
    try:
        return driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        driver.kill()
        driver.wait()
        raise AssertionError(
            f"testnet did not finish in {timeout} s; see {out}/driver.log"
        ) from exc
    finally:
        for pid in node_pids(out):
            kill_pid(pid)


def dlnet(
    *args: str, cwd: Path, expect: int = 0, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """One `dlnet` command run to its end, as an operator at a shell would; its exit code must
    be ``expect``."""
    done = subprocess.run(
        [sys.executable, "-m", "dlnet.node", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == expect, (args, done.returncode, done.stderr)
    return done


class Nodes:
    """`dlnet run` processes started in ``cwd`` (config ``network.toml`` there, log
    ``<name>.log``), stopped by PID whatever happens."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> dict[str, Any]:
        """Start node ``name`` with data dir ``cwd/name``; its node.json once it is up."""
        self.launch(name, *args)
        return wait_json(self.cwd / name / "node.json", 90)

    def launch(self, name: str, *args: str) -> None:
        """Start node ``name`` and return at once (`wait_json` its node.json)."""
        log = open(self.cwd / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it
        run = ["run", "--config", "network.toml", "--data-dir", name]
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "dlnet.node", *run, *args],
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {n}\n" + (self.cwd / f"{n}.log").read_text()[-3000:] for n in self.procs
        )

    def stop(self) -> dict[str, int]:
        """SIGTERM, as an operator's Ctrl-C would; the exit codes."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_pid(p.pid)
                codes[name] = p.wait()
        return codes

    def kill(self) -> None:
        for p in self.procs.values():
            kill_pid(p.pid)
            p.wait()


def kill_nodes_under(root: Path) -> None:
    """SIGKILL every node process whose node.json lies anywhere under ``root`` (a safety net
    for drivers that run several networks, e.g. scripts/chaos.py)."""
    for info in root.glob("**/nodes/*/node.json"):
        with contextlib.suppress(json.JSONDecodeError, KeyError, OSError):
            kill_pid(int(json.loads(info.read_text())["pid"]))


@dataclass
class Answer:
    answer: dict[str, Any]  # `dlnet embeddings`' answer, also saved in answer.json
    own: Any  # the default model's own embeddings of TEXTS (numpy, one row a text)


def submit_and_wait(cwd: Path, api: str, config: Path, cfg: NetworkConfig) -> Answer:
    """As a data owner would: `dlnet submit` TEXTS (a .jsonl file) to a validator's ``api``, then
    `dlnet embeddings --wait` until their round is final. While it waits, the default model
    embeds TEXTS here (for `check_answer`; loading it costs CPU the network should not wait
    for)."""
    (cwd / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = dlnet(
        *("submit", "--file", "texts.jsonl", "--api", api, "--config", str(config)),
        *("--out", "receipt.json"),
        cwd=cwd,
    )
    receipt = json.loads((cwd / "receipt.json").read_text())
    assert len(receipt["submissions"]) == 1, receipt
    sid = receipt["submissions"][0]["id"]
    assert out.stdout.startswith(sid) and (cwd / "dlnet-submitter.key").exists()
    rnd = receipt["submissions"][0]["round"]
    # until the round's finality deadline, and a margin
    wait = int(round_times(cfg, rnd).finality_deadline - time.time()) + 60
    args = ["--receipt", "receipt.json", "--config", str(config), "--wait", str(wait)]
    waiting = subprocess.Popen(
        [sys.executable, "-m", "dlnet.node", "embeddings", *args, "--out", "answer.json"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        own = load_model(None, cfg, {}).embed([" ".join(t.split()) for t in TEXTS])
        _, err = waiting.communicate(timeout=wait + 60)
    finally:
        kill_pid(waiting.pid)
    assert waiting.returncode == 0, ("dlnet embeddings", waiting.returncode, err)
    answer: dict[str, Any] = json.loads((cwd / "answer.json").read_text())[0]
    assert answer["id"] == sid, (answer["id"], sid)
    return Answer(answer, own)


def check_answer(cwd: Path, config: Path, cfg: NetworkConfig, got: Answer) -> None:
    """The answer `submit_and_wait` saved is final and verified; it verifies offline, from the
    genesis alone, and a tampered copy does not; each consensus embedding is the honest model's
    embedding of its text (cosine >= 0.98: the weighted mean of six honest voices behind their
    private maps and at most one adversary's cell passing at full weight — a replayed text
    related to the submitted one passes the text cut on ~3 % of cells — is at cosine 0.982 or
    more to it; docs/VALIDITY.md, sixth study)."""
    answer = got.answer
    assert answer["state"] == "final" and answer["verified"], answer["state"]
    dlnet("embeddings", "--verify", "answer.json", "--config", str(config), cwd=cwd)
    proven = verify_answer(
        cfg,
        bytes.fromhex(answer["submission"]),
        bytes.fromhex(answer["certificate"]),
        answer["shards"],
    )
    # a lone submission fills the round's first shards, one text each
    assert [p.shard for p in proven] == list(range(len(TEXTS))), proven
    assert not any(p.empty for p in proven), proven
    tampered = dict(answer, embeddings=[dict(e) for e in answer["embeddings"]])
    tampered["embeddings"].reverse()
    (cwd / "tampered.json").write_text(json.dumps([tampered]))
    refused = dlnet(
        *("embeddings", "--verify", "tampered.json", "--config", str(config)),
        cwd=cwd,
        expect=1,
    )
    assert "does not verify" in refused.stderr
    for row, emb in zip(got.own, answer["embeddings"], strict=True):
        got = np.array(emb["embedding"], dtype=np.float64)
        cos = float(row @ got / (np.linalg.norm(row) * np.linalg.norm(got)))
        assert cos >= 0.98, (emb["text"], cos)


def wait_committed(logs: list[Path], timeout: float) -> None:
    """Until each encoder log says it committed in some round (a data owner submits then: a
    round whose shards fewer than 3 checked encoders embed certifies no embedding, zeros)."""
    assert logs, "no encoder log to wait on"
    end = time.time() + timeout
    while time.time() < end:
        if all("committed to" in log.read_text(errors="replace") for log in logs):
            return
        time.sleep(2)
    raise AssertionError(f"not every encoder of {[p.parent.name for p in logs]} committed")
