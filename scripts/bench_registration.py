"""Registration work on this machine: seconds of CPU per identity, and for 1,000 sybils.

    python scripts/bench_registration.py [--seconds S] [--difficulty D ...] [--identities N]

Measures scrypt evaluations per second of `protocol.registration.work` on one core, solves a few
identities at small difficulties to check that the mean cost is 2^D evaluations, solves N
identities at the default difficulty (what each encoder of a testnet does at start) and prints
the expected CPU time per identity and per 1,000 identities at each difficulty asked.
"""

from __future__ import annotations

import argparse
import os
import time

from dlnet.protocol.params import DEFAULT_DIFFICULTY
from dlnet.protocol.registration import solve, work


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--difficulty", type=int, nargs="*", default=[6, 8, 10, 12, 14])
    ap.add_argument("--solve", type=int, default=4, help="identities solved at difficulty 4")
    ap.add_argument(
        "--identities",
        type=int,
        default=4,
        help=f"identities solved at the default difficulty ({DEFAULT_DIFFICULTY})",
    )
    args = ap.parse_args()
    net = os.urandom(32)
    start, n = time.process_time(), 0
    while time.process_time() - start < args.seconds:
        work(net, os.urandom(32), n)
        n += 1
    per_eval = (time.process_time() - start) / n
    print(f"scrypt work: {n} evaluations, {per_eval * 1000:.1f} ms CPU each (one core)")
    tries = []
    for _ in range(args.solve):
        key = os.urandom(32)
        tries.append(solve(net, key, 4) + 1)
    print(
        f"difficulty 4: {tries} evaluations per identity "
        f"(mean {sum(tries) / len(tries):.1f}, expected 16)"
    )
    if args.identities:
        spent, counts = [], []
        for _ in range(args.identities):
            began = time.process_time()
            counts.append(solve(net, os.urandom(32), DEFAULT_DIFFICULTY) + 1)
            spent.append(time.process_time() - began)
        print(
            f"default difficulty {DEFAULT_DIFFICULTY}: {args.identities} identities solved in "
            f"{', '.join(f'{s:.1f}' for s in spent)} s CPU ({counts} evaluations; mean "
            f"{sum(spent) / len(spent):.1f} s, expected {per_eval * 2**DEFAULT_DIFFICULTY:.1f} s)"
        )
    for d in args.difficulty:
        one = per_eval * 2**d
        print(
            f"difficulty {d}: {one:.1f} s CPU per identity, "
            f"{one * 1000 / 3600:.1f} CPU-hours for 1,000 identities; "
            f"verify {per_eval * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
