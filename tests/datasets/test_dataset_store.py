"""DatasetStore on real files: content-hash versions, appends that upsert by key+time,
roles, and bad tables that never touch the stored versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from service.datasets.store import DatasetStore, Roles
from service.errors import InvalidInput, InvalidName, NotFound

SINGLE = Roles(keys=(), time="month", targets=("sales",), freq="M")
PANEL = Roles(keys=("store",), time="month", targets=("sales",), exogenous=("price",), freq="M")


def single_frame(start: str = "2020-01", periods: int = 24, offset: float = 0.0) -> pd.DataFrame:
    months = pd.period_range(start, periods=periods, freq="M")
    return pd.DataFrame(
        {"month": [m.strftime("%Y-%m") for m in months], "sales": np.arange(periods, dtype=float) + 100 + offset}
    )


def panel_frame(stores: tuple[str, ...] = ("a", "b", "c"), periods: int = 12) -> pd.DataFrame:
    months = pd.period_range("2021-01", periods=periods, freq="M")
    rows = []
    for i, store in enumerate(stores):
        for j, month in enumerate(months):
            rows.append({"store": store, "month": month.strftime("%Y-%m-%d"), "sales": 10.0 * i + j, "price": 1.5})
    return pd.DataFrame(rows)


def snapshot(store: DatasetStore, name: str) -> dict[str, bytes]:
    """Every file of a dataset (dataset.json and the version files, not the lock), by relative path."""
    root = store.root / name
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "data")


def test_put_stores_a_version_named_by_its_content_hash(store: DatasetStore) -> None:
    info = store.put("sales", single_frame(), SINGLE)
    version = info["version"]
    assert len(version) == 16 and all(c in "0123456789abcdef" for c in version)
    assert (store.root / "sales" / "versions" / f"{version}.parquet").is_file()
    doc = json.loads((store.root / "sales" / "dataset.json").read_text())
    assert doc["latest"] == version
    assert doc["roles"] == SINGLE.to_dict()
    (entry,) = doc["versions"]
    assert entry["rows"] == 24 and entry["series"] == 1
    assert entry["start"] == "2020-01-01" and entry["end"] == "2021-12-01"
    assert entry["columns"] == ["month", "sales"]

    table, read_version, roles = store.read("sales")
    assert read_version == version and roles == SINGLE
    assert isinstance(table["month"].dtype, pd.PeriodDtype)
    assert table["sales"].tolist() == single_frame()["sales"].tolist()
    assert store.names() == ["sales"]


def test_same_content_same_version_and_different_content_a_new_one(store: DatasetStore) -> None:
    first = store.put("sales", single_frame(), SINGLE)["version"]
    # the same observations in another row order and with an extra column: the same canonical table
    shuffled = single_frame().sample(frac=1.0, random_state=3).assign(comment="x")
    assert store.put("sales", shuffled, SINGLE)["version"] == first
    assert len(store.describe("sales")["versions"]) == 1

    changed = single_frame()
    changed.loc[5, "sales"] += 0.5
    second = store.put("sales", changed, SINGLE)["version"]
    assert second != first
    doc = store.describe("sales")
    assert [v["version"] for v in doc["versions"]] == [first, second]
    assert doc["latest"] == second
    # both versions stay readable
    assert store.read("sales", first)[0]["sales"].iloc[5] == 105.0
    assert store.read("sales", second)[0]["sales"].iloc[5] == 105.5
    # the same content in another dataset has the same hash
    assert store.put("copy", single_frame(), SINGLE)["version"] == first


def test_append_upserts_by_key_and_time_into_a_new_version(store: DatasetStore) -> None:
    base = store.put("panel", panel_frame(), PANEL)["version"]
    new = pd.DataFrame(
        {
            "store": ["a", "b", "a"],
            "month": ["2021-12-01", "2022-01-01", "2022-01-01"],  # a/2021-12 replaces, the others extend
            "sales": [999.0, 50.0, 51.0],
            "price": [2.0, 2.0, 2.0],
        }
    )
    # series c does not get 2022-01: appends may leave series of different lengths
    info = store.append("panel", new)
    assert info["version"] != base
    table, version, _ = store.read("panel")
    assert version == info["version"]
    assert len(table) == 36 + 2
    row = table[(table["store"] == "a") & (table["month"] == pd.Period("2021-12", "M"))]
    assert row["sales"].tolist() == [999.0] and row["price"].tolist() == [2.0]
    assert table.groupby("store")["month"].max().astype(str).to_dict() == {
        "a": "2022-01",
        "b": "2022-01",
        "c": "2021-12",
    }
    entry = store.describe("panel")["versions"][-1]
    assert entry["series"] == 3 and entry["rows"] == 38 and entry["end"] == "2022-01-01"
    # the old version is untouched
    assert len(store.read("panel", base)[0]) == 36


def test_a_filled_append_keeps_stored_values_its_missing_cells_overlap(store: DatasetStore) -> None:
    """missing=ffill: a new row with a missing cell at a stored key+time leaves the stored value
    (it is not replaced and then filled from the month before); new times are filled."""
    store.put("panel", panel_frame(), PANEL)
    before, _, _ = store.read("panel")
    stored = before[(before["store"] == "a") & (before["month"] == pd.Period("2021-12", "M"))]
    new = pd.DataFrame(
        {
            "store": ["a", "a", "a"],
            "month": ["2021-12-01", "2022-01-01", "2022-02-01"],
            "sales": [np.nan, 60.0, np.nan],
            "price": [3.0, np.nan, 2.5],
        }
    )
    store.append("panel", new, missing="ffill")
    table, _, _ = store.read("panel")
    a = table[table["store"] == "a"].set_index("month")
    december = pd.Period("2021-12", "M")
    assert a.loc[december, "sales"] == stored["sales"].item()  # kept, not filled from November
    assert a.loc[december, "price"] == 3.0  # a given value replaces the stored one
    assert a.loc[pd.Period("2022-01", "M"), "price"] == 3.0  # a new time: filled from December
    assert a.loc[pd.Period("2022-02", "M"), "sales"] == 60.0


def test_append_that_changes_nothing_keeps_the_version(store: DatasetStore) -> None:
    base = store.put("sales", single_frame(), SINGLE)["version"]
    again = store.append("sales", single_frame().iloc[-3:])
    assert again["version"] == base
    assert len(store.describe("sales")["versions"]) == 1


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (single_frame().pipe(lambda f: pd.concat([f, f.iloc[[3]]])), "duplicated"),
        (single_frame().assign(month=lambda f: f["month"].where(f.index != 4, "soon")), "row 4"),
        (single_frame().drop(index=7), "not regular"),
        (single_frame().assign(sales=lambda f: f["sales"].astype(object).where(f.index != 2, "n/a")), "numeric"),
        (single_frame().assign(sales=lambda f: f["sales"].where(f.index != 6, np.nan)), "row 6"),
        (single_frame().drop(columns=["sales"]), "missing column"),
        (single_frame().iloc[:0], "no rows"),
    ],
    ids=["duplicate", "bad-time", "gap", "non-numeric", "nan", "missing-column", "empty"],
)
def test_a_bad_table_is_refused_and_the_stored_version_stays(
    store: DatasetStore, frame: pd.DataFrame, message: str
) -> None:
    store.put("sales", single_frame(), SINGLE)
    before = snapshot(store, "sales")
    with pytest.raises(InvalidInput, match=message):
        store.put("sales", frame, SINGLE)
    assert snapshot(store, "sales") == before
    with pytest.raises(InvalidInput, match=message):
        store.append("sales", frame if message != "not regular" else single_frame(start="2022-02", periods=2))
    assert snapshot(store, "sales") == before


def test_errors_name_rows_and_columns(store: DatasetStore) -> None:
    frame = pd.concat([single_frame(), single_frame().iloc[[3]]], ignore_index=True)
    with pytest.raises(InvalidInput) as caught:
        store.put("sales", frame, SINGLE)
    assert caught.value.extra["columns"] == ["month"]
    assert caught.value.extra["rows"] == [3, 24]
    gap = single_frame().drop(index=7)
    with pytest.raises(InvalidInput) as caught:
        store.put("sales", gap, SINGLE)
    assert caught.value.extra["column"] == "month" and caught.value.extra["row"] == 7
    assert not (store.root / "sales" / "dataset.json").exists()
    assert store.names() == []


def test_unknown_dataset_and_version(store: DatasetStore) -> None:
    with pytest.raises(NotFound):
        store.describe("nope")
    with pytest.raises(NotFound):
        store.append("nope", single_frame())
    store.put("sales", single_frame(), SINGLE)
    with pytest.raises(NotFound, match="no version"):
        store.read("sales", "0123456789abcdef")
    with pytest.raises(InvalidName):
        store.put("../escape", single_frame(), SINGLE)


def test_roles_from_dict_validates() -> None:
    with pytest.raises(InvalidInput, match="time"):
        Roles.from_dict({"targets": ["y"]})
    with pytest.raises(InvalidInput, match="targets"):
        Roles.from_dict({"time": "t"})
    with pytest.raises(InvalidInput, match="frequency"):
        Roles.from_dict({"time": "t", "targets": ["y"], "freq": "every-now-and-then"})
    roles = Roles.from_dict({"time": "t", "targets": ["y"], "keys": ["k"], "freq": "Q"})
    assert roles == Roles(keys=("k",), time="t", targets=("y",), freq="Q-DEC")
    assert Roles.from_dict(roles.to_dict()) == roles


def test_integer_time_index(store: DatasetStore) -> None:
    roles = Roles(keys=(), time="t", targets=("y",))
    info = store.put("ints", pd.DataFrame({"t": [3, 1, 2, 4], "y": [1.0, 2.0, 3.0, 4.0]}), roles)
    assert info["start"] == 1 and info["end"] == 4
    with pytest.raises(InvalidInput, match="not regular"):
        store.put("ints", pd.DataFrame({"t": [1, 2, 4], "y": [1.0, 2.0, 3.0]}), roles)


def test_date_cells_parse_as_times_and_infer_their_freq(store: DatasetStore) -> None:
    from service.tables import resolve_freq

    frame = single_frame()
    dates = frame.assign(month=pd.to_datetime(frame["month"]).dt.date)  # datetime.date objects
    assert resolve_freq(dates["month"], None, "month").freq == "M"
    stamps = frame.assign(month=list(pd.to_datetime(frame["month"]).dt.to_pydatetime()))  # datetime.datetime
    assert resolve_freq(stamps["month"], None, "month").freq == "M"
    assert store.put("dates", dates, SINGLE)["version"] == store.put("strings", frame, SINGLE)["version"]
    assert store.put("stamps", stamps, SINGLE)["version"] == store.read("strings")[1]


def test_a_read_racing_a_delete_is_not_found(store: DatasetStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put("sales", single_frame(), SINGLE)
    describe = store.describe

    def describe_then_delete(name: str) -> dict[str, Any]:
        doc = describe(name)
        DatasetStore(store.root.parent).delete(name)  # between the describe and the Parquet read
        return doc

    monkeypatch.setattr(store, "describe", describe_then_delete)
    with pytest.raises(NotFound):
        store.read("sales")


def test_delete_keeps_the_lock_file_and_the_name_is_free_again(store: DatasetStore) -> None:
    store.put("sales", single_frame(), SINGLE)
    store.put("other", single_frame(), SINGLE)
    store.delete("sales")
    assert (store.root / "sales" / ".lock").is_file()  # never unlinked: one lock inode per name for good
    assert not (store.root / "sales" / "dataset.json").exists() and not (store.root / "sales" / "versions").exists()
    assert store.names() == ["other"]
    with pytest.raises(NotFound):
        store.describe("sales")
    with pytest.raises(NotFound):
        store.delete("sales")
    again = store.put("sales", single_frame(offset=1.0), SINGLE)
    assert [v["version"] for v in store.describe("sales")["versions"]] == [again["version"]]
    assert store.names() == ["other", "sales"]


def test_roles_refuse_a_multiple_frequency() -> None:
    for freq in ("2M", "3Q", "2D"):
        with pytest.raises(InvalidInput, match="single steps") as caught:
            Roles.from_dict({"time": "t", "targets": ["y"], "freq": freq})
        assert caught.value.extra["field"] == "freq"
