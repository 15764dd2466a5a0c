"""`python -m bench --profile quick|full`: run the benchmarks, print a table, write results.json."""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument(
        "--only",
        choices=["all", "predict", "varied", "retrain", "scale", "accuracy", "monitoring", "protocols"],
        default="all",
        help="which benchmarks to run (varied: predict bodies varying per request vs the floor; accuracy: "
        "competition data through the API, quick: Tourism seasonal naive, full: Tourism and M1, seasonal "
        "naive and auto; BENCH_ACCURACY='tourism:SeasonalNaive,auto;m1:auto' chooses; monitoring: ingest of "
        "1000 series x 12 actuals, the monitoring query and the record's growth per version)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen profile; the exit code is 0 even when a bar is missed (benchmarks are not tests)."""
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    if args.only in ("all", "predict"):
        run_benchmark(profile, args.out, generator=args.generator, keep=args.keep)
    if args.only in ("all", "varied"):
        from bench.varied import run_varied_benchmark

        run_varied_benchmark(profile, args.out, generator=args.generator, keep=args.keep)
    if args.only in ("all", "retrain"):
        run_retrain_into(args.out, repeats=1 if profile.name == "quick" else 3)
    if args.only == "scale" or (args.only == "all" and profile.name == "full"):
        run_scale_into(args.out, os.environ.get("BENCH_SCALE", "1000,10000"))
    if args.only in ("all", "accuracy"):
        run_accuracy_part(args.out, profile.name, os.environ.get("BENCH_ACCURACY"))
    if args.only in ("all", "monitoring"):
        from bench.monitoring import run_monitoring_into

        run_monitoring_into(args.out, profile.name)
    if args.only in ("all", "protocols"):
        from bench.protocols import run_protocols_into

        run_protocols_into(args.out, profile.name)
    return 0


def run_accuracy_part(out: Path, profile: str, chosen: str | None) -> None:
    """The accuracy benchmark (bench.accuracy) on the profile's plan, or on ``chosen``
    (BENCH_ACCURACY; empty: skipped); its rows and bars go to ``out`` under "accuracy"."""
    from bench.accuracy import PLANS, parse_plan, run_accuracy_into

    plan = PLANS[profile] if chosen is None else parse_plan(chosen)
    if not plan:
        print("accuracy: skipped (BENCH_ACCURACY is empty)", flush=True)
        return
    if profile == "quick" and chosen is None:
        print(
            "accuracy, quick profile: Tourism seasonal naive only (the split and metric against the published "
            "22.56); BENCH=full adds auto and M1 (about 15 min)",
            flush=True,
        )
    run_accuracy_into(out, plan)


def run_scale_into(out: Path, sizes: str) -> None:
    """The panel-scale benchmark (sizes: comma-separated series counts; BENCH_SCALE=1000,10000,100000
    adds the 100k run, about half an hour); its figures go to ``out`` under "scale", its plot beside it."""
    import json

    from bench.scale import format_scale, run_scale_benchmark

    results = run_scale_benchmark([int(s) for s in sizes.split(",")], plot=out.with_name("scale.png"))
    print(format_scale(results))
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged["scale"] = results
    out.write_text(json.dumps(merged, indent=2, default=str))


def run_retrain_into(out: Path, repeats: int) -> None:
    """The retrain benchmark; its figures are added to ``out`` under "retrain"."""
    import json
    import tempfile

    from bench.retrain import format_retrain, run_retrain_benchmark

    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as folder:
        results = run_retrain_benchmark(Path(folder), series=1000, repeats=repeats)
    print(format_retrain(results))
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged["retrain"] = results
    out.write_text(json.dumps(merged, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
