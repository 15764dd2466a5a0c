"""A sharded retrain on a Dask LocalCluster of two worker processes: the shard tasks (pickle
and precompute) and the gate's backtest chunks fan out over the cluster, the workers write
the shards into the version's staging folder, and the version is the one the local path
publishes (same shards, same precomputed forecast, same served numbers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from service.forecasting.served import Limits, PredictQuery, load_served
from service.forecasting.shards import ShardCache
from service.jobs.context import WorkerContext
from service.jobs.executors.dask import DaskExecutor
from service.jobs.executors.local import LocalProcessExecutor
from service.jobs.runner import JobRunner
from service.jobs.store import JobStore, process_owner
from service.registry.store import Registry
from tests.scaleout.conftest import local_cluster
from tests.scaleout.jobs_api import drive

pytestmark = pytest.mark.slow

PER_SHARD = 5


@pytest.fixture(scope="module")
def two_workers() -> Iterator[Any]:
    with local_cluster(2) as cluster:
        yield cluster


def registry_with_spec(root: Path) -> Path:
    tourism = yaml.safe_load((Path(__file__).parents[2] / "models" / "tourism-monthly" / "model.yaml").read_text())
    spec = {
        "description": "24 tourism series, Theta per series",
        "data": {**tourism["data"], "source": {"builtin": "tourism-monthly", "series": 24, "length": 72}},
        "freq": tourism["freq"],
        "horizon": 12,
        "coverage": [0.9],
        "forecaster": {"class": "ThetaForecaster", "params": {"sp": 12}},
    }
    folder = root / "models" / "tour"
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(spec))
    return root / "models"


def retrain_twice(executor: Any, root: Path) -> tuple[Registry, list[dict[str, Any]]]:
    """Two retrains (the second one's gate backtests the sharded first) through a runner."""
    registry_path = registry_with_spec(root)
    url = f"sqlite:///{root / 'jobs.sqlite'}"
    store = JobStore(url)
    context = WorkerContext(
        jobs_url=url,
        registry_path=str(registry_path),
        data_dir=str(root / "data"),
        owner=process_owner(),
        shard_series=PER_SHARD,
    )
    runner = JobRunner(store, executor, context, max_concurrent=1)
    results = []
    try:
        for _ in range(2):
            job, _ = store.create("retrain", "tour", {"promote": "always"})
            finished = drive(runner, store, job.id, timeout=300)
            assert finished.status == "succeeded", finished
            assert finished.result is not None
            results.append(finished.result)
    finally:
        runner.shutdown()
        store.dispose()
    return context.registry(), results


def prefixes_run(cluster: Any) -> set[str]:
    from distributed import Client

    with Client(cluster.scheduler_address, timeout=30, set_as_default=False) as client:
        return set(client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes)))


def test_a_sharded_retrain_on_dask_publishes_what_the_local_path_publishes(two_workers: Any, tmp_path: Path) -> None:
    on_dask, dask_results = retrain_twice(DaskExecutor(two_workers.scheduler_address), tmp_path / "dask")
    local, local_results = retrain_twice(LocalProcessExecutor(), tmp_path / "local")

    ran = prefixes_run(two_workers)
    assert "write_shard" in ran, ran  # shards were pickled and precomputed as cluster tasks
    assert "evaluate_chunk" in ran, ran  # and the gate's backtests ran by chunk there
    for dask_result, local_result in zip(dask_results, local_results, strict=True):
        assert dask_result["version"] == local_result["version"]
        for side in ("candidate", "production"):
            if local_result["metrics"][side] is None:
                assert dask_result["metrics"][side] is None
            else:
                assert dask_result["metrics"][side] == pytest.approx(local_result["metrics"][side], rel=1e-9)
    assert dask_results[1]["metrics"]["production"] is not None

    for version in (1, 2):
        theirs, ours = local.read_manifest("tour", version), on_dask.read_manifest("tour", version)
        assert ours["shards"]["count"] == theirs["shards"]["count"] == 5
        assert ours["files"]["forecast.parquet"]["sha256"] == theirs["files"]["forecast.parquet"]["sha256"]
        served = [load_served(r, "tour", version, ShardCache(2**30)) for r in (local, on_dask)]
        query = PredictQuery(horizon=15, series=(("T003",), ("T017",)), coverage=(0.9,))
        expected, got = (s.answer(query, Limits()) for s in served)
        for name, column in expected.columns.items():
            pd.testing.assert_series_equal(pd.Series(got.columns[name]), pd.Series(column), check_names=False)
