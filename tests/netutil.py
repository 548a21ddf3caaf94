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
