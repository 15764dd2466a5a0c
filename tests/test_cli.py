"""The `forecast-service` CLI on real registry folders."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sktime.datasets import load_airline
from sktime.forecasting.theta import ThetaForecaster
from typer.testing import CliRunner

from service import __version__
from service.cli import app
from service.registry.store import Registry
from tests.conftest import DEMO_MODELS, DEMO_SPECS

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def fitted_theta() -> ThetaForecaster:
    forecaster = ThetaForecaster(sp=12)
    forecaster.set_config(remember_data=True)
    return forecaster.fit(load_airline(), fh=[1, 2, 3])


def test_train_publishes_and_promotes_then_models_list_and_show(tmp_path: Path) -> None:
    shutil.copytree(DEMO_SPECS / "airline", tmp_path / "airline")
    out = run("train", "airline", "--registry", str(tmp_path))
    assert "airline v1 published and promoted" in out
    assert Registry(tmp_path).read_aliases("airline") == {"production": 1}
    listing = run("models", "list", "--registry", str(tmp_path))
    assert "airline" in listing and "single" in listing
    shown = json.loads(run("models", "show", "airline", "--registry", str(tmp_path)))
    assert shown["versions"] == [1]
    assert shown["latest_manifest"]["forecaster"]["class"].endswith("ThetaForecaster")


@pytest.mark.parametrize("how", ["joblib", "sktime-save"])
def test_publish_a_forecaster_fitted_in_a_notebook(tmp_path: Path, how: str) -> None:
    registry_root = tmp_path / "models"
    forecaster = fitted_theta()
    if how == "joblib":
        file = tmp_path / "theta.joblib"
        joblib.dump(forecaster, file)
    else:
        forecaster.save(str(tmp_path / "theta"))
        file = tmp_path / "theta.zip"
    out = run("publish", "passengers", str(file), "--registry", str(registry_root), "--promote")
    assert "passengers v1 published and promoted" in out
    registry = Registry(registry_root)
    loaded = registry.load("passengers", 1).forecaster
    pd.testing.assert_frame_equal(
        pd.DataFrame(forecaster.predict(fh=[1, 2, 3])), pd.DataFrame(loaded.predict(fh=[1, 2, 3]))
    )
    manifest = registry.read_manifest("passengers", 1)
    assert manifest["cutoff"] == "1960-12-01"
    assert manifest["training"]["rows"] == 144


def test_publish_refuses_a_file_that_is_not_a_forecaster(tmp_path: Path) -> None:
    file = tmp_path / "junk.pkl"
    file.write_bytes(b"not a pickle at all")
    result = runner.invoke(app, ["publish", "x", str(file), "--registry", str(tmp_path / "models")])
    assert result.exit_code == 2
    assert "error" in result.output
    assert (
        not (tmp_path / "models" / "x" / "versions").exists() or Registry(tmp_path / "models").list_versions("x") == []
    )


def test_promote_moves_the_alias_and_rejects_unknown_versions(registry_path: Path) -> None:
    from service.forecasting.training import train_and_publish

    train_and_publish(Registry(registry_path), "airline", promote=False)
    run("promote", "airline", "2", "--registry", str(registry_path))
    assert Registry(registry_path).read_aliases("airline")["production"] == 2
    run("promote", "airline", "1", "--alias", "stable", "--registry", str(registry_path))
    assert Registry(registry_path).read_aliases("airline") == {"production": 2, "stable": 1}
    result = runner.invoke(app, ["promote", "airline", "9", "--registry", str(registry_path)])
    assert result.exit_code == 2 and "no version 9" in result.output
    assert Registry(registry_path).read_aliases("airline") == {"production": 2, "stable": 1}


def test_train_of_an_unknown_model_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "nope", "--registry", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope" in result.output


# --------------------------------------------------------------------------- issue 12: the CLI's rest
CLI = Path(sys.executable).with_name("forecast-service")
LONG_NAME = "a-model-with-a-rather-long-name-that-tables-used-to-cut-short.v2"


def cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")} | env
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=environment)


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in this process (typer's runner), stdout and stderr apart, no FORECAST_* variables."""
    result = runner.invoke(app, list(args), env={k: None for k in os.environ if k.startswith("FORECAST_")})
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_version_flag() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"forecast-service {__version__}"


def test_models_list_is_fast_imports_no_sktime_and_never_cuts_names(registry_path: Path) -> None:
    shutil.copytree(registry_path / "airline", registry_path / LONG_NAME, ignore=shutil.ignore_patterns(".lock"))
    started = time.perf_counter()
    listing = ok(cli("models", "list", "--registry", str(registry_path)))
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, f"models list took {elapsed:.2f}s (it must not build sktime's registry)"
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert set(rows) == {*DEMO_MODELS, LONG_NAME}
    assert rows[LONG_NAME][1:3] == ["single", "M"]
    assert rows["tourism-monthly"][1:5] == ["panel", "M", "60", "1"]
    assert "Monthly international airline passengers 1949-1960 (Box & Jenkins)" in listing  # whole descriptions

    probe = (
        "import sys\nfrom service.cli import app\n"
        f"sys.argv = ['forecast-service', 'models', 'list', '--registry', {str(registry_path)!r}]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('sktime', 'pandas', 'fastapi', 'sqlalchemy') if m in sys.modules], file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr

    as_json = json.loads(ok(cli("models", "list", "--registry", str(registry_path), "--json")))
    assert {m["name"]: m["production_version"] for m in as_json}[LONG_NAME] == 1


def test_tables_in_a_terminal_keep_names_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from service import cli as cli_module

    screen = Console(file=io.StringIO(), force_terminal=True, width=60, color_system=None)
    monkeypatch.setattr(cli_module, "console", screen)
    cli_module._print_table(["name", "description"], [[LONG_NAME, "words " * 30]], whole=["name"])
    assert LONG_NAME in screen.file.getvalue()  # type: ignore[attr-defined]


def test_a_missing_registry_or_data_folder_is_a_warning(tmp_path: Path) -> None:
    listing = cli("models", "list", cwd=tmp_path)
    assert listing.returncode == 0 and listing.stdout.split() == [
        "name",
        "kind",
        "freq",
        "series",
        "production",
        "last",
        "trained",
        "description",
    ]
    assert f"warning: the registry folder {tmp_path / 'models'} does not exist" in listing.stderr
    jobs = cli("jobs", "list", cwd=tmp_path)
    assert jobs.returncode == 0 and f"warning: the data folder {tmp_path / 'data'} does not exist" in jobs.stderr
    datasets = cli("datasets", "list", "--data-dir", str(tmp_path / "elsewhere"))
    assert datasets.returncode == 0 and "elsewhere does not exist" in datasets.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "elsewhere").exists()


def test_train_and_publish_agree_on_promotion(tmp_path: Path) -> None:
    file = tmp_path / "theta.joblib"
    joblib.dump(fitted_theta(), file)
    registry = tmp_path / "models"
    assert "published and promoted" in run("publish", "plain", str(file), "--registry", str(registry))
    assert Registry(registry).read_aliases("plain") == {"production": 1}

    shutil.copytree(DEMO_SPECS / "airline", registry / "airline")
    spec = registry / "airline" / "model.yaml"
    spec.write_text(spec.read_text().replace("policy: auto", "policy: never"))
    assert "production unchanged" in run("train", "airline", "--registry", str(registry))
    assert "production unchanged" in run("publish", "airline", str(file), "--registry", str(registry))
    assert Registry(registry).read_aliases("airline") == {}
    out = json.loads(ok(invoke("train", "airline", "--registry", str(registry), "--promote", "--json")))
    assert out == {"model": "airline", "version": 3, "promoted": True}
    assert Registry(registry).read_aliases("airline") == {"production": 3}


def test_predict_offline_equals_sktime_on_the_artifact(registry_path: Path, tmp_path: Path) -> None:
    forecaster = Registry(registry_path).load("airline", 1).forecaster
    steps = list(range(1, 4))
    point = forecaster.predict(fh=steps)
    interval = forecaster.predict_interval(fh=steps, coverage=0.9)

    csv = ok(invoke("predict", "airline", "--registry", str(registry_path), "--horizon", "3", "--coverage", "0.9"))
    table = pd.read_csv(io.StringIO(csv))
    assert list(table.columns) == ["month", "passengers", "passengers_lower_90", "passengers_upper_90"]
    assert table["month"].tolist() == ["1961-01-01", "1961-02-01", "1961-03-01"]
    np.testing.assert_allclose(table["passengers"], point.to_numpy(dtype="float64").ravel(), rtol=1e-12)
    np.testing.assert_allclose(table["passengers_lower_90"], interval.iloc[:, 0], rtol=1e-12)

    parquet = tmp_path / "forecast.parquet"
    result = invoke("predict", "airline", "--registry", str(registry_path), "--fh", "1,3", "-o", str(parquet))
    assert result.returncode == 0 and result.stdout == "" and "2 rows written" in result.stderr
    written = pd.read_parquet(parquet)
    assert written["month"].tolist() == ["1961-01-01", "1961-03-01"]
    np.testing.assert_allclose(written["passengers"], point.iloc[[0, 2]].to_numpy(dtype="float64").ravel())

    observations = tmp_path / "new.csv"
    observations.write_text("month,passengers\n1961-01-01,417\n")
    doc = json.loads(
        ok(
            invoke(
                "predict", "airline", "--registry", str(registry_path), "--observations", str(observations), "--json"
            )
        )
    )
    assert doc["cutoff"] == "1961-01-01" and doc["version"] == 1 and doc["freq"] == "M"
    assert doc["forecast"]["month"][0] == "1961-02-01"
    assert "nope" in one_line_error(invoke("predict", "nope", "--registry", str(registry_path)))


def test_datasets_and_jobs_offline_with_short_ids(registry_path: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    table = tmp_path / "sales.csv"
    table.write_text("month,sales\n2024-01,10\n2024-02,12\n2024-03,11\n")
    put = ok(
        cli(
            "datasets",
            "put",
            "sales",
            str(table),
            "--time",
            "month",
            "--targets",
            "sales",
            "--freq",
            "M",
            "--data-dir",
            str(data),
        )
    )
    assert put.startswith("sales: version ") and "3 rows" in put
    more = tmp_path / "more.csv"
    more.write_text("month,sales\n2024-04,13\n")
    ok(invoke("datasets", "put", "sales", str(more), "--append", "--data-dir", str(data)))
    assert ok(invoke("datasets", "list", "--data-dir", str(data))).splitlines()[1].split()[:4][2:] == ["2", "4"]
    shown = json.loads(ok(invoke("datasets", "show", "sales", "--data-dir", str(data))))
    assert shown["roles"]["time"] == "month" and shown["versions"][-1]["end"] == "2024-04-01"
    gappy = tmp_path / "gappy.csv"
    gappy.write_text("month,sales\n2024-01,10\n2024-02,\n2024-03,11\n")
    roles = ["--time", "month", "--targets", "sales", "--data-dir", str(data)]
    assert "missing" in one_line_error(invoke("datasets", "put", "gappy", str(gappy), *roles))
    filled = ok(invoke("datasets", "put", "gappy", str(gappy), "--missing", "ffill", *roles))
    assert filled.startswith("gappy: version ") and "3 rows" in filled

    queued = json.loads(ok(invoke("retrain", "airline", "--registry", str(registry_path), "--data-dir", str(data))))
    listing = ok(invoke("jobs", "list", "--data-dir", str(data))).splitlines()
    assert listing[1].split()[:3] == [queued["id"][:8], "retrain", "queued"]
    shown_job = json.loads(ok(invoke("jobs", "show", queued["id"][:6], "--data-dir", str(data))))
    assert shown_job["id"] == queued["id"]
    cancelled = json.loads(ok(invoke("jobs", "cancel", queued["id"][:8], "--data-dir", str(data))))
    assert cancelled["status"] == "cancelled"
    assert "already cancelled" in one_line_error(invoke("jobs", "cancel", queued["id"], "--data-dir", str(data)))
    assert "no job" in one_line_error(invoke("jobs", "show", "ffff", "--data-dir", str(data)))


def test_models_put_checks_against_the_dataset_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    registry, data = tmp_path / "models", tmp_path / "data"
    table = tmp_path / "sales.csv"
    table.write_text("month,sales\n" + "".join(f"2024-{m:02d}-01,{10 + m}\n" for m in range(1, 13)))
    ok(invoke("datasets", "put", "sales", str(table), "--time", "month", "--targets", "sales", "--data-dir", str(data)))
    spec = tmp_path / "model.yaml"
    spec.write_text("data: {source: {dataset: sales}}\nhorizon: 3\nforecaster: {class: NaiveForecaster}\n")
    where = ["--registry", str(registry), "--data-dir", str(data)]
    assert "dry run" in ok(invoke("models", "put", "shop", str(spec), "--dry-run", *where))
    assert not (registry / "shop" / "model.yaml").exists()
    assert "stored" in ok(invoke("models", "put", "shop", str(spec), *where))
    assert (registry / "shop" / "model.yaml").is_file()
    spec.write_text("data: {source: {dataset: sales}}\nhorizon: 3\nforecaster: {class: NaiveForecastr}\n")
    assert "did you mean NaiveForecaster" in one_line_error(invoke("models", "put", "shop", str(spec), *where))
    spec.write_text("data: {source: {dataset: sales}}\nhorizon: 9\nforecaster: {class: NaiveForecaster}\n")
    assert "history" in one_line_error(invoke("models", "put", "shop", str(spec), *where))  # 12 < 2 x 9
    assert "horizon: 3" in (registry / "shop" / "model.yaml").read_text()  # the stored spec is unchanged
    trained = ok(invoke("train", "shop", *where))  # a spec that reads an uploaded dataset trains offline too
    assert "shop v1 published and promoted" in trained
    manifest = Registry(registry).read_manifest("shop", 1)
    assert manifest["freq"] == "M" and manifest["training"]["rows"] == 12
