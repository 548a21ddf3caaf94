"""What a `dlnet` command and a node pay before doing anything: CPU seconds to import, per
entry point, against the floor of a bare interpreter, in fresh processes.

    python scripts/bench_startup.py [--runs N]

CPU time (user + system of the child) is measured rather than wall time, so that a loaded
machine skews it less; each figure is the minimum over N runs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

PROBES: dict[str, str] = {
    "bare interpreter (floor)": "pass",
    "`dlnet` CLI (`dlnet.node.cli`)": "import dlnet.node.cli",
    "reading a config (`dlnet.protocol.config`)": "import dlnet.protocol.config",
    "roles, admission, sync (`dlnet.node.runtime`)": "import dlnet.node.runtime",
    "+ libp2p host (`dlnet.node.host`)": "import dlnet.node.runtime, dlnet.node.host",
    "+ scoring's scikit-learn (`sklearn.neighbors`)": (
        "import dlnet.node.runtime, dlnet.node.host, sklearn.neighbors"
    ),
}


def cpu_seconds(code: str) -> float:
    before = os.times()
    subprocess.run([sys.executable, "-c", code], check=True)
    after = os.times()
    return (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rows = {name: min(cpu_seconds(code) for _ in range(args.runs)) for name, code in PROBES.items()}
    floor = rows["bare interpreter (floor)"]
    print(f"| import | CPU s (min of {args.runs}) | x floor |")
    print("| --- | --- | --- |")
    for name, sec in rows.items():
        print(f"| {name} | {sec:.2f} | {sec / floor:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
