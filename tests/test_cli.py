"""The dlnet command: operator mistakes end in one readable line and exit code 2."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


def dlnet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlnet.node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dlnet: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "cmd", [[], ["keygen"], ["init"], ["run"], ["status"], ["results"], ["testnet"]]
)
def test_help_everywhere(cmd: list[str]) -> None:
    done = dlnet(*cmd, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout


def test_keygen_init_and_their_mistakes(tmp_path: Path) -> None:
    key = tmp_path / "v.key"
    done = dlnet("keygen", "--out", str(key))
    assert done.returncode == 0, done.stderr
    pubkey = done.stdout.strip()
    assert len(bytes.fromhex(pubkey)) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    one_line_error(dlnet("keygen", "--out", str(key)), "exists", "--force")

    cfg = tmp_path / "network.toml"
    done = dlnet("init", "--validator", f"@{key}:100", "--out", str(cfg))
    assert done.returncode == 0, done.stderr
    parsed = tomllib.loads(cfg.read_text())
    assert parsed["validators"][0]["pubkey"] == pubkey
    one_line_error(dlnet("init", "--validator", "abcd", "--out", str(cfg)), "--validator")

    key.chmod(0o644)
    one_line_error(
        dlnet(
            "run",
            "--config",
            str(cfg),
            "--key",
            str(key),
            "--role",
            "validator",
            "--data-dir",
            str(tmp_path / "d"),
        ),
        "chmod 600",
    )


def test_bad_arguments_and_configs(tmp_path: Path) -> None:
    one_line_error(dlnet("run", "--role", "mayor", "--config", "x", "--data-dir", "d"), "--role")
    one_line_error(
        dlnet("run", "--config", str(tmp_path / "nope.toml"), "--data-dir", str(tmp_path / "d")),
        "--config",
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nname = "x"\ndim = "big"\n')
    one_line_error(dlnet("run", "--config", str(bad), "--data-dir", str(tmp_path / "d")))
    one_line_error(dlnet("testnet", "--encoders", "honest:two"), "--encoders")
    one_line_error(
        dlnet("run", "--config", "x", "--data-dir", "d", "--gossip", "bogus=1"), "--gossip bogus=1"
    )
    one_line_error(
        dlnet("run", "--config", "x", "--data-dir", "d", "--gossip", "degree=9"), "D_high"
    )
    one_line_error(dlnet("status", "--data-dir", str(tmp_path)), "--data-dir")


def test_validator_key_must_be_in_the_validator_set(tmp_path: Path) -> None:
    v, other = tmp_path / "v.key", tmp_path / "o.key"
    dlnet("keygen", "--out", str(v))
    dlnet("keygen", "--out", str(other))
    cfg = tmp_path / "network.toml"
    dlnet("init", "--validator", f"@{v}", "--out", str(cfg))
    one_line_error(
        dlnet(
            "run",
            "--config",
            str(cfg),
            "--key",
            str(other),
            "--role",
            "validator",
            "--data-dir",
            str(tmp_path / "d"),
        ),
        "validator set",
    )


def test_api_address_mistakes(tmp_path: Path) -> None:
    for bad in ("localhost", "127.0.0.1:http", "127.0.0.1:70000", ":5052"):
        one_line_error(
            dlnet("run", "--config", "x", "--data-dir", "d", "--api", bad), f"--api {bad}"
        )
    key, cfg = tmp_path / "v.key", tmp_path / "network.toml"
    dlnet("keygen", "--out", str(key))
    dlnet("init", "--validator", f"@{key}", "--out", str(cfg))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        one_line_error(
            dlnet(
                "run",
                "--config",
                str(cfg),
                "--data-dir",
                str(tmp_path / "d"),
                "--api",
                f"127.0.0.1:{port}",
            ),
            f"--api 127.0.0.1:{port}",
            "cannot listen",
        )


def test_the_cli_loads_without_libp2p_sklearn_or_torch() -> None:
    """`dlnet --help`, `keygen`, `init`, `status` and the other commands that run no node do
    not pay for libp2p (~1.5 s), scikit-learn (~2 s) or torch: they load where used."""
    probe = (
        "import sys, dlnet.node.cli; "
        "print(sorted(m for m in ('libp2p', 'sklearn', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "[]"
