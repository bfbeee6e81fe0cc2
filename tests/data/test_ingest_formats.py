"""Every supported input format ingests the same tiny catalogue into the same canonical tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from components.config import Params
from components.ingest import ingest, load_interim
from components.ingest.formats import _GROUPLENS_GENRES
from components.tables import DERIVED_SOURCE, id_map_path
from components.validate import validate

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"


def _tiny() -> dict[str, pd.DataFrame]:
    """The tiny RecBole fixture as plain string frames (header names without `:type`)."""
    out = {}
    for suffix in ("inter", "item", "user"):
        frame = pd.read_csv(TINY / f"tiny.{suffix}", sep="\t", dtype=str, keep_default_na=False)
        frame.columns = [c.split(":")[0] for c in frame.columns]
        out[suffix] = frame
    return out


TINY_FRAMES = _tiny()
N_INTER, N_ITEMS, N_USERS = (len(TINY_FRAMES[s]) for s in ("inter", "item", "user"))


def _ingest_twice(params_factory: Callable[..., Params], overrides: dict[str, object], **kw: object
                  ) -> tuple[Params, dict[str, pd.DataFrame]]:
    """Ingest into two interim folders; id maps must be identical, contiguous and cover the ids."""
    maps = []
    for run in ("a", "b"):
        params = params_factory({**overrides, "paths.interim_dir": f"data/interim_{run}"}, **kw)
        ingest(params)
        folder = params.resolve(params.paths.interim_dir)
        maps.append({e: pd.read_parquet(id_map_path(folder, e)) for e in ("users", "items")})
    frames = load_interim(params.resolve(params.paths.interim_dir))
    for entity, key in (("users", "user_id"), ("items", "item_id")):
        first, second = maps[0][entity], maps[1][entity]
        assert first.equals(second)
        assert first["idx"].tolist() == list(range(len(first)))
        assert set(first["raw_id"]) == set(frames[entity][key])
    return params, frames


def _check_interactions(frames: dict[str, pd.DataFrame], source: str, first_line: int) -> None:
    inter = frames["interactions"]
    assert len(inter) == N_INTER and inter["parse_error"].isna().all()
    assert inter["source_file"].unique().tolist() == [source]
    assert inter["source_row"].tolist() == list(range(first_line, first_line + N_INTER))
    assert inter["user_id"].tolist() == TINY_FRAMES["inter"]["user_id"].tolist()
    assert inter["item_id"].tolist() == TINY_FRAMES["inter"]["item_id"].tolist()
    assert inter["timestamp"].tolist() == [int(t) for t in TINY_FRAMES["inter"]["timestamp"]]


def test_recbole_atomic(make_params: Callable[..., Params]) -> None:
    params, frames = _ingest_twice(make_params, {})
    _check_interactions(frames, "tiny.inter", 2)
    assert frames["interactions"]["rating"].tolist() == [float(r) for r in TINY_FRAMES["inter"]["rating"]]
    items = frames["items"].set_index("item_id")
    assert len(items) == N_ITEMS and items.loc["1", "title"] == "City Storm Game"
    assert items.loc["1", "year"] == 1996
    assert list(items.loc["1", "categories"]) == ["Children's", "Action", "Animation"]
    users = frames["users"].set_index("user_id")
    assert len(users) == N_USERS
    assert json.loads(users.loc["1", "attributes"]) == {"age": "21", "gender": "F", "occupation": "artist",
                                                        "zip_code": "84318"}


def _write_grouplens(folder: Path) -> None:
    """The official ml-100k layout built from the tiny fixture; item 1 becomes 'Amélie (2001)'."""
    folder.mkdir(parents=True)
    inter = TINY_FRAMES["inter"]
    (folder / "u.data").write_text("".join(f"{r.user_id}\t{r.item_id}\t{r.rating}\t{r.timestamp}\n"
                                           for r in inter.itertuples()), encoding="utf-8")
    lines = []
    for r in TINY_FRAMES["item"].itertuples():
        title, year = ("Amélie", "2001") if r.item_id == "1" else (r.movie_title, r.release_year)
        flags = "|".join("1" if g in r._4.split() else "0" for g in _GROUPLENS_GENRES)
        lines.append(f"{r.item_id}|{title} ({year})|01-Jan-{year}||http://imdb.example/{r.item_id}|{flags}\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (folder / "u.user").write_text("".join(f"{r.user_id}|{r.age}|{r.gender}|{r.occupation}|{r.zip_code}\n"
                                           for r in TINY_FRAMES["user"].itertuples()), encoding="utf-8")
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(_GROUPLENS_GENRES)) + "\n",
                                    encoding="latin-1")


def test_grouplens_ml100k_layout(make_params: Callable[..., Params], tmp_path: Path) -> None:
    _write_grouplens(tmp_path / "gl")
    assert b"Am\xe9lie (2001)" in (tmp_path / "gl" / "u.item").read_bytes()  # a latin-1 byte
    params, frames = _ingest_twice(make_params, {"dataset.format": "grouplens", "dataset.path": "gl"},
                                   dataset_dir=None)
    _check_interactions(frames, "u.data", 1)
    items = frames["items"].set_index("item_id")
    assert len(items) == N_ITEMS and items["parse_error"].isna().all()
    assert (items.loc["1", "title"], items.loc["1", "year"]) == ("Amélie", 2001)
    assert (items.loc["2", "title"], items.loc["2", "year"]) == ("Dream", 1985)
    order = {g: i for i, g in enumerate(_GROUPLENS_GENRES)}
    for r in TINY_FRAMES["item"].itertuples():
        assert list(items.loc[r.item_id, "categories"]) == sorted(r._4.split(), key=order.__getitem__)
    assert json.loads(items.loc["2", "text_fields"]) == {"imdb_url": "http://imdb.example/2",
                                                         "release_date": "01-Jan-1985"}
    users = frames["users"].set_index("user_id")
    assert len(users) == N_USERS and json.loads(users.loc["2", "attributes"])["occupation"] == "writer"
    report = validate(params)
    assert {t: r.kept for t, r in report.tables.items()} == {"interactions": N_INTER, "items": N_ITEMS,
                                                             "users": N_USERS}
    # same raw ids as the RecBole copy → same id maps
    recbole = make_params({"paths.interim_dir": "data/interim_recbole"})
    ingest(recbole)
    for entity in ("users", "items"):
        assert pd.read_parquet(id_map_path(recbole.resolve("data/interim_recbole"), entity)).equals(
            pd.read_parquet(id_map_path(params.resolve(params.paths.interim_dir), entity)))


def _iso(ts: str) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


GENERIC_COLUMNS = {"user_id": "customer", "item_id": "product", "timestamp": "when", "rating": "stars",
                   "label": None, "event": None}


def _write_generic_csv(folder: Path, with_entities: bool) -> dict[str, object]:
    folder.mkdir(parents=True)
    inter = TINY_FRAMES["inter"]
    pd.DataFrame({"when": [_iso(t) for t in inter["timestamp"]], "customer": inter["user_id"],
                  "product": inter["item_id"], "stars": inter["rating"], "channel": "web"}
                 ).to_csv(folder / "events.csv", index=False)
    overrides: dict[str, object] = {
        "dataset.format": "generic", "dataset.path": folder.name,
        "dataset.generic.interactions.path": "events.csv",
        "dataset.generic.interactions.timestamp_format": "iso",
        "dataset.generic.interactions.columns": GENERIC_COLUMNS,
    }
    if with_entities:
        item = TINY_FRAMES["item"]
        names = [f"{t}, the sequel" if i == "3" else t for i, t in zip(item["item_id"], item["movie_title"])]
        pd.DataFrame({"product_id": item["item_id"], "name": names, "released": item["release_year"],
                      "genres": [c.replace(" ", ";") for c in item["class"]], "blurb": "a film"}
                     ).to_csv(folder / "products.csv", index=False)
        user = TINY_FRAMES["user"]
        pd.DataFrame({"cid": user["user_id"], "age": user["age"], "gender": user["gender"]}
                     ).to_csv(folder / "customers.csv", index=False)
        overrides.update({
            "dataset.generic.items.path": "products.csv",
            "dataset.generic.items.columns": {"item_id": "product_id", "title": "name", "year": "released",
                                              "categories": "genres"},
            "dataset.generic.items.category_sep": ";",
            "dataset.generic.items.text_columns": ["blurb"],
            "dataset.generic.users.path": "customers.csv",
            "dataset.generic.users.user_id": "cid",
        })
    return overrides


def test_generic_csv_with_entity_files(make_params: Callable[..., Params], tmp_path: Path) -> None:
    overrides = _write_generic_csv(tmp_path / "csv", with_entities=True)
    params, frames = _ingest_twice(make_params, overrides, dataset_dir=None)
    _check_interactions(frames, "events.csv", 2)
    items = frames["items"].set_index("item_id")
    assert len(items) == N_ITEMS and items.loc["3", "title"] == "King Lost, the sequel"
    assert items.loc["3", "year"] == 1989 and list(items.loc["3", "categories"]) == ["Comedy", "Drama", "Crime"]
    assert json.loads(items.loc["3", "text_fields"]) == {"blurb": "a film"}
    users = frames["users"].set_index("user_id")
    assert len(users) == N_USERS and json.loads(users.loc["1", "attributes"]) == {"age": "21", "gender": "F"}


def test_generic_csv_ids_alone(make_params: Callable[..., Params], tmp_path: Path) -> None:
    overrides = _write_generic_csv(tmp_path / "csv", with_entities=False)
    params, frames = _ingest_twice(make_params, overrides, dataset_dir=None)
    _check_interactions(frames, "events.csv", 2)
    for table, key, n in (("items", "item_id", N_ITEMS), ("users", "user_id", N_USERS)):
        frame = frames[table]
        assert len(frame) == n and set(frame[key]) == set(TINY_FRAMES["inter"][key])
        assert (frame["source_file"] == DERIVED_SOURCE).all()
    assert frames["items"]["title"].isna().all()
    report = validate(params)
    assert {t: (r.kept, r.quarantined) for t, r in report.tables.items()} == {
        "interactions": (N_INTER, 0), "items": (N_ITEMS, 0), "users": (N_USERS, 0)}


@pytest.mark.parametrize("with_label", [False, True])
def test_generic_parquet(make_params: Callable[..., Params], tmp_path: Path, with_label: bool) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    inter = TINY_FRAMES["inter"]
    frame = pd.DataFrame({"u": inter["user_id"], "i": inter["item_id"],
                          "ts": inter["timestamp"].astype("int64") * 1000})
    if with_label:
        frame["clicked"] = (inter["rating"].astype(int) >= 4).astype(int)
    frame.to_parquet(folder / "events.parquet", index=False)
    columns = {"user_id": "u", "item_id": "i", "timestamp": "ts", "label": "clicked" if with_label else None}
    params, frames = _ingest_twice(make_params, {
        "dataset.format": "generic", "dataset.path": "pq",
        "dataset.generic.interactions.path": "events.parquet",
        "dataset.generic.interactions.timestamp_format": "unix_ms",
        "dataset.generic.interactions.columns": columns}, dataset_dir=None)
    _check_interactions(frames, "events.parquet", 1)
    got = frames["interactions"]
    assert got["rating"].isna().all()
    if with_label:
        assert got["label"].tolist() == frame["clicked"].tolist()
    else:
        assert got["label"].isna().all()
