"""`dlnet testnet --emit-compose DIR`: one container per node, checked by parsing the YAML
(there is no Docker engine here), and the committed docker/compose.yaml is a fresh one."""

from __future__ import annotations

import json
import shlex
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dlnet.node import compose
from dlnet.node.cli import cli
from dlnet.node.testnet import ADVERSARIES, DEFAULT_ENCODERS
from dlnet.protocol.config import parse_config

REPO = Path(__file__).resolve().parent.parent


def emit(out: Path, *args: str) -> dict[str, Any]:
    done = CliRunner().invoke(cli, ["testnet", *args, "--emit-compose", str(out)])
    assert done.exit_code == 0, done.output
    doc: dict[str, Any] = yaml.safe_load((out / "compose.yaml").read_text())
    return doc


def run_args(svc: dict[str, Any]) -> list[str]:
    """The `dlnet` argument list of a service's shell command (compose's $$ is a $)."""
    assert svc["entrypoint"] == ["sh", "-c"]
    (line,) = svc["command"]
    words = shlex.split(line.replace("$$", "$"))
    assert words[:2] == ["exec", "dlnet"]
    return words[2:]


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_node_is_a_container(tmp_path: Path) -> None:
    doc = emit(tmp_path)
    services = doc["services"]
    n_encoders = sum(n for _, n in DEFAULT_ENCODERS)
    assert len(services) == 1 + 3 + n_encoders
    cfg = parse_config((tmp_path / "testnet" / "network.toml").read_text())
    assert abs(cfg.genesis_time - (time.time() + 180)) < 60
    validator_keys = set()
    host_ports = set()
    for name, svc in services.items():
        args = run_args(svc)
        assert args[:3] == ["--log-format", "json", "run"]
        assert option(args, "--config") == "/net/network.toml"
        assert option(args, "--data-dir") == "/data"
        assert option(args, "--api") == "0.0.0.0:5052"
        assert option(args, "--listen") == "$(python -m dlnet.node.compose listen)"
        assert f"{name}-data:/data" in svc["volumes"]
        assert "./testnet:/net:ro" in svc["volumes"]
        assert doc["volumes"][f"{name}-data"] == {}
        assert svc["image"] == "dlnet:local" and svc["networks"] == ["dlnet"]
        assert svc["expose"] == ["9000"]
        (port,) = svc["ports"]
        assert port.startswith("127.0.0.1:") and port.endswith(":5052")
        host_ports.add(port)
        check = svc["healthcheck"]
        assert check["test"][:3] == ["CMD", "python", "-c"]
        assert "http://127.0.0.1:5052/v1/health" in check["test"][3]
        if name == "bootstrap":
            assert "--bootstrap" not in args and "--role" not in args
            continue
        assert option(args, "--bootstrap") == "$(python -m dlnet.node.compose bootstrap)"
        assert "bootstrap-data:/bootstrap:ro" in svc["volumes"]
        assert svc["depends_on"] == {"bootstrap": {"condition": "service_started"}}
        role = option(args, "--role")
        assert name.startswith(role)
        key = tmp_path / "testnet" / "keys" / f"{name}.key"
        assert option(args, "--key") == f"/net/keys/{name}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        if role == "validator":
            validator_keys.add(bytes.fromhex(key.read_text().split("public ")[1].split()[0]))
        else:
            assert option(args, "--model").startswith("dlnet.node.models.kinds:")
    assert len(host_ports) == len(services)  # one host port per node
    assert validator_keys == {v.pubkey for v in cfg.validators}
    kinds = [n.split("-", 2)[2] for n in services if n.startswith("encoder-")]
    assert sorted(set(kinds)) == sorted({"honest", *ADVERSARIES})


def test_committed_compose_file_is_the_generated_one(tmp_path: Path) -> None:
    emit(tmp_path)
    assert (tmp_path / "compose.yaml").read_text() == (REPO / "docker" / "compose.yaml").read_text()


def test_a_smaller_plan(tmp_path: Path) -> None:
    doc = emit(tmp_path, "--validators", "1", "--encoders", "honest:2", "--genesis-in", "600")
    assert list(doc["services"]) == [
        "bootstrap",
        "validator-0",
        "encoder-0-honest",
        "encoder-1-honest",
    ]


def test_bootstrap_address_comes_from_a_fresh_node_json(tmp_path: Path) -> None:
    info = tmp_path / "node.json"
    addr = "/ip4/172.18.0.2/tcp/9000/p2p/12D3KooWBoot"
    info.write_text(json.dumps({"addrs": [addr], "live": {"updated": time.time() - 600}}))
    with pytest.raises(SystemExit, match="no running bootstrap"):
        compose.bootstrap_addr(info, timeout=0.5)  # a stale file from an earlier run
    info.write_text(json.dumps({"addrs": [addr], "live": {"updated": time.time()}}))
    assert compose.bootstrap_addr(info, timeout=5) == addr
    assert compose.own_listen().startswith("/ip4/") and compose.own_listen().endswith("/tcp/9000")
