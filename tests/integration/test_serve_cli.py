"""`forecast-service serve` as a process: first-start training, readiness, signals, ports."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CLI, HOST, ServerFactory

pytestmark = pytest.mark.slow

DEMO_SPECS = Path(__file__).resolve().parents[2] / "models"


def specs_only(root: Path, name: str = "airline") -> Path:
    """A fresh registry folder holding one demo spec and no version."""
    (root / name).mkdir(parents=True)
    shutil.copy(DEMO_SPECS / name / "model.yaml", root / name / "model.yaml")
    return root


def test_train_missing_then_serve_and_exit_cleanly_on_sigterm(tmp_path: Path, start_server: ServerFactory) -> None:
    registry = specs_only(tmp_path / "models")

    server = start_server(registry, "--train-missing")
    server.wait_ready(timeout=120.0)

    assert (registry / "airline/versions/1/manifest.json").is_file()
    assert (registry / "airline/aliases.json").is_file()
    with server.client(timeout=30.0) as http:
        assert http.get("/readyz").json()["models"] == ["airline"]
        response = http.post("/v1/models/airline/predict", json={"horizon": 3, "coverage": [0.8]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["version"] == 1
    assert answer["forecast"]["month"] == ["1961-01-01", "1961-02-01", "1961-03-01"]
    assert "airline" in server.log()

    assert server.process is not None
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not exit within 10 s of SIGTERM")
    assert time.monotonic() - started < 10
    assert code == 0, f"exit code {code} after SIGTERM (negative: killed by signal {-code})"


def test_occupied_port_exits_nonzero_with_a_clear_message(tmp_path: Path) -> None:
    registry = specs_only(tmp_path / "models")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupant:
        occupant.bind((HOST, 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        try:
            result = subprocess.run(
                [str(CLI), "serve", "--registry", str(registry), "--host", HOST, "--port", str(port)],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"serve on an occupied port did not exit within 60 s: {exc.stderr!r}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{HOST}:{port}" in output, output
    assert "in use" in output.lower(), output
    assert "Traceback" not in output, output


def test_sigterm_during_first_start_training_stops_at_once(tmp_path: Path, start_server: ServerFactory) -> None:
    """The first start trains in a thread nobody joins: SIGTERM mid-fit exits within seconds (not
    after the training, nor at the watchdog), and the half-made version is never listed."""
    registry = tmp_path / "models"
    folder = registry / "big-panel"
    folder.mkdir(parents=True)
    months = [f"{2010 + m // 12}-{m % 12 + 1:02d}-01" for m in range(120)]
    lines = ["series,month,value"] + [
        f"s{i:04d},{month},{100 + i % 17 + (m % 12) * 1.5 + (i * m) % 7}"
        for i in range(3000)
        for m, month in enumerate(months)
    ]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    (folder / "model.yaml").write_text(
        "kind: panel\ndata:\n  source: {path: data.csv}\n  time: month\n  keys: [series]\n  targets: [value]\n"
        "freq: M\nhorizon: 12\nforecaster: {class: ThetaForecaster, params: {sp: 12}}\ncoverage: [0.8]\n"
    )
    # a long watchdog, so that only a shutdown which does not wait for the training passes
    server = start_server(registry, "--train-missing", FORECAST_SHUTDOWN_TIMEOUT="60")
    deadline = time.monotonic() + 120
    while "big-panel (1/1): fitting" not in server.log():
        assert time.monotonic() < deadline, server.log()[-2000:]
        assert server.process is not None and server.process.poll() is None, server.log()[-2000:]
        time.sleep(0.2)
    time.sleep(1.0)

    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the server was still training 20 s after SIGTERM")
    took = time.monotonic() - started
    assert code == 0, f"exit code {code} after SIGTERM"
    assert took < 10, f"SIGTERM during training took {took:.1f} s"
    assert "published big-panel" not in server.log()
    assert not (folder / "versions" / "1" / "manifest.json").exists()
