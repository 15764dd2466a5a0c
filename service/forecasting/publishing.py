"""Publishing a forecaster fitted outside the service (notebook, script)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import joblib

from service.errors import InvalidInput
from service.registry.store import PublishRequest, Registry
from service.tables import Schema, canonical_table, from_sktime


def read_fitted(path: Path) -> Any:
    """Read a forecaster saved with sktime ``save()`` (zip) or joblib/pickle.
    The file is trusted code, like the registry itself: only publish your own files."""
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file")
    if zipfile.is_zipfile(path):
        from sktime.base import load

        return load(str(path.with_suffix("")) if path.suffix == ".zip" else str(path))
    try:
        return joblib.load(path)
    except Exception as exc:  # joblib raises KeyError, ValueError, UnpicklingError... on junk
        raise InvalidInput(f"{path.name}: not a joblib/pickle file ({type(exc).__name__}: {exc})") from None


def publish_fitted(registry: Registry, name: str, forecaster: Any, horizon: int | None = None) -> int:
    """Publish with the training data the forecaster remembers (sktime ``_y``/``_X``)."""
    if getattr(forecaster, "_is_fitted", False) is not True:
        raise InvalidInput("the file does not hold a fitted sktime forecaster")
    y = getattr(forecaster, "_y", None)
    if y is None:
        raise InvalidInput("the forecaster remembers no training data (set_config(remember_data=True) before fit)")
    long, facts = from_sktime(y, getattr(forecaster, "_X", None))
    spec = registry.read_spec(name)
    schema = Schema(
        **{
            **facts,
            "keys": tuple(facts["keys"]),
            "targets": tuple(facts["targets"]),
            "exogenous": tuple(facts["exogenous"]),
        }
    )
    table = canonical_table(long, schema, what="training data")
    return registry.publish(
        name,
        forecaster,
        PublishRequest(
            training=table,
            schema=schema,
            horizon=horizon or (spec.horizon if spec else 12),
            coverage=spec.coverage if spec else [],
            quantiles=spec.quantiles if spec else [],
            spec=registry.read_spec_raw(name),
        ),
    )
