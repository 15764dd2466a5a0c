"""What a run records (machine, versions, figures, bars) and the table it prints."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "forecast-service",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "orjson",
    "httpx",
    "sktime",
    "pandas",
    "numpy",
    "scikit-learn",
    "statsmodels",
)


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), if readable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    """Cores, CPU, Python, platform and load average at the time of the call."""
    return {
        "nproc": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries on the measured path."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def jsonable(value: Any) -> Any:
    """NaN and infinities become null, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_results(path: Path, results: dict[str, Any]) -> None:
    """``results.json``: indented, strict JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results), indent=2, allow_nan=False) + "\n")


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for the table; '-' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def spread(summary: dict[str, Any], digits: int = 2) -> str:
    """median [min-max]."""
    return f"{fmt(summary['median'], digits)} [{fmt(summary['min'], digits)}-{fmt(summary['max'], digits)}]"


def fmt_loadavg(loadavg: list[float] | None) -> str:
    """The 1-minute load average (a shared machine's noise shows here)."""
    return f"{loadavg[0]:.1f}" if loadavg else "-"


def load_rows(figures: dict[str, Any]) -> list[str]:
    """One row per load scenario."""
    head = f"{'scenario':<52} {'conc':>4}  {'req/s median [min-max]':<26} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    rows = [head, "-" * len(head)]
    for figure in figures.values():
        rows.append(
            f"{figure['label']:<52} {figure['concurrency']:>4}  {spread(figure['rps'], 0):<26} "
            f"{fmt(figure['p50_ms']['median']):>8} {fmt(figure['p99_ms']['median']):>8} {sum(figure['errors']):>6}"
        )
    return rows


def sktime_rows(sktime: dict[str, Any]) -> list[str]:
    """One row per in-process sktime variant."""
    rows = [f"{'(d) sktime in-process, per call':<52} {'':>4}  {'ms median [min-max]':<26}"]
    for variant, figure in sktime["variants"].items():
        rows.append(f"    {variant:<48} {'':>4}  {spread(figure):<26}")
    return rows


def check_rows(checks: list[dict[str, Any]]) -> list[str]:
    """One row per bar: value, bar, verdict; then the informative ratios."""
    rows = [f"{'figure':<64} {'value':>9}  {'bar':<18} verdict"]
    for check in checks:
        verdict = {True: "ok", False: "MISSED", None: "info"}[check["ok"]]
        rows.append(f"{check['name']:<64} {fmt(check['value']):>9}  {check['bar'] or '':<18} {verdict}")
    return rows


def format_table(results: dict[str, Any]) -> str:
    """The short stdout report."""
    machine, run = results["machine"], results["run"]
    header = (
        f"forecast-service bench: profile {run['profile']['name']}, {run['profile']['repeats']} repeats x "
        f"{run['load_seconds']:g} s per load run, load generator {run['generator']}, "
        f"{machine['nproc']} cores, Python {machine['python']}, {run['elapsed_s']:.0f} s in all, "
        f"load average {fmt_loadavg(machine.get('loadavg'))} at start, {fmt_loadavg(machine.get('loadavg_end'))} at end"
    )
    lines = [header, "", *load_rows(results["figures"]), "", *sktime_rows(results["sktime"]), ""]
    lines += [*check_rows(results["checks"]), ""]
    lines += [f"notes: {note}" for note in results["notes"]]
    return "\n".join(lines)
