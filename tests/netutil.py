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
from pathlib import Path
from typing import Any

import psutil


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
        log = open(self.cwd / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it
        run = ["run", "--config", "network.toml", "--data-dir", name]
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "dlnet.node", *run, *args],
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        return wait_json(self.cwd / name / "node.json", 90)

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
