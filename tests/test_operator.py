"""What an operator meets: one-line errors (exit 2) for model, address and genesis mistakes, a
model that fails at run time, the log formats, the genesis countdown and `dlnet status`."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio
from click.testing import CliRunner
from test_cli import dlnet, one_line_error

from dlnet.node import report
from dlnet.node.addresses import AddressError, check_bootstrap, check_listen, check_port_free
from dlnet.node.cli import cli
from dlnet.node.context import NodeContext
from dlnet.node.encoder import EncoderRole
from dlnet.node.logs import adopt_libp2p_logging, setup_logging
from dlnet.node.progress import countdown_marks, duration, live_info
from dlnet.node.store import Store
from dlnet.protocol.config import ValidatorEntry, default_config
from dlnet.protocol.rounds import round_times

PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"

BAD_MODELS = """
import numpy as np

class NoEmbed:
    dim = 1024

def missing_weights(dim, seed):
    raise FileNotFoundError(2, "No such file or directory", "/weights/model.safetensors")

def no_embed(dim, seed):
    return NoEmbed()

def crashes(dim, seed):
    raise RuntimeError("CUDA error: no kernel image is available\\nsecond line\\nthird line")
"""


@pytest.fixture
def network(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    key, cfg = tmp_path / "e.key", tmp_path / "network.toml"
    assert dlnet(capsys, "keygen", "--out", str(key)).code == 0
    assert dlnet(capsys, "init", "--validator", f"@{key}", "--out", str(cfg)).code == 0
    return key, cfg


@pytest.mark.parametrize(
    ("model", "needles"),
    [
        ("badmodels:missing_weights", ("FileNotFoundError", "model.safetensors", "installed")),
        ("badmodels:no_embed", ("NoEmbed", "'embed'")),
        ("badmodels:crashes", ("RuntimeError: CUDA error",)),
        ("badimport:factory", ("importing badimport failed", "KeyError")),
        ("nosuchmodule:factory", ("cannot import nosuchmodule",)),
    ],
)
def test_model_load_failure_is_one_line(
    tmp_path: Path,
    network: tuple[Path, Path],
    model: str,
    needles: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, cfg = network
    # Difficulty 0: the encoder's registration proof (solved before its model loads, 2^6
    # scrypt evaluations on average at the default) costs nothing here.
    cfg.write_text(re.sub(r"(?m)^difficulty = \d+$", "difficulty = 0", cfg.read_text()))
    (tmp_path / "badmodels.py").write_text(BAD_MODELS)
    (tmp_path / "badimport.py").write_text("raise KeyError('settings missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    done = dlnet(
        capsys,
        *("--log-level", "warning", "run", "--config", str(cfg), "--key", str(key)),
        *("--role", "encoder", "--data-dir", str(tmp_path / "d"), "--model", model),
    )
    assert "difficulty = 0" in cfg.read_text()
    assert done.code == 2, done.err
    (line,) = done.err.strip().splitlines()
    assert line.startswith(f"dlnet: error: --model {model}: "), line
    for needle in needles:
        assert needle in line, line


def test_listen_and_bootstrap_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ("run", "--config", "x", "--data-dir", str(tmp_path / "d"))
    one_line_error(
        dlnet(capsys, *common, "--listen", "127.0.0.1:9000"),
        "--listen 127.0.0.1:9000",
        "/ip4/127.0.0.1/tcp/9000",
    )
    one_line_error(dlnet(capsys, *common, "--listen", "/ip4/127.0.0.1/udp/9000"), "TCP port")
    one_line_error(
        dlnet(capsys, *common, "--bootstrap", "/ip4/127.0.0.1/tcp/9000"),
        "--bootstrap /ip4/127.0.0.1/tcp/9000",
        "/p2p/<peer id>",
    )
    assert check_bootstrap(f"/ip4/127.0.0.1/tcp/9000/p2p/{PEER}").endswith(PEER)
    assert check_listen("/ip4/0.0.0.0/tcp/4001") == ("0.0.0.0", 4001)
    with pytest.raises(AddressError, match="/ip4/"):
        check_listen(f"/ip4/127.0.0.1/tcp/9/p2p/{PEER}")


def test_busy_listen_port_is_one_line(
    tmp_path: Path, network: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg = network
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        listen = f"/ip4/127.0.0.1/tcp/{port}"
        with pytest.raises(AddressError, match="cannot listen"):
            check_port_free(listen)
        result = dlnet(
            capsys,
            "run",
            "--config",
            str(cfg),
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            listen,
        )
    one_line_error(result, f"--listen {listen}", "cannot listen", "another port")
    check_port_free("/ip4/127.0.0.1/tcp/0")  # port 0 is always fine


def test_init_refuses_to_overwrite_and_warns_about_the_past(
    tmp_path: Path, network: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, cfg = network
    before = cfg.read_text()
    init = ("init", "--validator", f"@{key}")
    one_line_error(
        dlnet(capsys, *init, "--out", str(cfg), "--name", "other"),
        f"--out {cfg}",
        "exists",
        "--force",
    )
    assert cfg.read_text() == before
    forced = dlnet(capsys, *init, "--out", str(cfg), "--name", "other", "--force")
    assert (forced.code, forced.err) == (0, "")
    assert 'name = "other"' in cfg.read_text()
    past = tmp_path / "past.toml"
    done = dlnet(capsys, *init, "--out", str(past), "--genesis-in", "-600")
    assert done.code == 0
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and "600 s in the past" in lines[0], done.err


def test_version() -> None:
    done = CliRunner().invoke(cli, ["--version"])
    assert done.exit_code == 0
    name, version = done.output.split()
    assert name == "dlnet" and version[0].isdigit()


class FlakyModel:
    """Raises on even calls, works on odd ones."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("weights went away\nmore detail")
        return np.ones((len(texts), self.dim), dtype=np.float32)


def test_model_error_at_run_time_is_counted_and_the_encoder_goes_on(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cfg = default_config((ValidatorEntry(bytes(32), 1),), 0, dataset_sha256=bytes(32))
    counted: list[str] = []
    ingest = SimpleNamespace(
        count=lambda outcome, reason: counted.append(f"{outcome.key}:{reason}")
    )
    items = tuple(f"text number {i}" for i in range(20))
    store = Store.open(tmp_path / "node.sqlite")  # no schedule held: corpus texts only
    ctx = NodeContext(cfg, items, store, ingest, None, None, logging.getLogger("dlnet"))  # type: ignore[arg-type]
    role = EncoderRole(ctx, None, FlakyModel(cfg.dim))  # type: ignore[arg-type]
    done: list[int] = []

    class Stop(Exception):
        pass

    async def run_round(rnd: int) -> None:
        if rnd == 4:
            raise Stop
        await role._vectors(rnd, None)
        done.append(rnd)

    role.run_round = run_round  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, "dlnet"), pytest.raises(Stop):
        trio.run(role.run, 0)
    assert done == [1, 3]
    assert counted == ["encoder:model_error", "encoder:model_error"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    for rec in errors:
        assert rec.exc_info is None
        assert "\n" not in rec.getMessage()
        assert "RuntimeError: weights went away" in rec.getMessage()


def test_json_log_lines_and_libp2p_gets_a_level() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", "json", out)
        logging.getLogger("dlnet").info("round %d: hello", 7, extra={"peer": "abc", "n": 3})
        logging.getLogger("libp2p.network").warning("stream reset")
        logging.getLogger("libp2p.network").info("not shown: libp2p stays at warning")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["msg"] == "round 7: hello" and first["level"] == "info"
    assert first["logger"] == "dlnet" and first["peer"] == "abc" and first["n"] == 3
    assert abs(first["ts"] - time.time()) < 60
    assert first["time"].endswith("Z")
    assert second["logger"] == "libp2p.network" and second["level"] == "warning"


def test_text_log_lines_carry_time_and_level() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", "text", out)
        logging.getLogger("libp2p.pubsub").warning("peer gone")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    line = out.getvalue().strip()
    assert line.endswith("WARNING libp2p.pubsub: peer gone")
    assert line[:4].isdigit()  # the date


def test_libp2p_known_noise_warnings_are_debug_and_other_warnings_stay() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    gossip = logging.getLogger("libp2p.pubsub.gossipsub")
    try:
        setup_logging("info", "text", out)
        adopt_libp2p_logging()
        gossip.warning("GRAFT flood detected from peer %s for topic %s, applying penalty", "p", "t")
        gossip.warning("something else")
        gossip.warning(
            "pending message queue for peer %s exceeded limit (%d > %d), dropping oldest messages",
            "p",
            101,
            100,
        )
        setup_logging("debug", "text", out)
        gossip.warning("GRAFT flood detected from peer %s for topic %s, applying penalty", "q", "t")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("WARNING libp2p.pubsub.gossipsub: something else")
    assert " DEBUG libp2p.pubsub.gossipsub: GRAFT flood detected from peer q" in lines[1]


def test_countdown_marks() -> None:
    assert countdown_marks(100) == pytest.approx([90, 80, 70, 60, 50, 40, 30, 20, 10])
    day = countdown_marks(86400)
    assert day[0] == 86400 - 60 and all(a - b == 60 for a, b in itertools.pairwise(day))
    assert countdown_marks(35) == pytest.approx([25, 15, 5])
    assert countdown_marks(9) == []
    assert countdown_marks(0.2) == []
    assert duration(3723) == "1h 02m 03s" and duration(65) == "1m 05s" and duration(4) == "4s"


def test_status_shows_network_peers_round_and_last_finalized(tmp_path: Path) -> None:
    cfg = default_config((ValidatorEntry(bytes(32), 1),), 1000, dataset_sha256=bytes(32))
    store = Store.open(tmp_path / report.STORE_FILE)
    store.put_round_outcome(2, True, bytes(32))
    t2 = round_times(cfg, 2)
    store.put_finalized_at(2, t2.reveal_deadline + 6.4, t2)
    store.put_round_outcome(3, False, None)
    now = cfg.genesis_time + 4.5 * cfg.timing.round_seconds
    host = SimpleNamespace(connected_peers=lambda: ["peerB", "peerA"])
    live = live_info(cfg, store, host, now)  # type: ignore[arg-type]
    store.close()
    assert live["round"] == 4 and live["last_finalized"] == 2 and live["peer_count"] == 2
    info = {"network_id": cfg.network_id.hex(), "network_name": cfg.name, "live": live}
    (tmp_path / report.INFO_FILE).write_text(json.dumps(info))
    st = report.node_status(tmp_path)
    assert st["last_finalized"] == 2
    text = report.format_status(st, now=now + 2)
    assert f"network   {cfg.network_id.hex()} ({cfg.name})" in text
    assert "peers     2 connected (as of 2 s ago)" in text
    assert "  peer    peerA\n  peer    peerB" in text
    assert f"round     4, phase {live['phase']}" in text
    assert "finalized last round 2" in text
    assert "rounds    2✓6.4s 3✗" in text  # round 2's finality latency, after its reveal deadline
    used = st["store_bytes"]["used"]
    assert used > 0 and f"store     {used / 1e6:.1f} MB in use, 0.0 MB free" in text
    assert "is the node running?" in report.format_status(st, now=now + 300)


@pytest.mark.parametrize(
    ("roles", "flag", "expected"),
    [
        (["encoder"], [], 4),
        (["validator"], [], 64),
        ([], [], 64),  # a relay
        (["encoder", "validator"], [], 64),
        (["validator"], ["--max-peers", "12"], 12),
    ],
)
def test_nodes_that_keep_reveals_get_room_for_the_encoders_pushing_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    roles: list[str],
    flag: list[str],
    expected: int,
) -> None:
    """Every encoder keeps two validators or relays as outlets for its reveal pushes: their
    default connection bound leaves room for them; an encoder keeps the small one."""
    seen: list[Any] = []
    monkeypatch.setattr("dlnet.node.cli.trio.run", lambda fn, opts: seen.append(opts))
    config = tmp_path / "network.toml"
    config.write_text("")
    args = ["run", "--config", str(config), "--data-dir", str(tmp_path / "d"), *flag]
    args += [x for role in roles for x in ("--role", role)]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert seen[0].gossip.max_peers == expected
