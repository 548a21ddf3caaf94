"""The dlnet command: operator mistakes end in one readable line and exit code 2.

The commands run in this process (`dlnet.node.cli.main(argv)`), which is what the console
script and `python -m dlnet.node` call; two tests start a real process, where the process is
the point: the console script's exit code and stderr, and what importing the CLI loads."""

from __future__ import annotations

import json
import logging
import socket
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from dlnet.node.cli import main
from dlnet.protocol.config import parse_config
from dlnet.protocol.params import DEFAULT_DIFFICULTY


@dataclass(frozen=True)
class Done:
    """How a `dlnet` command ended: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str


def dlnet(capsys: pytest.CaptureFixture[str], *args: str) -> Done:
    """Run `dlnet ARGS` in this process (no interpreter start, imports paid once). The root
    logger's handlers (pytest's among them), which the command replaces, are put back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    capsys.readouterr()
    code: object = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    captured = capsys.readouterr()
    return Done(code if isinstance(code, int) else 1, captured.out, captured.err)


def dlnet_process(*args: str) -> Done:
    """Run `dlnet ARGS` as the operator's shell does: the installed console script."""
    script = Path(sys.executable).with_name("dlnet")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "dlnet.node"]
    done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120)
    return Done(done.returncode, done.stdout, done.stderr)


def one_line_error(done: Done, *needles: str) -> None:
    assert done.code == 2, (done.out, done.err)
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert lines[0].startswith("dlnet: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in done.err


@pytest.mark.parametrize(
    "cmd", [[], ["keygen"], ["init"], ["run"], ["status"], ["results"], ["testnet"]]
)
def test_help_everywhere(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    done = dlnet(capsys, *cmd, "--help")
    assert done.code == 0, done.err
    assert "Usage:" in done.out


def test_keygen_init_and_their_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "v.key"
    done = dlnet(capsys, "keygen", "--out", str(key))
    assert done.code == 0, done.err
    pubkey = done.out.strip()
    assert len(bytes.fromhex(pubkey)) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    one_line_error(dlnet(capsys, "keygen", "--out", str(key)), "exists", "--force")

    cfg = tmp_path / "network.toml"
    done = dlnet(capsys, "init", "--validator", f"@{key}:100", "--out", str(cfg))
    assert done.code == 0, done.err
    parsed = tomllib.loads(cfg.read_text())
    assert parsed["validators"][0]["pubkey"] == pubkey
    one_line_error(dlnet(capsys, "init", "--validator", "abcd", "--out", str(cfg)), "--validator")
    # the genesis' registration difficulty: the default unless named, in 0..64
    assert parse_config(cfg.read_text()).registration.difficulty == DEFAULT_DIFFICULTY
    easy = tmp_path / "easy.toml"
    done = dlnet(
        capsys,
        "init",
        "--validator",
        f"@{key}",
        "--out",
        str(easy),
        "--registration-difficulty",
        "2",
    )
    assert done.code == 0, done.err
    assert parse_config(easy.read_text()).registration.difficulty == 2
    for bad in ("-1", "65"):
        args = ("--out", str(tmp_path / "x.toml"), "--registration-difficulty", bad)
        done = dlnet(capsys, "init", "--validator", f"@{key}", *args)
        one_line_error(done, f"--registration-difficulty {bad}", "0..64")
    assert not (tmp_path / "x.toml").exists()

    key.chmod(0o644)
    one_line_error(
        dlnet(
            capsys,
            *("run", "--config", str(cfg), "--key", str(key), "--role", "validator"),
            *("--data-dir", str(tmp_path / "d")),
        ),
        "chmod 600",
    )


def test_bad_arguments_and_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(
        dlnet(capsys, "run", "--role", "mayor", "--config", "x", "--data-dir", "d"), "--role"
    )
    one_line_error(
        dlnet(
            capsys,
            *("run", "--config", str(tmp_path / "nope.toml"), "--data-dir", str(tmp_path / "d")),
        ),
        "--config",
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nname = "x"\ndim = "big"\n')
    one_line_error(dlnet(capsys, "run", "--config", str(bad), "--data-dir", str(tmp_path / "d")))
    one_line_error(dlnet(capsys, "testnet", "--encoders", "honest:two"), "--encoders")
    one_line_error(
        dlnet(capsys, "run", "--config", "x", "--data-dir", "d", "--gossip", "bogus=1"),
        "--gossip bogus=1",
    )
    one_line_error(
        dlnet(capsys, "run", "--config", "x", "--data-dir", "d", "--gossip", "degree=9"), "D_high"
    )
    one_line_error(dlnet(capsys, "status", "--data-dir", str(tmp_path)), "--data-dir")


def test_validator_key_must_be_in_the_validator_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v, other = tmp_path / "v.key", tmp_path / "o.key"
    assert dlnet(capsys, "keygen", "--out", str(v)).code == 0
    assert dlnet(capsys, "keygen", "--out", str(other)).code == 0
    cfg = tmp_path / "network.toml"
    assert dlnet(capsys, "init", "--validator", f"@{v}", "--out", str(cfg)).code == 0
    one_line_error(
        dlnet(
            capsys,
            *("run", "--config", str(cfg), "--key", str(other), "--role", "validator"),
            *("--data-dir", str(tmp_path / "d")),
        ),
        "validator set",
    )


def test_api_address_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("localhost", "127.0.0.1:http", "127.0.0.1:70000", ":5052"):
        one_line_error(
            dlnet(capsys, "run", "--config", "x", "--data-dir", "d", "--api", bad), f"--api {bad}"
        )
    key, cfg = tmp_path / "v.key", tmp_path / "network.toml"
    assert dlnet(capsys, "keygen", "--out", str(key)).code == 0
    assert dlnet(capsys, "init", "--validator", f"@{key}", "--out", str(cfg)).code == 0
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        one_line_error(
            dlnet(
                capsys,
                *("run", "--config", str(cfg), "--data-dir", str(tmp_path / "d")),
                *("--api", f"127.0.0.1:{port}"),
            ),
            f"--api 127.0.0.1:{port}",
            "cannot listen",
        )


def test_a_mistake_in_a_real_process_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The console script, as the operator's shell sees it: one line on stderr and exit code 2
    (the 56-line traceback of old)."""
    one_line_error(
        dlnet_process(
            *("run", "--config", "x", "--data-dir", str(tmp_path)),
            *("--listen", "127.0.0.1:9000"),
        ),
        "--listen 127.0.0.1:9000",
    )


def test_the_cli_loads_without_libp2p_sklearn_or_torch(tmp_path: Path) -> None:
    """`dlnet --help`, `keygen`, `init`, `status` and the other commands that run no node do
    not pay for libp2p (~1.5 s), scikit-learn (~2 s) or torch: they load where used."""
    # One interpreter runs the commands in turn and lists the heavy modules loaded after each:
    # what a command imports stays imported, so the first that pays shows in its own entry.
    probe = """if True:
        import json, sys, dlnet.node.cli
        seen = []
        for args in json.loads(sys.argv[1]):
            try:
                code = dlnet.node.cli.main(args)
            except SystemExit as exc:
                code = exc.code
            heavy = sorted(m for m in ("libp2p", "sklearn", "torch") if m in sys.modules)
            seen.append([args, code, heavy])
        print(json.dumps(seen))
    """
    key = tmp_path / "v.key"
    commands = [["--help"], ["keygen", "--out", str(key)], ["keygen", "--help"]]
    out = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert [args for args, _, _ in seen] == commands, out
    for args, code, heavy in seen:
        assert code in (0, None) and heavy == [], (args, code, heavy, out.stderr)
    assert key.exists()


def test_probe_texts_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--probe-texts` is a validator's file of its own texts: without the validator role, a
    file that is not UTF-8 or one with fewer usable lines than a probe takes is one line
    (exit 2) before the node starts."""
    v = tmp_path / "v.key"
    assert dlnet(capsys, "keygen", "--out", str(v)).code == 0
    cfg = tmp_path / "network.toml"
    assert dlnet(capsys, "init", "--validator", f"@{v}", "--out", str(cfg)).code == 0
    texts = tmp_path / "texts.txt"
    texts.write_text("one\n\ntwo words\n" + "x" * 2000 + " y\n")
    run = ("run", "--config", str(cfg), "--key", str(v), "--data-dir", str(tmp_path / "d"))
    one_line_error(
        dlnet(capsys, *run, "--role", "encoder", "--probe-texts", str(texts)),
        "--probe-texts",
        "only a validator probes",
    )
    one_line_error(
        dlnet(capsys, *run, "--role", "validator", "--probe-texts", str(texts)),
        "--probe-texts",
        "1 lines of 2 words or more",
        "a probe takes 16",
    )
    texts.write_bytes(b"\xff\xfe not utf-8\n")
    one_line_error(
        dlnet(capsys, *run, "--role", "validator", "--probe-texts", str(texts)),
        "--probe-texts",
        "UTF-8",
    )
    one_line_error(
        dlnet(capsys, *run, "--role", "validator", "--probe-texts", str(tmp_path / "none")),
        "--probe-texts",
    )


def test_keep_rounds_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--keep-rounds` below what the network needs (the probe look-back and the accepted
    window) or negative is one line (exit 2) before the node starts."""
    v = tmp_path / "v.key"
    assert dlnet(capsys, "keygen", "--out", str(v)).code == 0
    cfg = tmp_path / "network.toml"
    assert dlnet(capsys, "init", "--validator", f"@{v}", "--out", str(cfg)).code == 0
    run = ("run", "--config", str(cfg), "--key", str(v), "--data-dir", str(tmp_path / "d"))
    one_line_error(
        dlnet(capsys, *run, "--role", "validator", "--keep-rounds", "10"),
        "--keep-rounds 10",
        "needs the last 52 rounds",
        "0 to keep all",
    )
    one_line_error(dlnet(capsys, *run, "--keep-rounds", "-1"), "--keep-rounds")
