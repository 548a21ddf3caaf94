"""Real `dlnet run` processes: one process per data dir (LOCK), a data dir stays with its
network, the peer id survives a restart, and a node restarted while its bootstrap is dead
reconnects to the peers it saved (issue 9, findings 7 and 8)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netutil import dlnet, kill_pid, wait_json

# A few relay processes without models: light enough to run beside a testnet (conftest.py).
pytestmark = [pytest.mark.network, pytest.mark.timeout(240), pytest.mark.xdist_group("hosts")]


class Nodes:
    """`dlnet run` relay processes, each on its own data dir; all killed by PID at the end."""

    def __init__(self, root: Path, config: Path) -> None:
        self.root = root
        self.config = config
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *bootstrap: str, config: Path | None = None) -> dict[str, Any]:
        data = self.root / name
        data.mkdir(exist_ok=True)
        (data / "node.json").unlink(missing_ok=True)
        args = ["run", "--config", str(config or self.config), "--data-dir", str(data)]
        args += ["--api", "127.0.0.1:0", "--gossip", "discovery_interval=0.5"]
        for addr in bootstrap:
            args += ["--bootstrap", addr]
        log = open(data / "run.log", "ab")  # noqa: SIM115 - the process owns it
        self.procs.append(
            subprocess.Popen([sys.executable, "-m", "dlnet.node", *args], stdout=log, stderr=log)
        )
        return wait_json(data / "node.json", 60)

    def stop_all(self) -> None:
        for proc in self.procs:
            kill_pid(proc.pid)
            proc.wait()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    dlnet("keygen", "--out", str(tmp_path / "v.key"), cwd=tmp_path)
    dlnet("init", "--validator", f"@{tmp_path / 'v.key'}", "--out", "net.toml", cwd=tmp_path)
    running = Nodes(tmp_path, tmp_path / "net.toml")
    yield running
    running.stop_all()


def api_status(info: dict[str, Any]) -> dict[str, Any]:
    with urllib.request.urlopen(info["api"] + "/v1/status", timeout=10) as answer:
        status: dict[str, Any] = json.load(answer)
    return status


def peers_of(info: dict[str, Any]) -> list[str]:
    ids: list[str] = api_status(info)["peers"]["ids"]
    return ids


def wrong_network(info: dict[str, Any]) -> int:
    counted: int = api_status(info)["counters"]["messages"].get("rejected:wrong_network", 0)
    return counted


def wait_for(check: Any, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not check():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlnet: error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_restart_without_the_bootstrap_and_data_dir_safety(nodes: Nodes, tmp_path: Path) -> None:
    a = nodes.start("a")
    boot = a["addrs"][0]
    b = nodes.start("b", boot)
    c = nodes.start("c", boot)
    assert (tmp_path / "b" / "peer.key").stat().st_mode & 0o077 == 0

    # A second process on b's data dir: refused, one line, exit 2.
    second = dlnet(
        "run", "--config", str(nodes.config), "--data-dir", str(tmp_path / "b"),
        cwd=tmp_path, expect=2,
    )  # fmt: skip
    one_line_error(second, "in use by another dlnet process", str(b["pid"]))

    # Peer exchange connects b and c directly; b saves c in peers.json.
    wait_for(lambda: c["peer_id"] in peers_of(b), 60, "b connected to c")

    def saved() -> list[str]:
        try:
            data: list[str] = json.loads((tmp_path / "b" / "peers.json").read_text())["peers"]
        except (OSError, ValueError):
            return []
        return data

    wait_for(lambda: any(c["peer_id"] in addr for addr in saved()), 30, "c in b's peers.json")

    # The bootstrap dies, and so does b; b restarts with only the dead bootstrap given.
    kill_pid(a["pid"])
    kill_pid(b["pid"])
    b2 = nodes.start("b", boot)
    assert b2["peer_id"] == b["peer_id"]  # persistent peer key: the same /p2p/ id
    wait_for(lambda: c["peer_id"] in peers_of(b2), 60, "restarted b reconnected to c")
    assert b["peer_id"] in peers_of(c)

    # A node of another network dialing c: both sides count rejected:wrong_network.
    dlnet("init", "--validator", f"@{tmp_path / 'v.key'}", "--name", "other", "--out",
          "other.toml", cwd=tmp_path)  # fmt: skip
    d = nodes.start("d", c["addrs"][0], config=tmp_path / "other.toml")
    wait_for(lambda: wrong_network(c) >= 1 and wrong_network(d) >= 1, 30, "wrong_network")
    wait_for(lambda: d["peer_id"] not in peers_of(c), 30, "d disconnected")
    log = (tmp_path / "c" / "run.log").read_text()
    assert f"peer {d['peer_id']} is on network" in log

    # b's data dir belongs to its network: another network's config is refused.
    kill_pid(b2["pid"])
    wait_for(lambda: _unlocked(tmp_path / "b"), 10, "the killed node's lock released")
    other = dlnet(
        "run", "--config", "other.toml", "--data-dir", str(tmp_path / "b"),
        cwd=tmp_path, expect=2,
    )  # fmt: skip
    one_line_error(other, "holds network", "another --data-dir")


def _unlocked(data_dir: Path) -> bool:
    fd = os.open(data_dir / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
