"""`serve` off loopback: refused without keys, allowed with keys or a loud --insecure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import ADMIN_KEY, CLI, KEYS, READ_KEY, ServerFactory, free_port, one_line

pytestmark = pytest.mark.slow

ANY = "0.0.0.0"


def serve(registry: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `serve` expecting it to exit by itself (it refuses to start)."""
    try:
        return subprocess.run(
            [str(CLI), "serve", "--registry", str(registry), "--port", str(free_port()), *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200", **env},
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"serve did not exit within 60 s (it should refuse to start): {exc.stderr!r}")


@pytest.fixture
def empty_registry(tmp_path: Path) -> Path:
    registry = tmp_path / "models"
    registry.mkdir()
    return registry


def test_no_keys_off_loopback_refuses_to_start_and_says_how_to_add_keys(empty_registry: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    result = subprocess.run(
        [str(CLI), "serve", "--registry", str(empty_registry), "--host", ANY, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**env, "COLUMNS": "200"},
    )
    output = one_line(result.stdout + result.stderr)
    assert result.returncode != 0, output
    assert "FORECAST_API_KEYS" in output, output
    assert ANY in output, output
    assert "--insecure" in output, output
    assert "Traceback" not in output, output


def test_insecure_flag_starts_off_loopback_with_a_loud_warning(
    empty_registry: Path, start_server: ServerFactory
) -> None:
    server = start_server(empty_registry, "--host", ANY, "--insecure")
    server.wait_ready()  # 0.0.0.0 includes the loopback address the helper polls
    with server.client() as http:
        assert http.get("/v1/models").status_code == 200  # open: no keys
    assert server.stop() == 0
    log = server.log()
    assert "INSECURE" in log, log
    warning = next(line for line in log.splitlines() if "INSECURE" in line)
    assert ANY in warning and "without API keys" in warning, warning


def test_keys_allow_serving_off_loopback(empty_registry: Path, start_server: ServerFactory) -> None:
    server = start_server(empty_registry, "--host", ANY, FORECAST_API_KEYS=KEYS)
    server.wait_ready()
    with server.client() as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
    assert server.stop() == 0
    assert "INSECURE" not in server.log()


def test_malformed_keys_refuse_to_start_with_a_clear_message(empty_registry: Path) -> None:
    """A typo in the keys must stop the server with one line that names the setting — and
    never print the keys themselves (a traceback may show them)."""
    result = serve(empty_registry, FORECAST_API_KEYS=f"admin:{ADMIN_KEY},read:short")
    output = one_line(result.stdout + result.stderr)
    assert result.returncode != 0, output
    assert "FORECAST_API_KEYS" in output, output
    assert ADMIN_KEY not in output, output
    assert "Traceback" not in output, output


def test_missing_keys_file_refuses_to_start_with_a_clear_message(empty_registry: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-keys-file"
    result = serve(empty_registry, "--host", ANY, FORECAST_API_KEYS_FILE=str(missing))
    output = one_line(result.stdout + result.stderr)
    assert result.returncode != 0, output
    assert str(missing) in output, output
    assert "Traceback" not in output, output
