"""`forecast-service retrain NAME --wait` runs the retrain in a worker process of the
command itself (real job store, real fit) and `jobs list` / `jobs show` report it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.jobs.store import JobStore
from service.registry.store import Registry
from service.settings import Settings
from tests.conftest import copy_specs


@pytest.fixture
def registry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo airline spec, never trained; jobs and datasets under tmp_path/data. The
    output is not a terminal, so rich renders at its default width of 80 columns."""
    monkeypatch.setenv("FORECAST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("COLUMNS", raising=False)
    return copy_specs(tmp_path / "models", ["airline"])


def last_json(output: str) -> dict:
    """The JSON document a command printed last (the progress bar goes to stderr)."""
    start = output.rindex("\n{\n") + 1 if "\n{\n" in output else output.index("{")
    return json.loads(output[start:])


def test_retrain_wait_publishes_promotes_and_jobs_show_it(registry_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["retrain", "airline", "--registry", str(registry_dir), "--wait"])
    assert result.exit_code == 0, result.output
    job = last_json(result.stdout)
    assert job["status"] == "succeeded" and job["kind"] == "retrain" and job["model"] == "airline"
    assert job["result"]["version"] == 1
    assert job["result"]["promoted"] is True and job["result"]["decision"] == "promoted"
    assert job["result"]["data"]["dataset"] == "airline.source"

    registry = Registry(registry_dir)
    assert registry.list_versions("airline") == [1]
    assert registry.read_aliases("airline") == {"production": 1}
    manifest = registry.read_manifest("airline", 1)
    assert manifest["job_id"] == job["id"]
    assert manifest["training"]["dataset_version"] == f"airline.source@{job['result']['data']['version']}"
    assert (tmp_path / "data" / "jobs.sqlite").is_file()
    assert (tmp_path / "data" / "datasets" / "airline.source" / "dataset.json").is_file()
    stored = JobStore(Settings(registry=registry_dir).resolved_jobs_url)
    try:
        assert stored.get(job["id"]).status == "succeeded"
    finally:
        stored.dispose()

    listed = runner.invoke(app, ["jobs", "list", "--registry", str(registry_dir)])
    assert listed.exit_code == 0, listed.output
    assert "succeeded" in listed.stdout and "retrain" in listed.stdout and "airline" in listed.stdout

    shown = runner.invoke(app, ["jobs", "show", job["id"], "--registry", str(registry_dir)])
    assert shown.exit_code == 0, shown.output
    assert last_json(shown.stdout) == job

    missing = runner.invoke(app, ["jobs", "show", "0" * 32, "--registry", str(registry_dir)])
    assert missing.exit_code == 2
    assert "no job" in missing.output

    # without --wait the job is only queued for a server to run
    queued = runner.invoke(app, ["retrain", "airline", "--registry", str(registry_dir), "--promote", "never"])
    assert queued.exit_code == 0, queued.output
    pending = last_json(queued.stdout)
    assert pending["status"] == "queued" and pending["params"] == {"promote": "never"}
    again = runner.invoke(app, ["retrain", "airline", "--registry", str(registry_dir)])
    assert last_json(again.stdout)["id"] == pending["id"]  # one active retrain per model
    filtered = runner.invoke(app, ["jobs", "list", "--registry", str(registry_dir), "--status", "queued"])
    assert filtered.exit_code == 0 and "queued" in filtered.stdout and "succeeded" not in filtered.stdout

    # the list prints short ids (8 characters), never cut further, also at 80 columns / in a pipe;
    # `jobs show` takes them (any unique prefix of 4 or more characters)
    assert job["id"][:8] in listed.stdout, f"`jobs list` does not show the short job id:\n{listed.stdout}"
    assert pending["id"][:8] in filtered.stdout
    by_prefix = runner.invoke(app, ["jobs", "show", job["id"][:8], "--registry", str(registry_dir)])
    assert by_prefix.exit_code == 0, by_prefix.output
    assert last_json(by_prefix.stdout) == job


def test_retrain_of_an_unknown_model_fails_cleanly(registry_dir: Path) -> None:
    result = CliRunner().invoke(app, ["retrain", "ghost", "--registry", str(registry_dir), "--wait"])
    assert result.exit_code == 2
    assert "ghost" in result.output
    assert Registry(registry_dir).list_models() == ["airline"]
