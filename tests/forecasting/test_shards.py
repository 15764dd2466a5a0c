"""Sharded panel versions answer exactly what the same version stored whole answers: the
precomputed table, live horizons, intervals, quantiles and observations, for a panel and a
3-level hierarchy of per-series models; a live request unpickles only the shards of its
series; a tampered shard refuses the version; a killed publish lists no version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sktime.forecasting.naive import NaiveForecaster
from sktime.forecasting.reconcile import ReconcilerForecaster
from sktime.forecasting.theta import ThetaForecaster

from service.errors import IntegrityError, SeriesNotFound
from service.forecasting import chunked_fit
from service.forecasting.publishing import PublishRequest, publish_version
from service.forecasting.served import Limits, PredictQuery, ServedVersion, load_served
from service.forecasting.shards import ShardCache, load_fitted
from service.registry.store import Registry
from service.serving.cache import ModelCache
from service.tables import Schema, canonical_table, to_sktime
from tests.factories import wait_for

PANEL = Schema(kind="panel", keys=("store",), time="month", targets=("sales",), freq="M")
HIERARCHY = Schema(kind="hierarchical", keys=("region", "store"), time="month", targets=("sales",), freq="M")
LIMITS = Limits()


@pytest.fixture(autouse=True)
def forked_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked workers, as in a job's process (one thread), whatever threads pytest runs."""
    monkeypatch.setattr(chunked_fit, "can_fork", lambda: True)


def panel_table(n_series: int, length: int = 48, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    months = pd.period_range("2015-01", periods=length, freq="M")
    season = 10 * np.sin(np.arange(length) * 2 * np.pi / 12)
    frames = [
        pd.DataFrame({"store": f"s{i:03d}", "month": months, "sales": 200 + season + rng.normal(size=length).cumsum()})
        for i in range(n_series)
    ]
    return canonical_table(pd.concat(frames, ignore_index=True), PANEL, what="test data")


def hierarchy_table(regions: int = 3, stores: int = 4, length: int = 48, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    months = pd.period_range("2015-01", periods=length, freq="M")
    frames = [
        pd.DataFrame({"region": f"r{r}", "store": f"r{r}s{s}", "month": months, "sales": 100 + rng.gamma(3, 4, length)})
        for r in range(regions)
        for s in range(stores)
    ]
    return canonical_table(pd.concat(frames, ignore_index=True), HIERARCHY, what="test data")


def fitted(forecaster: Any, table: pd.DataFrame, schema: Schema, horizon: int = 12) -> Any:
    y, _ = to_sktime(table, schema)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return forecaster.fit(y, fh=list(range(1, horizon + 1)))


def publish_both(
    tmp_path: Path, forecaster: Any, table: pd.DataFrame, schema: Schema, per_shard: int, **request: Any
) -> tuple[ServedVersion, ServedVersion, ShardCache]:
    """The same fitted forecaster published whole and as shards; both loaded to serve."""
    served = []
    cache = ShardCache(max_bytes=2**40)
    for folder, shard_series in (("whole", 0), ("sharded", per_shard)):
        registry = Registry(tmp_path / folder, shard_series=shard_series)
        version = publish_version(
            registry, "m", forecaster, PublishRequest(training=table, schema=schema, horizon=12, **request)
        )
        served.append(load_served(registry, "m", version, cache))
    assert served[0].sharded is None and served[1].sharded is not None
    assert cache.loads == []  # loading to serve unpickled no shard
    return served[0], served[1], cache


def same_answer(whole: ServedVersion, sharded: ServedVersion, query: PredictQuery) -> None:
    expected, got = whole.answer(query, LIMITS), sharded.answer(query, LIMITS)
    assert list(got.columns) == list(expected.columns)
    for name, column in expected.columns.items():
        if column.dtype.kind == "f":
            np.testing.assert_array_equal(got.columns[name], column, err_msg=name)
        else:
            assert list(got.columns[name]) == list(column), name
    assert got.fast == expected.fast and got.cutoff == expected.cutoff
    assert got.observations_mode == expected.observations_mode


def observations(table: pd.DataFrame, schema: Schema, series: list[tuple[str, ...]], steps: int = 2) -> pd.DataFrame:
    """New actuals after the cutoff for ``series``: the last values shifted up a little."""
    keys = list(schema.keys)
    last = table.groupby(keys, sort=False).tail(1)
    chosen = last[pd.MultiIndex.from_frame(last[keys]).isin(pd.MultiIndex.from_tuples(series))]
    rows = []
    for step in range(1, steps + 1):
        part = chosen.copy()
        part[schema.time] = part[schema.time] + step
        part[schema.targets[0]] = part[schema.targets[0]] * (1 + 0.03 * step)
        rows.append(part)
    return pd.concat(rows, ignore_index=True)


def test_a_sharded_panel_answers_exactly_what_the_whole_one_answers(tmp_path: Path) -> None:
    table = panel_table(50)
    forecaster = fitted(ThetaForecaster(sp=12), table, PANEL)
    whole, sharded, cache = publish_both(
        tmp_path, forecaster, table, PANEL, per_shard=7, coverage=[0.8, 0.95], quantiles=[0.1, 0.9]
    )
    manifest = sharded.manifest
    assert manifest["shards"]["count"] == 8 and manifest["shards"]["series_per_shard"] == 7
    assert manifest["artifact"]["format"] == "pickle-shards"
    assert all(f in manifest["files"] for f in manifest["shards"]["files"])
    assert "artifact.pkl" not in manifest["files"]
    assert whole.fast is not None and sharded.fast is not None
    for name, column in whole.fast.columns.items():  # the precomputed table, computed per shard
        assert list(sharded.fast.columns[name]) == list(column), name
    # fast path: no shard is unpickled
    for query in (
        PredictQuery(),
        PredictQuery(series=(("s003",), ("s041",)), coverage=(0.8,), quantiles=(0.9,)),
        PredictQuery(fh=(2, 5), series=(("s010",),)),
    ):
        same_answer(whole, sharded, query)
    assert cache.loads == []
    # live: a horizon past the precomputed one, for series of shards 1 and 5
    same_answer(whole, sharded, PredictQuery(horizon=18, series=(("s008",), ("s036",)), coverage=(0.9,)))
    assert sorted(k[2] for k in cache.loads) == [1, 5]
    # a coverage not precomputed, every series (every shard)
    same_answer(whole, sharded, PredictQuery(coverage=(0.5,), quantiles=(0.25,)))
    assert sorted(k[2] for k in cache.loads) == list(range(8))


def test_observations_on_a_sharded_panel_load_only_the_shards_of_their_series(tmp_path: Path) -> None:
    table = panel_table(30, seed=3)
    forecaster = fitted(NaiveForecaster(strategy="last", sp=12), table, PANEL)
    whole, sharded, cache = publish_both(tmp_path, forecaster, table, PANEL, per_shard=4, coverage=[0.9])
    some = [("s005",), ("s006",), ("s021",)]
    query = PredictQuery(observations=observations(table, PANEL, some), coverage=(0.9,))
    same_answer(whole, sharded, query)
    assert sorted(k[2] for k in cache.loads) == [1, 5]  # s005, s006 in shard 1, s021 in shard 5
    everything = [(f"s{i:03d}",) for i in range(30)]
    same_answer(whole, sharded, PredictQuery(observations=observations(table, PANEL, everything), horizon=14))
    assert sorted({k[2] for k in cache.loads}) == list(range(8))
    assert whole.forecaster.predict().equals(fitted(NaiveForecaster(strategy="last", sp=12), table, PANEL).predict())


def test_repeated_live_requests_for_the_same_series_reuse_a_copy_that_no_update_touched(tmp_path: Path) -> None:
    table = panel_table(12, seed=6)
    forecaster = fitted(ThetaForecaster(sp=12), table, PANEL)
    whole, sharded, cache = publish_both(tmp_path, forecaster, table, PANEL, per_shard=5)
    some = [("s002",), ("s008",)]
    first = observations(table, PANEL, some)
    same_answer(whole, sharded, PredictQuery(observations=first))
    loaded = list(cache.loads)
    assert sharded.sharded is not None and len(sharded.sharded._copies) == 1
    cache.forget("m", sharded.version)  # the shards are gone; the remembered copy answers alone
    other = first.assign(sales=first["sales"] * 1.5)  # another update of the same series
    same_answer(whole, sharded, PredictQuery(observations=other))
    same_answer(whole, sharded, PredictQuery(observations=first))  # the first update left no trace
    assert cache.loads == loaded
    answers = [sharded.answer(PredictQuery(observations=o), LIMITS).columns["sales"] for o in (first, other)]
    assert not np.array_equal(*answers)


def test_a_refitted_theta_panel_takes_observations_per_shard(tmp_path: Path) -> None:
    table = panel_table(12, seed=5)
    forecaster = fitted(ThetaForecaster(sp=12), table, PANEL)
    whole, sharded, _ = publish_both(tmp_path, forecaster, table, PANEL, per_shard=5)
    assert sharded.observations["mode"] == whole.observations["mode"] == "refit"
    query = PredictQuery(observations=observations(table, PANEL, [("s001",), ("s007",)], steps=3))
    same_answer(whole, sharded, query)


def test_a_three_level_hierarchy_of_per_node_models_shards_with_equal_numbers(tmp_path: Path) -> None:
    table = hierarchy_table()
    forecaster = fitted(ThetaForecaster(sp=12), table, HIERARCHY)
    whole, sharded, cache = publish_both(tmp_path, forecaster, table, HIERARCHY, per_shard=5, coverage=[0.8])
    assert sharded.manifest["shards"]["count"] == 4  # 12 stores + 3 regions + 1 total = 16 nodes
    same_answer(whole, sharded, PredictQuery(series=(("r1", "__total"), ("__total", "__total")), coverage=(0.8,)))
    assert cache.loads == []
    same_answer(whole, sharded, PredictQuery(horizon=15, series=(("r2", "r2s1"), ("r1", "__total"))))
    bottom = [(f"r{r}", f"r{r}s{s}") for r in range(3) for s in range(4)]
    same_answer(whole, sharded, PredictQuery(observations=observations(table, HIERARCHY, bottom), coverage=(0.8,)))


def test_a_reconciled_hierarchy_stays_one_artifact(tmp_path: Path) -> None:
    table = hierarchy_table(2, 2)
    forecaster = fitted(ReconcilerForecaster(NaiveForecaster(strategy="last"), method="ols"), table, HIERARCHY)
    registry = Registry(tmp_path, shard_series=2)
    version = publish_version(registry, "h", forecaster, PublishRequest(training=table, schema=HIERARCHY, horizon=6))
    manifest = registry.read_manifest("h", version)
    assert "shards" not in manifest and "artifact.pkl" in manifest["files"]


def test_the_whole_forecaster_of_a_sharded_version_is_the_fitted_one(tmp_path: Path) -> None:
    table = panel_table(20, seed=2)
    forecaster = fitted(ThetaForecaster(sp=12), table, PANEL)
    registry = Registry(tmp_path, shard_series=6)
    version = publish_version(registry, "m", forecaster, PublishRequest(training=table, schema=PANEL, horizon=12))
    whole = load_fitted(registry, "m", version).forecaster
    pd.testing.assert_frame_equal(whole.predict(), forecaster.predict())
    pd.testing.assert_frame_equal(whole.predict_interval(coverage=[0.9]), forecaster.predict_interval(coverage=[0.9]))


def test_a_tampered_shard_refuses_the_version_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    table = panel_table(20, seed=4)
    forecaster = fitted(NaiveForecaster(strategy="last"), table, PANEL)
    registry = Registry(tmp_path, shard_series=6)
    first = publish_version(registry, "m", forecaster, PublishRequest(training=table, schema=PANEL, horizon=12))
    registry.set_alias("m", "production", first)
    cache = ModelCache(registry)
    cache.refresh()
    assert cache.get("m").version == first
    second = publish_version(registry, "m", forecaster, PublishRequest(training=table, schema=PANEL, horizon=12))
    shard = registry.version_dir("m", second) / "shards" / "00002.pkl"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"00002\.pkl sha256"):
        load_served(registry, "m", second, ShardCache(2**30))
    registry.set_alias("m", "production", second)
    cache.refresh()
    assert cache.get("m").version == first  # still the old one
    assert cache.state("m").failures[second].kind == "integrity"


def test_a_publish_killed_while_writing_shards_lists_no_version(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, warnings
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        warnings.simplefilter("ignore")
        from test_shards import PANEL, fitted, panel_table
        from sktime.forecasting.theta import ThetaForecaster
        from service.forecasting.publishing import PublishRequest, publish_version
        from service.registry.store import Registry
        table = panel_table(400, length=36)
        forecaster = fitted(ThetaForecaster(sp=12), table, PANEL)
        print("fitted", flush=True)
        registry = Registry({str(tmp_path)!r}, shard_series=5)
        publish_version(registry, "m", forecaster, PublishRequest(training=table, schema=PANEL, horizon=12))
        print("published", flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=os.getcwd()
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "fitted"
        versions = tmp_path / "m" / "versions"
        deadline = time.monotonic() + 120
        while not list(versions.glob(".staging-*/shards/*.pkl")):
            assert process.poll() is None, "the publish ended before it wrote a shard"
            assert time.monotonic() < deadline, "no shard written within 120 s"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # the publisher and its workers
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    registry = Registry(tmp_path)
    assert registry.list_versions("m") == []
    assert list(versions.glob(".staging-*"))  # half a version was left behind ...
    # ... and is removed on start, once the killed publisher's forked workers (which share its
    # lock on the staging folder) have died too
    wait_for(lambda: bool(registry.cleanup_staging()) or not list(versions.glob(".staging-*")), 30, "cleanup")
    assert not list(versions.glob(".staging-*"))


def test_the_shard_cache_counts_each_shard_once_under_concurrent_loads() -> None:
    cache = ShardCache(max_bytes=300)

    def load(key: int) -> Any:
        time.sleep(0.001)
        return object()

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for key in rng.integers(0, 8, size=200):
            cache.get(("m", 1, int(key)), 100, lambda k=int(key): load(k))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.bytes == 100 * len(cache) and cache.bytes <= 300  # the count is what is held
    assert len(cache) == 3  # the budget holds three shards, not one


def test_a_series_the_index_does_not_know_is_a_404(tmp_path: Path) -> None:
    table = panel_table(12, seed=6)
    forecaster = fitted(NaiveForecaster(strategy="last"), table, PANEL)
    _, sharded, _ = publish_both(tmp_path, forecaster, table, PANEL, per_shard=5)
    assert sharded.sharded is not None
    with pytest.raises(SeriesNotFound):
        sharded.sharded.forecaster_for([("s999",)])


def test_observations_for_some_series_of_a_whole_panel_update_copies_of_their_models_only(tmp_path: Path) -> None:
    """A whole (unsharded) panel of per-series models takes new actuals for two of its series
    like sktime's full update of a copy (the others continued by their own forecasts), while
    the copy it updates holds those two series' models alone."""
    import pickle

    table = panel_table(12, seed=3)
    forecaster = fitted(ThetaForecaster(sp=12), table, PANEL)
    whole, _, _ = publish_both(tmp_path, forecaster, table, PANEL, per_shard=5)
    assert whole.observations["mode"] == "refit"
    named = [("s002",), ("s009",)]
    new = observations(table, PANEL, named, steps=2)
    answer = whole.answer(PredictQuery(observations=new, horizon=6, coverage=(0.8,)), LIMITS)

    # sktime directly: every series' new values (the two given, the rest their own forecasts), update, predict
    reference = pickle.loads(pickle.dumps(forecaster))
    y_new, _ = to_sktime(new, PANEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = reference.predict(fh=[1, 2])
        y_all = own.copy()
        y_all.loc[y_new.index, "sales"] = y_new["sales"]
        reference.update(y_all, update_params=True)
        point = reference.predict(fh=list(range(1, 7)))
        band = reference.predict_interval(fh=list(range(1, 7)), coverage=0.8)
    keep = point.index.droplevel(-1).isin([s for (s,) in named])
    np.testing.assert_allclose(answer.columns["sales"], point["sales"][keep].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        answer.columns["sales_lower_80"], band[("sales", 0.8, "lower")][keep].to_numpy(), rtol=1e-12
    )
    assert list(answer.columns["store"]) == ["s002"] * 6 + ["s009"] * 6

    private = whole._private_forecaster(named)
    assert list(private.forecasters_.index) == ["s002", "s009"]
    assert private.forecasters_.iloc[0, 0] is not whole.forecaster.forecasters_.loc["s002"].iloc[0]
