"""Onboarding real files on a real server: statsmodels' weekly ``co2`` (Saturdays, with
missing weeks) and sktime's ``load_shampoo_sales`` and ``load_lynx``, written to CSV as pandas
writes them and uploaded naming only the time and target column. The frequency is inferred
and reported, the user's times are kept (co2 stays on its Saturdays, in storage and in the
forecasts of a model trained on it), ``missing=`` drops or fills as pandas does, every bad
row is counted in one problem, and datasets can be listed a page at a time and deleted."""

from __future__ import annotations

import asyncio
import io
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import statsmodels.datasets.co2
from fastapi.testclient import TestClient
from sktime.datasets import load_lynx, load_shampoo_sales
from sktime.forecasting.naive import NaiveForecaster

from service.app import create_app
from tests.conftest import make_settings, wait_ready
from tests.servers import ServerProcess, running_server

CSV = {"content-type": "text/csv"}
SHAMPOO = "Number of shampoo sales"  # the names sktime gives the series and its index
LYNX = "Number of Lynx trappings"
NAIVE = {"class": "NaiveForecaster", "params": {"strategy": "last"}}
HORIZON = 8
JOB_TIMEOUT = 120.0


def co2() -> pd.Series:
    """Weekly (W-SAT) CO2 at Mauna Loa, 1958-03-29 .. 2001-12-29, 59 weeks missing."""
    return statsmodels.datasets.co2.load_pandas().data["co2"]


def co2_csv(y: pd.Series | None = None) -> bytes:
    return (co2() if y is None else y).rename_axis("week").to_csv().encode()


@dataclass
class Site:
    server: ServerProcess
    data: Path

    def stored(self, doc: dict[str, Any]) -> pd.DataFrame:
        """The latest version's table as the store wrote it (times as the periods' starts)."""
        return pd.read_parquet(self.data / "datasets" / doc["name"] / "versions" / f"{doc['latest']}.parquet")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One server for the module, on an empty registry and a data folder of its own."""
    root = tmp_path_factory.mktemp("onboarding")
    (root / "models").mkdir()
    for server in running_server(root / "models", root / "server.log", data_dir=root / "data"):
        yield Site(server, root / "data")


@pytest.fixture(scope="module")
def http(site: Site) -> Iterator[httpx.Client]:
    with site.server.client(timeout=30.0) as client:
        yield client


def problem(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


def upload(http: httpx.Client, name: str, body: bytes, **params: str) -> httpx.Response:
    return http.put(f"/v1/datasets/{name}", params=params, content=body, headers=CSV)


def uploaded(http: httpx.Client, name: str, body: bytes, **params: str) -> dict[str, Any]:
    response = upload(http, name, body, **params)
    assert response.status_code == 200, response.text
    assert http.get(f"/v1/datasets/{name}").json() == response.json()
    return response.json()


# ------------------------------------------------------------------ frequency inferred, labels kept


def test_co2_missing_weeks_are_one_problem_naming_them_all(site: Site, http: httpx.Client) -> None:
    y = co2()
    answer = problem(upload(http, "co2", co2_csv(), time="week", targets="co2"))
    gaps = np.flatnonzero(y.isna().to_numpy())
    assert answer["count"] == len(gaps) == 59
    assert answer["rows"] == gaps[:10].tolist() and answer["row"] == gaps[0]
    assert [e["row"] for e in answer["errors"]] == gaps[:10].tolist()
    assert {e["column"] for e in answer["errors"]} == {"co2"} and "missing" in answer["errors"][0]["problem"]
    assert "59 bad rows" in answer["detail"] and "missing=" in answer["hint"]
    problem(http.get("/v1/datasets/co2"), 404)  # nothing stored


@pytest.mark.parametrize("policy", ["ffill", "interpolate"])
def test_co2_filled_as_pandas_fills_it_and_kept_on_saturdays(site: Site, http: httpx.Client, policy: str) -> None:
    y = co2()
    doc = uploaded(http, f"co2-{policy}", co2_csv(), time="week", targets="co2", missing=policy)
    # the frequency: inferred by pandas as W-SAT, stored as the periods that start on those Saturdays
    assert pd.infer_freq(y.index) == "W-SAT"
    assert doc["roles"]["freq"] == "W-FRI"
    assert doc["frequency"]["freq"] == "W-FRI" and doc["frequency"]["alias"] == "W-SAT"
    assert doc["frequency"]["inferred"] is True and "Saturday" in doc["frequency"]["detail"]
    (version,) = doc["versions"]
    assert version["start"] == "1958-03-29" and version["end"] == "2001-12-29" and version["rows"] == len(y)
    assert version["missing"]["policy"] == policy and version["missing"]["values_filled"] == 59
    assert version["missing"]["rows"] == np.flatnonzero(y.isna().to_numpy())[:10].tolist()
    stored = site.stored(doc)
    assert (pd.DatetimeIndex(stored["week"]) == y.index).all()  # every time as sent, a Saturday
    assert set(pd.DatetimeIndex(stored["week"]).day_name()) == {"Saturday"}
    expected = y.ffill() if policy == "ffill" else y.interpolate(limit_area="inside")
    np.testing.assert_allclose(stored["co2"].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)


def test_co2_drop_trims_missing_ends_and_refuses_the_holes_it_would_leave(site: Site, http: httpx.Client) -> None:
    y = co2()
    answer = problem(upload(http, "co2-drop", co2_csv(), time="week", targets="co2", missing="drop"))
    missing = y.isna().to_numpy()
    runs = int(np.count_nonzero(missing[1:] & ~missing[:-1]))  # runs of missing weeks inside the series
    assert answer["count"] == runs and "not regular" in answer["detail"] and "missing=ffill" in answer["detail"]
    after_first_run = int(np.flatnonzero(missing)[0]) + int(np.argmax(~missing[np.flatnonzero(missing)[0] :]))
    assert answer["row"] == after_first_run  # the upload's row that follows the first hole
    problem(http.get("/v1/datasets/co2-drop"), 404)
    # rows 1357..1427: four missing weeks at the start, one at the end, none inside
    window = y.iloc[1357:1428]
    assert window.isna().to_numpy().nonzero()[0].tolist() == [0, 1, 2, 3, 70]
    doc = uploaded(http, "co2-drop", co2_csv(window), time="week", targets="co2", missing="drop")
    (version,) = doc["versions"]
    assert version["missing"] == {"policy": "drop", "rows_dropped": 5, "values_filled": None, "rows": [0, 1, 2, 3, 70]}
    kept = window.dropna()
    assert version["rows"] == len(kept) and version["start"] == kept.index[0].date().isoformat()
    stored = site.stored(doc)
    assert (pd.DatetimeIndex(stored["week"]) == kept.index).all()
    assert stored["co2"].tolist() == kept.tolist()


def test_an_append_fills_its_missing_weeks_from_the_stored_ones(site: Site, http: httpx.Client) -> None:
    y = co2()
    uploaded(http, "co2-append", co2_csv(y.iloc[:5]), time="week", targets="co2")
    more = http.post(
        "/v1/datasets/co2-append/observations", params={"missing": "ffill"}, content=co2_csv(y.iloc[5:11]), headers=CSV
    )
    assert more.status_code == 200, more.text
    assert more.json()["versions"][-1]["missing"]["values_filled"] == int(y.iloc[5:11].isna().sum()) == 3
    stored = site.stored(more.json())
    assert (pd.DatetimeIndex(stored["week"]) == y.index[:11]).all()
    assert stored["co2"].tolist() == y.iloc[:11].ffill().tolist()
    # without a policy the missing weeks of an append are named, and nothing changes
    answer = problem(http.post("/v1/datasets/co2-append/observations", content=co2_csv(y.iloc[11:15]), headers=CSV))
    assert answer["rows"] == [0, 1, 2] and answer["count"] == 3  # rows of the append: co2's 11, 12, 13
    assert http.get("/v1/datasets/co2-append").json() == more.json()


def test_shampoo_and_lynx_with_the_time_and_target_only(site: Site, http: httpx.Client) -> None:
    shampoo = load_shampoo_sales()
    doc = uploaded(http, "shampoo", shampoo.to_csv().encode(), time="Period", targets=SHAMPOO)
    assert doc["roles"]["freq"] == "M"
    assert doc["frequency"] == {
        "freq": "M",
        "alias": "MS",  # pandas.infer_freq of 1991-01, 1991-02, ... read as timestamps
        "inferred": True,
        "detail": doc["frequency"]["detail"],
    }
    assert doc["versions"][0]["start"] == "1991-01-01" and doc["versions"][0]["end"] == "1993-12-01"
    stored = site.stored(doc)
    assert (pd.PeriodIndex(pd.DatetimeIndex(stored["Period"]), freq="M") == shampoo.index).all()
    assert stored[SHAMPOO].tolist() == shampoo.tolist()

    # pandas writes lynx's years as 1821, 1822, ...: read back as integers, they stay integer steps
    lynx = load_lynx()
    doc = uploaded(http, "lynx", lynx.to_csv().encode(), time="Period", targets=LYNX)
    assert doc["roles"]["freq"] is None
    assert doc["frequency"]["freq"] is None and doc["frequency"]["inferred"] is True
    assert "integer" in doc["frequency"]["detail"]
    assert doc["versions"][0]["start"] == 1821 and doc["versions"][0]["end"] == 1934
    # ... and as years when asked
    years = uploaded(http, "lynx-years", lynx.to_csv().encode(), time="Period", targets=LYNX, freq="Y")
    assert years["roles"]["freq"] == "Y-DEC" and years["frequency"]["inferred"] is False
    assert years["versions"][0]["start"] == "1821-01-01" and years["versions"][0]["rows"] == len(lynx)


def test_a_timestamp_alias_keeps_the_users_times(site: Site, http: httpx.Client) -> None:
    y = co2().iloc[:5]  # no missing week
    # W-SAT given: the Saturdays of the data, not the weeks ending on Saturday that start on Sundays
    doc = uploaded(http, "co2-given", co2_csv(y), time="week", targets="co2", freq="W-SAT")
    assert doc["roles"]["freq"] == "W-FRI" and doc["frequency"]["inferred"] is False
    assert (pd.DatetimeIndex(site.stored(doc)["week"]) == y.index).all()
    assert pd.Period(y.index[0], freq="W-SAT").start_time.day_name() == "Sunday"  # what it is not stored as
    shampoo = load_shampoo_sales()
    assert (
        uploaded(http, "shampoo-ms", shampoo.to_csv().encode(), time="Period", targets=SHAMPOO, freq="MS")["roles"][
            "freq"
        ]
        == "M"
    )
    # month ends cannot be labelled by their own day: refused, saying which freq stores them
    ends = shampoo.copy()
    ends.index = shampoo.index.to_timestamp(how="end").normalize()
    answer = problem(upload(http, "shampoo-ends", ends.to_csv().encode(), time="Period", targets=SHAMPOO))
    assert answer["field"] == "freq" and "freq=M" in answer["detail"]
    problem(http.get("/v1/datasets/shampoo-ends"), 404)


# ------------------------------------------------------------------ end to end: spec, retrain, predict


def wait_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT
    job = http.get(f"/v1/jobs/{job_id}").json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = http.get(f"/v1/jobs/{job_id}").json()
    return job


def forecast(http: httpx.Client, model: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    response = http.post(f"/v1/models/{model}/predict", json={"horizon": HORIZON})
    while response.status_code != 200 and time.monotonic() < deadline:  # served moments after the job
        time.sleep(0.1)
        response = http.post(f"/v1/models/{model}/predict", json={"horizon": HORIZON})
    assert response.status_code == 200, response.text
    return response.json()


def test_models_on_the_uploaded_files_forecast_in_the_users_times(site: Site, http: httpx.Client) -> None:
    y = co2().ffill()
    lynx = load_lynx()
    lynx_steps = pd.Series(lynx.to_numpy(), index=pd.Index(lynx.index.year, dtype="int64"))
    files = {
        "co2-weekly": (co2_csv(), "week", "co2", {"missing": "ffill"}, y),
        "shampoo-monthly": (load_shampoo_sales().to_csv().encode(), "Period", SHAMPOO, {}, load_shampoo_sales()),
        "lynx-yearly": (lynx.to_csv().encode(), "Period", LYNX, {}, lynx_steps),
    }
    jobs = {}
    for name, (body, time_column, target, extra, _) in files.items():
        doc = uploaded(http, name, body, time=time_column, targets=target, **extra)
        spec = {
            "data": {"source": {"dataset": name}, "time": time_column, "targets": [target]},
            "freq": doc["roles"]["freq"],  # what the upload reported
            "horizon": HORIZON,
            "forecaster": NAIVE,
        }
        response = http.put(f"/v1/models/{name}", json=spec)
        assert response.status_code in (200, 201), response.text
        started = http.post(f"/v1/models/{name}/retrain")
        assert started.status_code == 202, started.text
        jobs[name] = started.json()["id"]
    for name, (_, time_column, target, _, series) in files.items():
        job = wait_job(http, jobs[name])
        assert job["status"] == "succeeded", job
        answer = forecast(http, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # sktime's remember_data default
            expected = NaiveForecaster(strategy="last").fit(series).predict(fh=list(range(1, HORIZON + 1)))
        if isinstance(expected.index, pd.DatetimeIndex):
            labels: list[Any] = [t.date().isoformat() for t in expected.index]
        elif isinstance(expected.index, pd.PeriodIndex):
            labels = [p.start_time.date().isoformat() for p in expected.index]
        else:
            labels = [int(t) for t in expected.index]
        assert answer["forecast"][time_column] == labels, answer
        np.testing.assert_allclose(answer["forecast"][target], expected.to_numpy())
    co2_weeks = pd.DatetimeIndex(forecast(http, "co2-weekly")["forecast"]["week"])
    assert co2_weeks[0] == pd.Timestamp("2002-01-05") and set(co2_weeks.day_name()) == {"Saturday"}
    assert forecast(http, "lynx-yearly")["forecast"]["Period"][0] == 1935


# ------------------------------------------------------------------ bad rows: all of them, in one problem


def test_every_bad_row_is_counted_in_one_problem_and_the_dataset_stays(site: Site, http: httpx.Client) -> None:
    shampoo = load_shampoo_sales()
    good = shampoo.to_csv().encode()
    before = uploaded(http, "shampoo-bad", good, time="Period", targets=SHAMPOO)
    frame = pd.read_csv(io.BytesIO(good), dtype=str)
    frame.loc[[2, 5], "Period"] = ["soon", "1992-13"]  # unparseable times
    frame.loc[[11, 14], SHAMPOO] = ["lots", "12,5"]  # not numbers
    frame.loc[20, "Period"] = frame.loc[19, "Period"]  # a duplicated month: rows 19 and 20
    frame.loc[30, SHAMPOO] = None  # missing
    answer = problem(upload(http, "shampoo-bad", frame.to_csv(index=False).encode()))
    assert answer["rows"] == [2, 5, 11, 14, 19, 20, 30] and answer["count"] == 7
    problems = {(e["row"], e["column"]): e["problem"] for e in answer["errors"]}
    assert "'soon'" in problems[(2, "Period")] and "'1992-13'" in problems[(5, "Period")]
    assert "numeric" in problems[(11, SHAMPOO)] and "'12,5'" in problems[(14, SHAMPOO)]
    assert "duplicated" in problems[(19, "Period")] and "duplicated" in problems[(20, "Period")]
    assert "missing" in problems[(30, SHAMPOO)]
    assert answer["columns"] == ["Period", SHAMPOO] and "7 bad rows" in answer["detail"]
    assert http.get("/v1/datasets/shampoo-bad").json() == before  # nothing changed

    # many bad rows: all counted, the first ten named
    frame = pd.read_csv(io.BytesIO(good), dtype=str)
    frame.loc[3:27, SHAMPOO] = "n.a."
    answer = problem(upload(http, "shampoo-bad", frame.to_csv(index=False).encode()))
    assert answer["count"] == 25 and answer["rows"] == list(range(3, 13)) and len(answer["errors"]) == 10
    assert "the first 10 of 25" in answer["detail"]
    assert http.get("/v1/datasets/shampoo-bad").json() == before


# ------------------------------------------------------------------ list a page at a time, delete


def test_pages_of_the_dataset_list(site: Site, http: httpx.Client) -> None:
    for name in ("page-a", "page-b", "page-c"):
        uploaded(http, name, co2_csv(co2().iloc[:4]), time="week", targets="co2")
    everything = http.get("/v1/datasets", params={"limit": 1000}).json()
    assert everything["next_page_token"] is None
    names = [d["name"] for d in everything["datasets"]]
    assert names == sorted(names) and {"page-a", "page-b", "page-c"} <= set(names)
    pages, token = [], None
    while True:
        page = http.get("/v1/datasets", params={"limit": 2, **({"page_token": token} if token else {})}).json()
        assert len(page["datasets"]) <= 2
        pages.extend(d["name"] for d in page["datasets"])
        token = page["next_page_token"]
        if token is None:
            break
    assert pages == names
    assert problem(http.get("/v1/datasets", params={"page_token": "not-a-token!"}))["field"] == "page_token"
    problem(http.get("/v1/datasets", params={"limit": 0}))
    problem(http.get("/v1/datasets", params={"limit": 1001}))


def test_delete_a_dataset_unless_a_model_reads_it(site: Site, http: httpx.Client) -> None:
    problem(http.delete("/v1/datasets/nothing-here"), 404)
    doc = uploaded(http, "scratch", co2_csv(co2().iloc[:4]), time="week", targets="co2")
    read = uploaded(http, "in-use", co2_csv(co2().iloc[:40]), time="week", targets="co2", missing="ffill")
    spec = {
        "data": {"source": {"dataset": "in-use"}, "time": "week", "targets": ["co2"]},
        "freq": read["roles"]["freq"],
        "horizon": 2,
        "forecaster": NAIVE,
    }
    assert http.put("/v1/models/reader", json=spec).status_code in (200, 201)
    answer = problem(http.delete("/v1/datasets/in-use"), 409)
    assert answer["models"] == ["reader"] and "reader" in answer["detail"]
    assert http.get("/v1/datasets/in-use").json() == read

    assert http.delete("/v1/datasets/scratch").status_code == 204
    problem(http.get("/v1/datasets/scratch"), 404)
    assert not (site.data / "datasets" / "scratch" / "versions").exists()
    assert "scratch" not in [d["name"] for d in http.get("/v1/datasets", params={"limit": 1000}).json()["datasets"]]
    problem(http.delete("/v1/datasets/scratch"), 404)
    # the name is free again: a new upload starts a new history
    again = uploaded(http, "scratch", co2_csv(co2().iloc[:6]), time="week", targets="co2")
    assert [v["version"] for v in again["versions"]] == [again["latest"]] != [doc["latest"]]


# ------------------------------------------------------------------ review fixes: dates, spec roles, races


PARQUET = {"content-type": "application/vnd.apache.parquet"}


def test_a_parquet_date32_time_column_uploads_and_infers_its_freq(site: Site, http: httpx.Client) -> None:
    y = co2().iloc[:6]
    frame = pd.DataFrame({"week": y.index.date, "co2": y.to_numpy()})  # datetime.date cells: date32 in Parquet
    body = io.BytesIO()
    frame.to_parquet(body, index=False)
    assert str(pd.read_parquet(io.BytesIO(body.getvalue())).dtypes["week"]) == "object"
    response = http.put(
        "/v1/datasets/co2-date32", params={"time": "week", "targets": "co2"}, content=body.getvalue(), headers=PARQUET
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["roles"]["freq"] == "W-FRI" and doc["frequency"]["alias"] == "W-SAT"
    assert (pd.DatetimeIndex(site.stored(doc)["week"]) == y.index).all()
    # the same times as CSV: the same version
    assert uploaded(http, "co2-date32-csv", co2_csv(y), time="week", targets="co2")["latest"] == doc["latest"]


def test_an_upload_with_the_roles_of_a_spec_that_leaves_freq_to_the_dataset(site: Site, http: httpx.Client) -> None:
    y = co2().iloc[:6]
    spec = {
        "data": {"source": {"dataset": "co2-by-spec"}, "time": "week", "targets": ["co2"]},
        "horizon": 2,
        "forecaster": NAIVE,
    }
    assert http.put("/v1/models/co2-spec", json=spec).status_code in (200, 201)
    doc = uploaded(http, "co2-by-model", co2_csv(y), model="co2-spec")
    assert doc["roles"]["freq"] == "W-FRI" and doc["frequency"]["inferred"] is True
    # found through the spec that names the dataset
    found = uploaded(http, "co2-by-spec", co2_csv(y))
    assert found["roles"] == doc["roles"] and found["frequency"] == doc["frequency"]


def test_a_multiple_frequency_is_refused_naming_freq(site: Site, http: httpx.Client) -> None:
    shampoo = load_shampoo_sales()
    for freq in ("2M", "2MS"):
        answer = problem(
            upload(http, "shampoo-2m", shampoo.to_csv().encode(), time="Period", targets=SHAMPOO, freq=freq)
        )
        assert answer["field"] == "freq" and "single steps" in answer["detail"], answer
    problem(http.get("/v1/datasets/shampoo-2m"), 404)


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    (tmp_path / "models").mkdir()
    with TestClient(create_app(make_settings(tmp_path / "models"))) as client:
        wait_ready(client)
        yield client


def test_the_list_skips_a_dataset_deleted_while_it_is_read_and_reads_off_the_loop(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("keep-a", "keep-b"):
        assert (
            app_client.put(
                f"/v1/datasets/{name}",
                params={"time": "week", "targets": "co2"},
                content=co2_csv(co2().iloc[:4]),
                headers=CSV,
            ).status_code
            == 200
        )
    store = app_client.app.state.runtime.datasets
    names, describe = store.names, store.describe
    on_loop = []

    def describe_off_loop(name: str) -> dict[str, Any]:
        try:
            asyncio.get_running_loop()
            on_loop.append(name)
        except RuntimeError:
            pass
        return describe(name)

    monkeypatch.setattr(store, "names", lambda after=None, limit=None: [*names(after, limit), "gone"])
    monkeypatch.setattr(store, "describe", describe_off_loop)
    listing = app_client.get("/v1/datasets")
    assert listing.status_code == 200, listing.text
    assert [d["name"] for d in listing.json()["datasets"]] == ["keep-a", "keep-b"]
    assert app_client.get("/v1/datasets/keep-a").status_code == 200
    assert on_loop == []  # the list and the detail read dataset.json on a worker thread
