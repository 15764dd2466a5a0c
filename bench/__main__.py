"""`python -m bench --profile quick|full`: run the benchmarks, print a table, write results.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.profiles import PROFILES
from bench.run import run_benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of `make bench`."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="sizes and durations")
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"), help="where results go")
    parser.add_argument(
        "--generator", choices=["auto", "wrk", "httpx"], default="auto", help="load generator (auto: wrk if installed)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder (registry, server logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen profile; the exit code is 0 even when a bar is missed (benchmarks are not tests)."""
    args = parse_args(argv)
    run_benchmark(PROFILES[args.profile], args.out, generator=args.generator, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
