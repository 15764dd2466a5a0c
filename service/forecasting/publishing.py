"""Building a version: capability probe, precompute, manifest content; the finished
files go to the registry store (`Registry.write_version`). Also publishing a forecaster
fitted outside the service (notebook, script)."""

from __future__ import annotations

import io
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from service.errors import InvalidInput, ServiceError
from service.fileio import sha256_bytes
from service.forecasting.auto import choice_counts, find_choices
from service.forecasting.capabilities import probe_capabilities
from service.forecasting.chunked_fit import map_shared
from service.forecasting.observations import probe_observations
from service.forecasting.predict import cutoff_of, private_copy, run_forecast
from service.forecasting.shards import SHARD_INDEX, index_table, shard_file, shardable, split
from service.forecasting.sktime_internals import remembered_x, remembered_y
from service.forecasting.specs import jsonable, qualified_name, read_spec
from service.registry.store import (
    ARTIFACT,
    FORECAST,
    MANIFEST_FORMAT,
    TRAINING,
    Registry,
    library_versions,
    validate_name,
    write_staged_file,
)
from service.tables import (
    Schema,
    canonical_table,
    fingerprint,
    format_time,
    from_sktime,
    to_sktime,
    write_parquet,
)

log = logging.getLogger(__name__)

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/=+-]{0,63}$")

CHOICES = "choices.parquet"
CHOICES_INLINE = 1000
"""A version of an ``auto`` forecaster (`AutoStatistical`) lists what it chose per series in
its manifest up to this many series; a larger or sharded panel writes them to `CHOICES`."""


@dataclass
class PublishRequest:
    """Everything a new version records besides the fitted forecaster itself."""

    training: pd.DataFrame
    schema: Schema
    horizon: int
    coverage: list[float] = field(default_factory=list)
    quantiles: list[float] = field(default_factory=list)
    spec: Mapping[str, Any] | None = None
    source: Mapping[str, Any] | None = None
    dataset_version: str | None = None
    job_id: str | None = None
    fit_seconds: float | None = None
    metrics: Mapping[str, Any] | None = None
    precompute: bool = True
    observations: str = "auto"  # the spec's choice: auto | state | refit | none
    description: str | None = None  # what this version is, from whoever published it (CLI --description)
    tags: list[str] = field(default_factory=list)  # free labels (CLI --tag), shown in the model list

    def __post_init__(self) -> None:
        if self.description is not None and (not isinstance(self.description, str) or len(self.description) > 2000):
            raise InvalidInput("a version's description is a string of at most 2000 characters", field="description")
        tags = list(self.tags or [])
        if len(tags) > 32 or any(not isinstance(t, str) or not TAG_PATTERN.fullmatch(t) for t in tags):
            raise InvalidInput(
                "tags: at most 32, each 1-64 characters of letters, digits and . _ : / = + - (no spaces)",
                field="tags",
            )
        self.tags = list(dict.fromkeys(tags))


def publish_version(registry: Registry, name: str, forecaster: Any, request: PublishRequest) -> int:
    """Probe, precompute, describe, then hand the files to the store; returns the new
    version's number (never exposes half a version). A panel of per-series models with more
    series than the registry's ``shard_series`` is written as shards, each pickled and
    precomputed on a worker (`shards`)."""
    validate_name(name)
    if getattr(forecaster, "is_fitted", True) is False:
        raise InvalidInput("the forecaster is not fitted", model=name)
    schema = request.schema
    training_x = remembered_x(forecaster)
    capabilities = probe_capabilities(forecaster, schema, training_x)
    series_count = len(request.training[list(schema.keys)].drop_duplicates()) if schema.keys else 1
    observations = probe_observations(forecaster, schema, request.observations, series_count, request.horizon)
    coverage = list(request.coverage) if capabilities["pred_int"]["available"] else []
    quantiles = list(request.quantiles) if capabilities["quantiles"]["available"] else []
    precompute = request.precompute and not schema.exogenous
    steps = list(range(1, request.horizon + 1))
    per_shard = registry.shard_series
    with registry.new_version(name) as staged:
        if per_shard and shardable(forecaster) and len(forecaster.forecasters_) > per_shard:
            parts = split(forecaster, per_shard)
            written = map_shared(
                _write_shard, parts, (str(staged.path), schema, steps, coverage, quantiles, precompute)
            )
            for number, (entry, _) in enumerate(written):
                staged.add(shard_file(number), entry)
            staged.write(SHARD_INDEX, index_table(parts, schema.keys))
            tables = [table for _, table in written]
            precomputed = pd.concat(tables, ignore_index=True) if precompute else None
            artifact_entry: dict[str, Any] = {
                "file": None,
                "format": "pickle-shards",
                "sha256": None,
                "size": sum(int(entry["size"]) for entry, _ in written),
            }
            shards = {
                "series_per_shard": per_shard,
                "count": len(parts),
                "index": SHARD_INDEX,
                "files": [shard_file(n) for n in range(len(parts))],
            }
        else:
            artifact = pickle.dumps(forecaster, protocol=pickle.HIGHEST_PROTOCOL)
            staged.write(ARTIFACT, artifact)
            artifact_entry = {
                "file": ARTIFACT,
                "format": "pickle",
                "sha256": sha256_bytes(artifact),
                "size": len(artifact),
            }
            shards = None
            # a private copy: predicting writes to the forecaster (sktime), the artifact must not change
            precomputed = (
                run_forecast(private_copy(forecaster), schema, steps, coverage, quantiles) if precompute else None
            )
        cutoff = cutoff_of(forecaster)
        table = request.training
        times = table[schema.time]
        series = table[list(schema.keys)].drop_duplicates().astype(str).to_numpy().tolist() if schema.keys else []
        staged.write(TRAINING, _parquet_bytes(table, schema))
        if precomputed is not None:
            staged.write(FORECAST, _parquet_bytes(precomputed, schema))
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "model": name,
            "version": None,  # set under the lock
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "artifact": artifact_entry,
            "forecaster": {
                "class": qualified_name(forecaster),
                "params": jsonable(forecaster.get_params(deep=False)) if hasattr(forecaster, "get_params") else {},
            },
            "spec": jsonable(dict(request.spec)) if request.spec is not None else None,
            "schema": schema.to_dict(),
            "kind": schema.kind,
            "freq": schema.freq,
            "cutoff": format_time(cutoff),
            "horizon": int(request.horizon),
            "series": {"keys": list(schema.keys), "count": max(len(series), 1), "ids": series},
            "training": {
                "file": TRAINING,
                "fingerprint": fingerprint(table, schema),
                "rows": len(table),
                "start": format_time(times.min()),
                "end": format_time(times.max()),
                "source": jsonable(dict(request.source)) if request.source else None,
                "dataset_version": request.dataset_version,
            },
            "precomputed": {
                "file": FORECAST if precomputed is not None else None,
                "horizon": int(request.horizon) if precomputed is not None else 0,
                "coverage": coverage if precomputed is not None else [],
                "quantiles": quantiles if precomputed is not None else [],
            },
            "capabilities": capabilities,
            "observations": observations,
            "libraries": library_versions(),
            "job_id": request.job_id,
            "fit_seconds": request.fit_seconds,
            "metrics": jsonable(dict(request.metrics)) if request.metrics else {},
            "description": request.description,
            "tags": list(request.tags),
        }
        if shards is not None:
            manifest["shards"] = shards
        choices = _choices_section(forecaster, schema, sharded=shards is not None)
        if choices is not None:
            section, table = choices
            if table is not None:
                staged.write(CHOICES, table)  # listed in manifest["files"] (sha256, signed) like shards.parquet
            manifest["choices"] = section
        return staged.commit(manifest)


def _choices_section(forecaster: Any, schema: Schema, sharded: bool) -> tuple[dict[str, Any], bytes | None] | None:
    """What an ``auto`` forecaster chose per series (`service.forecasting.auto.find_choices`):
    the manifest's ``choices`` section (counts per choice, and the records themselves up to
    `CHOICES_INLINE` series of an unsharded version) and, beyond that, the `CHOICES` table."""
    records = find_choices(forecaster)
    if records is None:
        return None
    inline = not sharded and len(records) <= CHOICES_INLINE
    section = {
        "series": len(records),
        "chosen": choice_counts(records),
        "fallbacks": sum(1 for r in records if r["fallback"] is not None),
        "file": None if inline else CHOICES,
        "records": jsonable(records) if inline else None,
    }
    return section, None if inline else _choices_table(records, schema)


def _choices_table(records: list[dict[str, Any]], schema: Schema) -> bytes:
    """`CHOICES`: one row per record, the series' key columns (text), then ``target`` (several
    targets only), ``chosen``, ``fallback``, ``weight_<member>`` and (members some series backtested)
    ``backtest_mape_<member>``; a member a series did not use is NaN there."""
    keys = list(schema.keys) or ["series"]
    weighted = list(dict.fromkeys(m for r in records for m in r["weights"]))
    scored = list(dict.fromkeys(m for r in records for m in r["backtest_mape"]))
    columns: dict[str, Any] = {
        k: [r["series"][i] if i < len(r["series"]) else None for r in records] for i, k in enumerate(keys)
    }
    if any("target" in r for r in records):
        columns["target"] = [r.get("target") for r in records]
    columns["chosen"] = [r["chosen"] for r in records]
    columns["fallback"] = [r["fallback"] for r in records]
    for member in weighted:
        columns[f"weight_{member}"] = [float(r["weights"].get(member, np.nan)) for r in records]
    for member in scored:
        columns[f"backtest_mape_{member}"] = [float(r["backtest_mape"].get(member, np.nan)) for r in records]
    buffer = io.BytesIO()
    pd.DataFrame(columns).to_parquet(buffer, index=False)
    return buffer.getvalue()


def _write_shard(
    number: int,
    shard: Any,
    staging: str,
    schema: Schema,
    steps: list[int],
    coverage: list[float],
    quantiles: list[float],
    precompute: bool,
) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """On a worker: one shard pickled into the staging folder, then its default forecast."""
    entry = write_staged_file(staging, shard_file(number), pickle.dumps(shard, protocol=pickle.HIGHEST_PROTOCOL))
    if not precompute:
        return entry, None
    shard.set_config(**{"backend:parallel": None})  # this is a worker already; the file is written
    with threadpool_limits(limits=1):
        return entry, run_forecast(shard, schema, steps, coverage, quantiles)


def _parquet_bytes(table: pd.DataFrame, schema: Schema) -> bytes:
    buffer = io.BytesIO()
    write_parquet(table, schema, buffer)  # type: ignore[arg-type]
    return buffer.getvalue()


def read_fitted(path: Path) -> Any:
    """Read a forecaster saved with sktime ``save()`` (zip) or joblib/pickle.
    The file is trusted code, like the registry itself: only publish your own files."""
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file")
    if zipfile.is_zipfile(path):
        from sktime.base import load

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return load(str(path.with_suffix("")) if path.suffix == ".zip" else str(path))
        except Exception as exc:  # a zip that sktime did not write: KeyError, ValueError, ...
            raise InvalidInput(f"{path.name}: not an sktime save() archive ({type(exc).__name__}: {exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return joblib.load(path)
    except Exception as exc:  # joblib raises KeyError, ValueError, UnpicklingError... on junk
        raise InvalidInput(f"{path.name}: not a joblib/pickle file ({type(exc).__name__}: {exc})") from None


def publish_fitted(
    registry: Registry,
    name: str,
    forecaster: Any,
    horizon: int | None = None,
    *,
    time: str | None = None,
    targets: Sequence[str] | None = None,
    description: str | None = None,
    tags: Sequence[str] = (),
) -> int:
    """Publish with the training data the forecaster remembers (sktime ``_y``/``_X``).

    Column names come from the model's spec when it has one (``time``/``targets``, if given,
    must agree with it), else from ``time``/``targets``, else from the data: sktime keeps a
    univariate forecaster's data as an unnamed Series, so the names its predictions carry
    (the columns it was fitted on) are used, then ``y`` and ``time``."""
    if getattr(forecaster, "is_fitted", False) is not True:
        raise InvalidInput("the file does not hold a fitted sktime forecaster")
    y = remembered_y(forecaster)
    if y is None:
        raise InvalidInput("the forecaster remembers no training data (set_config(remember_data=True) before fit)")
    x = remembered_x(forecaster)
    spec = read_spec(registry, name)
    keys: list[str] | None = None
    if spec is not None:  # a dataset spec may leave roles to its dataset: those come from the data here
        if spec.data.time is not None:
            _agree(spec.data.time, time, "--time")
            time = spec.data.time
        if spec.data.targets is not None:
            _agree(spec.data.targets, list(targets) if targets is not None else None, "--target")
            targets = list(spec.data.targets)
        keys = None if "keys" in spec.data.inherited_roles else list(spec.data.keys)
    elif targets is None and x is None and isinstance(y, pd.Series) and y.name is None:
        targets = _predicted_names(forecaster)
    long, facts = from_sktime(y, x, keys=keys, time=time, targets=targets)
    if spec is not None and not spec.inherited_settings and spec.freq != facts["freq"]:
        raise InvalidInput(
            f"model '{name}' has freq {spec.freq or 'none (integer steps)'} in its spec; the forecaster "
            f"was fitted on {facts['freq'] or 'integer steps'}",
            model=name,
        )
    schema = Schema(
        **{
            **facts,
            "keys": tuple(facts["keys"]),
            "targets": tuple(facts["targets"]),
            "exogenous": tuple(facts["exogenous"]),
        }
    )
    table = canonical_table(long, schema, what="training data")
    horizon = horizon or (spec.horizon if spec else 12)
    source = None
    if isinstance(y.index.get_level_values(-1), pd.DatetimeIndex):
        forecaster = _refit_on_periods(forecaster, table, schema, horizon)
        source = {"refitted": f"on {schema.freq} periods, from a forecaster fitted on timestamps"}
    version = publish_version(
        registry,
        name,
        forecaster,
        PublishRequest(
            training=table,
            schema=schema,
            horizon=horizon,
            coverage=spec.coverage if spec else [],
            quantiles=spec.quantiles if spec else [],
            spec=registry.read_spec_raw(name),
            source=source,
            observations=spec.observations if spec else "auto",
            description=description,
            tags=list(tags),
        ),
    )
    if spec is not None:
        keep_newest(registry, name, spec.keep_versions)
    return version


def keep_newest(registry: Registry, name: str, keep: int | None) -> tuple[list[int], str | None]:
    """The spec's retention (``keep_versions``) after a publish: versions no alias points at
    beyond the newest ``keep`` are deleted. Returns the deleted numbers and, when it failed,
    why (logged; the next publish retries)."""
    if not keep:
        return [], None
    try:
        return registry.prune_versions(name, keep), None
    except ServiceError as exc:
        log.warning("retention of %s skipped: %s", name, exc.detail)
        return [], exc.detail[:500]


def _refit_on_periods(forecaster: Any, table: pd.DataFrame, schema: Schema, horizon: int) -> Any:
    """A forecaster fitted on timestamps, refitted (a clone) on the same data as the periods that
    start at them: the service serves periods (cutoffs, steps, observations, stored tables).
    Published only if it forecasts the same numbers as the original over ``horizon``."""
    if schema.exogenous:
        raise InvalidInput(
            f"a forecaster with exogenous data fitted on timestamps cannot be checked here: "
            f"fit it on periods (y.to_period('{schema.freq}'), X.to_period('{schema.freq}'))"
        )
    y, _ = to_sktime(table, schema)
    steps = list(range(1, horizon + 1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refitted = forecaster.clone().fit(y, fh=steps)
    except Exception as exc:
        raise InvalidInput(
            f"refitting the forecaster on {schema.freq} periods failed ({type(exc).__name__}: {exc}); "
            f"fit it on y.to_period('{schema.freq}')"[:1000]
        ) from None
    coverage = [0.9] if forecaster.get_tag("capability:pred_int", False) else []
    expected = run_forecast(private_copy(forecaster), schema, steps, coverage)
    got = run_forecast(private_copy(refitted), schema, steps, coverage)
    same = expected.columns.equals(got.columns) and all(
        expected[c].equals(got[c]) if c in (*schema.keys, schema.time) else np.allclose(expected[c], got[c], rtol=1e-7)
        for c in expected.columns
    )
    if not same:
        raise InvalidInput(
            f"refitted on {schema.freq} periods the forecaster forecasts other numbers than fitted on timestamps; "
            f"fit it on y.to_period('{schema.freq}') and publish that"
        )
    return refitted


def _agree(from_spec: Any, given: Any, flag: str) -> None:
    if given is not None and given != from_spec:
        raise InvalidInput(f"{flag} {given} disagrees with the model's spec, which names {from_spec}")


def _predicted_names(forecaster: Any) -> list[str] | None:
    """The target names of the forecaster's predictions (sktime names them after the columns
    it was fitted on); None when they have none or it cannot predict without more input."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            point = private_copy(forecaster).predict(fh=[1])
    except Exception:  # e.g. it needs exogenous data: the data's own names then
        return None
    if isinstance(point, pd.Series):
        return None if point.name is None else [str(point.name)]
    return [str(c) for c in point.columns]
