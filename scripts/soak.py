#!/usr/bin/env python3
"""Heavier runs of the fault suites than CI can afford (see docs/reliability.md).

Runs ``tests/faults`` repeatedly with more trials per test (``CLOUDKEEP_FAULT_SCALE``),
more soak cycles (``CLOUDKEEP_SOAK_CYCLES``) and a new seed per round, until the
rounds or the time budget run out. Every round is an ordinary pytest run, so a failure
prints the seed that replays it (``CLOUDKEEP_FAULT_SEED=<seed> pytest ...``).

    python scripts/soak.py                       # 3 rounds, scale 5, 2000 soak cycles
    python scripts/soak.py --rounds 10 --scale 3 --max-minutes 120 -k crash
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="pytest runs (default 3)")
    parser.add_argument("--scale", type=int, default=5, help="trial multiplier (default 5)")
    parser.add_argument("--soak-cycles", type=int, default=2000,
                        help="create/list/delete cycles of the soak test (default 2000)")
    parser.add_argument("--max-minutes", type=float, default=90.0,
                        help="no new round starts after this (default 90)")
    parser.add_argument("-k", dest="keyword", default="", help="pytest -k expression")
    args = parser.parse_args(argv)

    started = time.monotonic()
    failures = 0
    for number in range(1, args.rounds + 1):
        if time.monotonic() - started > args.max_minutes * 60:
            print(f"time budget used after {number - 1} rounds")
            break
        seed = random.SystemRandom().randrange(1, 10**9)
        env = {
            **os.environ,
            "CLOUDKEEP_FAULT_SCALE": str(args.scale),
            "CLOUDKEEP_SOAK_CYCLES": str(args.soak_cycles),
            "CLOUDKEEP_FAULT_SEED": str(seed),
        }
        command = [sys.executable, "-m", "pytest", "tests/faults", "-q", "-s",
                   "-p", "no:cacheprovider", "-o", "timeout=7200"]
        if args.keyword:
            command += ["-k", args.keyword]
        print(f"round {number}/{args.rounds}: seed {seed}, scale {args.scale}", flush=True)
        round_started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, env=env, check=False)
        print(f"round {number}: exit {result.returncode} in "
              f"{time.monotonic() - round_started:.0f}s (seed {seed})", flush=True)
        failures += result.returncode != 0
    print(f"{failures} failed rounds")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
