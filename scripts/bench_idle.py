"""What a node costs while nothing happens: CPU of one idle libp2p host (dlnet.node.host) with
the 7 topics a keeper joins and no peer, at several event-loop watch periods (`LOOP_TICK`).

    python scripts/bench_idle.py [--seconds 20] [--ticks 0.1,0.5,1.0]

Each period runs in a fresh process (so nothing else of this script runs meanwhile): the host
comes up, settles 3 s, then its process CPU (``time.process_time``, every thread) is read over
``--seconds`` of idling. Prints a Markdown table: % of one core per period, against the floor
of the same process sleeping in trio without a host.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import time, trio
import dlnet.node.host as host_module
from dlnet.node.host import open_host
from dlnet.node.transport import GossipParams, Verdict
SECONDS, TICK = {seconds}, {tick}

async def idle(with_host):
    if not with_host:
        await trio.sleep(3)
        began = time.process_time()
        await trio.sleep(SECONDS)
        return time.process_time() - began
    host_module.LOOP_TICK = TICK
    async with open_host(listen="/ip4/127.0.0.1/tcp/0", bootstrap=[], params=GossipParams()) as h:
        async def drop(data, peer):
            pass
        for name in ("commit", "embedding", "attestation", "vote", "submission", "schedule", "x"):
            await h.subscribe(name, lambda *args: Verdict.ACCEPT, drop)
        await trio.sleep(3)
        began = time.process_time()
        await trio.sleep(SECONDS)
        return time.process_time() - began

print(trio.run(idle, {with_host}) / SECONDS * 100)
"""


def share(seconds: float, tick: float, with_host: bool) -> float:
    code = CHILD.format(seconds=seconds, tick=tick, with_host=with_host)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--ticks", default="0.1,0.5,1.0")
    args = ap.parse_args()
    floor = share(args.seconds, 1.0, with_host=False)
    print("| event-loop watch every | idle CPU, % of one core | x floor |")
    print("| ---: | ---: | ---: |")
    print(f"| (trio alone, no host: the floor) | {floor:.3f} | 1.0 |")
    for tick in (float(t) for t in args.ticks.split(",")):
        got = share(args.seconds, tick, with_host=True)
        ratio = f"{got / floor:.1f}" if floor else "-"
        print(f"| {tick:g} s | {got:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
