"""MovieLens conversion on hand-written inputs (never real MovieLens data, except the opt-in
network test that fetches ML-100K into a temporary cache)."""
import dataclasses
import hashlib
import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest

from pinrank.components.data import events as E
from pinrank.components.data import movielens as M
from pinrank.components.data import sources
from pinrank.pipeline.artifacts import sha256_file
from pinrank.pipeline.config import DataConfig

MOVIES_CSV = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"Heat, The Movie (1995)",Action|Crime|Thriller
5,Nosferatu (1922),Horror
7,Untitled Project,(no genres listed)
10,Blade Runner 2049 (2017),Sci-Fi|Thriller
"""
RATINGS_CSV = """userId,movieId,rating,timestamp
1,1,5.0,964982703
1,2,4.5,964981247
1,5,4.0,964982224
2,1,3.5,964983815
2,10,3.0,964982931
2,2,2.5,964982400
3,5,2.0,964980868
3,1,0.5,964982176
"""
EXPECTED = [  # (action, duration, positive) per ratings row
    ("repin", 20.0, True), ("repin", 20.0, True), ("closeup", 30.0, True),
    ("closeup", 30.0, True), ("click", 5.0, False), ("click", 5.0, False),
    ("hide", 0.0, False), ("hide", 0.0, False),
]


def write_inputs(d, ratings=RATINGS_CSV, movies=MOVIES_CSV):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "ratings.csv"), "w") as f:
        f.write(ratings)
    with open(os.path.join(d, "movies.csv"), "w") as f:
        f.write(movies)
    return os.path.join(d, "ratings.csv"), os.path.join(d, "movies.csv")


def read_events(d):
    return pd.concat([E.read_event_shard(p) for p in E.event_shards(d)], ignore_index=True)


@pytest.mark.parametrize("rating,action,duration", [
    (5, "repin", 20.0), (4.5, "repin", 20.0), (4, "closeup", 30.0), (3.5, "closeup", 30.0),
    (3, "click", 5.0), (2.5, "click", 5.0), (2, "hide", 0.0), (1, "hide", 0.0),
    (0.5, "hide", 0.0), (0, "hide", 0.0),
])
def test_rating_mapping(rating, action, duration):
    actions, durations = M.ratings_to_actions([rating])
    assert actions.tolist() == [action] and durations.tolist() == [duration]


def test_only_four_and_five_stars_are_positive():
    actions, durations = M.ratings_to_actions([1, 2, 3, 4, 5])
    assert E.is_positive(actions, durations).tolist() == [False, False, False, True, True]


def test_convert_csv(tmp_path):
    ratings, movies = write_inputs(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    summary = M.convert_movielens_csv(ratings, movies, out)
    ev = read_events(out)
    assert ev["user_id"].tolist() == ["1", "1", "1", "2", "2", "2", "3", "3"]
    assert ev["item_id"].tolist() == [1, 2, 5, 1, 10, 2, 5, 1]
    assert list(zip(ev["action"], ev["duration"])) == [(a, d) for a, d, _ in EXPECTED]
    assert ev["timestamp"].tolist()[:2] == [964982703, 964981247]
    assert (ev["surface"] == "homefeed").all()
    c = summary["counts"]
    assert (c["users"], c["items"], c["events"], c["positives"]) == (3, 5, 8, 4)
    assert c["actions"] == {"repin": 2, "closeup": 2, "click": 2, "hide": 2}
    assert E.read_dataset_manifest(out)["counts"] == c
    assert E.read_dataset_manifest(out)["fallbacks"] == {  # movie 7: no year, no genres
        "release_year_missing": {"count": 1, "of": 5}, "genres_missing": {"count": 1, "of": 5}}
    assert E.read_dataset_manifest(out)["inputs"]["ratings_csv"]["sha256"] == \
        hashlib.sha256(open(ratings, "rb").read()).hexdigest()
    names = E.read_interest_names(out)
    assert names == sorted(["Adventure", "Animation", "Children", "Comedy", "Fantasy", "Action",
                            "Crime", "Thriller", "Horror", "Sci-Fi"])
    items = E.read_items(out).set_index("item_id")
    assert items.index.tolist() == [1, 2, 5, 7, 10]  # unrated movie 7 is still an item
    assert sorted(E.read_titles(out)) == [1, 2, 5, 7, 10]
    assert [names[i] for i in items.loc[2, "interests"]] == ["Action", "Crime", "Thriller"]
    assert items.loc[7, "interests"].tolist() == []
    g = len(names)
    emb = np.stack(items["embedding"].to_numpy())
    assert emb.shape == (5, g + len(M.YEAR_EDGES) + 1)
    np.testing.assert_allclose(np.linalg.norm(emb[[0, 1, 2, 4], :g], axis=1), 1.0, rtol=1e-6)
    years = emb[:, g:] / M.YEAR_WEIGHT  # one-hot bucket, none for the unknown year
    assert years.sum(axis=1).tolist() == [1, 1, 1, 0, 1]
    # buckets <1960, 1960s-70s, 1980s, 1990-94, 1995-99, 2000s, >=2010
    assert years[0].argmax() == 4 and years[2].argmax() == 0 and years[4].argmax() == 6


def test_chunked_reading_gives_the_same_dataset(tmp_path):
    ratings, movies = write_inputs(str(tmp_path / "in"))
    M.convert_movielens_csv(ratings, movies, str(tmp_path / "a"))
    M.convert_movielens_csv(ratings, movies, str(tmp_path / "b"), chunk_rows=3, shard_rows=3)
    assert len(E.event_shards(str(tmp_path / "b"))) == 3
    pd.testing.assert_frame_equal(read_events(str(tmp_path / "a")),
                                  read_events(str(tmp_path / "b")))


def test_unknown_movies_fail_with_file_wide_counts(tmp_path):
    bad = RATINGS_CSV + "4,99,4.0,964982000\n4,77,5.0,964982001\n5,99,1.0,964982002\n"
    ratings, movies = write_inputs(str(tmp_path / "in"), ratings=bad)
    out = str(tmp_path / "out")
    with pytest.raises(E.EventValidationError) as exc:
        M.convert_movielens_csv(ratings, movies, out, chunk_rows=4)  # bad rows span 2 chunks
    msg = str(exc.value)
    assert msg.startswith(f"{ratings}: 3 rows with item id not in the item table "
                          "(first: row 8 99, row 9 77, row 10 99)"), msg
    assert E.read_dataset_manifest(out) is None and not os.path.exists(os.path.join(out, "events"))
    summary = M.convert_movielens_csv(ratings, movies, out, drop_invalid=True, chunk_rows=4)
    assert summary["counts"]["events"] == 8
    assert summary["counts"]["dropped"] == {"unknown_item": 3}
    assert E.read_dataset_manifest(out)["counts"]["dropped"] == {"unknown_item": 3}


def test_invalid_ratings_and_fields_are_reported(tmp_path):
    bad = RATINGS_CSV + "4,1,7,964982000\n4,1,,964982001\n,2,4,964982002\n4,2,4,\n"
    ratings, movies = write_inputs(str(tmp_path / "in"), ratings=bad)
    with pytest.raises(E.EventValidationError) as exc:
        M.convert_movielens_csv(ratings, movies, str(tmp_path / "out"))
    msg = str(exc.value)
    assert "1 row with missing user id (row 10)" in msg
    assert "1 row with missing or non-numeric timestamp (row 11)" in msg
    assert "2 rows with missing or out-of-range rating (need 0-5 stars) (first: row 8 7.0, " \
           "row 9 missing)" in msg
    s = M.convert_movielens_csv(ratings, movies, str(tmp_path / "out"), drop_invalid=True)
    assert s["counts"]["events"] == 8


@pytest.mark.parametrize("movies,match", [
    ("movieId,name,genres\n1,a,Drama\n", r"missing column\(s\) \['title'\]"),
    ("movieId,title,genres\n1,a,Drama\n1,b,Drama\n", r"duplicate movieId\(s\) \[1\]"),
    ("movieId,title,genres\nx,a,Drama\n", "non-integer movieId"),
])
def test_bad_movies_file(tmp_path, movies, match):
    ratings, movies_path = write_inputs(str(tmp_path), movies=movies)
    with pytest.raises(E.DatasetFormatError, match=match) as exc:
        M.convert_movielens_csv(ratings, movies_path, str(tmp_path / "out"))
    assert "movies.csv" in str(exc.value)


def test_bad_ratings_header(tmp_path):
    ratings, movies = write_inputs(str(tmp_path),
                                   ratings="user,movieId,rating,timestamp\n1,1,4,5\n")
    with pytest.raises(E.DatasetFormatError,
                       match=r"ratings.csv: missing column\(s\) \['userId'\]"):
        M.convert_movielens_csv(ratings, movies, str(tmp_path / "out"))


def write_atomic_100k(d):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "ml-100k.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                "196\t242\t3\t881250949\n186\t302\t5\t891717742\n22\t242\t1\t878887116\n")
    with open(os.path.join(d, "ml-100k.item"), "w") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                "242\tKolya\t1996\tComedy\n302\tL.A. \"Confidential\"\t1997\tCrime Film-Noir "
                "Mystery Thriller\n5\tLost\tunkonwn\tunknown\n")
    with open(os.path.join(d, "ml-100k.user"), "w") as f:
        f.write("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                "196\t49\tM\twriter\t55105\n186\t24\tF\texecutive\t00000\n"
                "22\t25\tM\twriter\t40206\n7\t0\tX\tnone\t1\n")


def test_read_atomic_file_types(tmp_path):
    write_atomic_100k(str(tmp_path))
    inter = M.read_atomic_file(str(tmp_path / "ml-100k.inter"))
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert inter["user_id"].tolist() == ["196", "186", "22"]
    assert inter["rating"].dtype == np.float64
    items = M.read_atomic_file(str(tmp_path / "ml-100k.item"))
    assert items["movie_title"].tolist()[1] == 'L.A. "Confidential"'


def test_convert_100k_atomic_files(tmp_path):
    write_atomic_100k(str(tmp_path / "src"))
    out = str(tmp_path / "out")
    s = M.convert_movielens_100k(str(tmp_path / "src"), out)
    ev = read_events(out)
    assert ev["action"].tolist() == ["click", "repin", "hide"]
    assert ev["timestamp"].dtype == np.int64 and ev["timestamp"].tolist()[0] == 881250949
    assert E.read_interest_names(out) == ["Comedy", "Crime", "Film-Noir", "Mystery", "Thriller",
                                          "unknown"]
    assert (s["counts"]["users"], s["counts"]["items"], s["counts"]["positives"]) == (3, 3, 1)
    assert s["inputs"]["wheel"]["sha256"] == M.RECBOLE_WHEEL_SHA256
    assert E.read_titles(out) == {242: "Kolya (1996)", 302: 'L.A. "Confidential" (1997)',
                                  5: "Lost"}
    # Movie 5: release year "unkonwn", genre "unknown" (a genre, but counted as none).
    assert s["fallbacks"] == {"release_year_missing": {"count": 1, "of": 3},
                              "genres_missing": {"count": 1, "of": 3}}
    # ml-100k.user -> users.parquet: coarse groups only (no occupation, no zip code); user 7
    # has an impossible age and gender, so both are unknown.
    users = E.read_users(out)
    assert users.to_dict("list") == {
        "user_id": ["196", "186", "22", "7"], "gender": ["male", "female", "male", "unknown"],
        "age_group": ["45+", "<25", "25-34", "unknown"]}
    assert s["user_attributes"] == {"gender": {"female": 1, "male": 2, "unknown": 1},
                                    "age_group": {"25-34": 1, "45+": 1, "<25": 1, "unknown": 1}}
    assert s["conversion_version"] == M.CONVERSION_VERSION == 3


def test_age_groups_match_a_reference():
    ages = [1, 7, 18, 24, 25, 26, 34, 35, 44, 45, 73, 0, -3, "x", ""]

    def ref(a):
        try:
            a = float(a)
        except ValueError:
            return "unknown"
        if a <= 0:
            return "unknown"
        return "<25" if a < 25 else "25-34" if a < 35 else "35-44" if a < 45 else "45+"

    assert M.age_groups(ages) == [ref(a) for a in ages]


def test_convert_100k_needs_the_user_file(tmp_path):
    write_atomic_100k(str(tmp_path / "src"))
    os.remove(tmp_path / "src" / "ml-100k.user")
    with pytest.raises(E.DatasetFormatError, match=r"ml-100k.user: cannot read RecBole"):
        M.convert_movielens_100k(str(tmp_path / "src"), str(tmp_path / "out"))


def test_csv_sources_have_no_user_table(tmp_path):
    ratings, movies = write_inputs(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    M.convert_movielens_csv(ratings, movies, out)
    assert E.read_users(out) is None


def _fake_wheel(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(M.ML100K_PREFIX + "ml-100k.inter", "user_id:token\n")


def test_fetch_rejects_a_wheel_with_the_wrong_hash(tmp_path, monkeypatch):
    wheel = str(tmp_path / M.RECBOLE_WHEEL)
    _fake_wheel(wheel)
    monkeypatch.setenv(M.WHEEL_ENV, wheel)
    with pytest.raises(M.MovieLensFetchError, match="does not match the pinned"):
        M.fetch_movielens_100k(str(tmp_path / "cache"))
    assert not os.path.exists(tmp_path / "cache" / M.ML100K_DIR)


def test_fetch_reuses_a_verified_cache_without_network(tmp_path, monkeypatch):
    dest = tmp_path / "cache" / M.ML100K_DIR
    write_atomic_100k(str(dest))
    files = {n: sha256_file(str(dest / n)) for n in ("ml-100k.inter", "ml-100k.item")}
    (dest / M.MARKER_FILE).write_text(json.dumps(
        {"wheel": M.RECBOLE_WHEEL, "wheel_sha256": M.RECBOLE_WHEEL_SHA256, "files": files}))

    def no_network(tmp):
        raise AssertionError("network used despite a valid cache")

    monkeypatch.setattr(M, "_obtain_wheel", no_network)
    monkeypatch.setenv(M.CACHE_ENV, str(tmp_path / "cache"))
    assert M.fetch_movielens_100k() == str(dest)
    (dest / "ml-100k.item").write_text("tampered")
    with pytest.raises(AssertionError, match="network used"):
        M.fetch_movielens_100k()


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(M.CACHE_ENV, str(tmp_path / "env"))
    assert M.cache_root(str(tmp_path / "cfg")) == str(tmp_path / "cfg")
    assert M.cache_root("") == str(tmp_path / "env")
    monkeypatch.delenv(M.CACHE_ENV)
    assert M.cache_root("") == os.path.expanduser("~/.cache/pinrank")


def test_prepare_path_source(tmp_path):
    write_inputs(str(tmp_path / "in"))
    cfg = DataConfig(source="path", path=str(tmp_path / "in"))
    out = sources.prepare_dataset(cfg, str(tmp_path / "out"))
    assert E.read_dataset_manifest(out)["counts"]["events"] == 8
    fp = E.read_dataset_manifest(out)["fingerprint"]
    with open(tmp_path / "in" / "ratings.csv", "a") as f:
        f.write("3,10,5,964982999\n")  # changed input -> new fingerprint -> rebuilt
    sources.prepare_dataset(cfg, out)
    assert E.read_dataset_manifest(out)["counts"]["events"] == 9
    assert E.read_dataset_manifest(out)["fingerprint"] != fp
    with pytest.raises(FileNotFoundError, match="ratings.csv not found"):
        sources.prepare_dataset(dataclasses.replace(cfg, path=str(tmp_path)), out)
    with pytest.raises(ValueError, match="needs data.path"):
        sources.prepare_dataset(dataclasses.replace(cfg, path=""), out)


NO_YEARS_CSV = """movieId,title,genres
1,Toy Story,Animation|Comedy
2,Heat,Action
5,Nosferatu,Horror
7,Untitled Project,(no genres listed)
10,Blade Runner 2049,Sci-Fi
"""


def test_fallback_share_above_the_limit_stops_the_run(tmp_path):
    ratings, movies = write_inputs(str(tmp_path / "in"), movies=NO_YEARS_CSV)
    cfg = DataConfig(source="path", path=str(tmp_path / "in"))
    out = str(tmp_path / "out")
    with pytest.raises(E.DatasetFormatError) as exc:
        sources.prepare_dataset(cfg, out)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{movies}: 5 of 5 items have no release year "
                                               "(100% > data.max_fallback_share=0.5)"), msg
    assert 'add a year column or "(YYYY)" to titles' in msg
    assert "--set data.allow_fallbacks=true" in msg and "data.max_fallback_share" in msg
    assert "genres" not in msg  # 1 of 5 is within the limit
    # Allowed: passes, reusing the converted data set, and still counts.
    allowed = dataclasses.replace(cfg, allow_fallbacks=True)
    fp = E.read_dataset_manifest(out)["fingerprint"]
    assert sources.prepare_dataset(allowed, out) == out
    m = E.read_dataset_manifest(out)
    assert m["fallbacks"]["release_year_missing"] == {"count": 5, "of": 5}
    assert m["fallbacks"]["genres_missing"] == {"count": 1, "of": 5}
    assert m["fingerprint"] == fp and m["counts"]["events"] == 8
    sources.prepare_dataset(dataclasses.replace(cfg, max_fallback_share=1.0), out)
    with pytest.raises(E.DatasetFormatError, match="5 of 5 items have no release year"):
        sources.prepare_dataset(cfg, out)  # a reused data set is checked as well


def test_year_column_wins_over_the_title(tmp_path):
    movies = ("movieId,title,genres,year\n"
              "1,Toy Story (1995),Comedy,1970\n"  # column wins
              "2,Heat (1995),Action,\n"  # empty: title
              "5,Nosferatu,Horror, \n"  # neither: missing
              "7,Untitled,Drama,2015\n"
              "10,Blade Runner,Sci-Fi,1982\n")
    ratings, movies_path = write_inputs(str(tmp_path / "in"), movies=movies)
    out = str(tmp_path / "out")
    s = M.convert_movielens_csv(ratings, movies_path, out)
    assert s["fallbacks"]["release_year_missing"] == {"count": 1, "of": 5}
    names = E.read_interest_names(out)
    items = E.read_items(out).set_index("item_id")
    years = np.stack(items["embedding"].to_numpy())[:, len(names):] / M.YEAR_WEIGHT
    assert years.sum(axis=1).tolist() == [1, 1, 0, 1, 1]
    # buckets <1960, 1960s-70s, 1980s, 1990-94, 1995-99, 2000s, >=2010
    assert years[[0, 1, 3, 4]].argmax(axis=1).tolist() == [1, 4, 6, 2]
    # The year column changes the conversion, so it changes the fingerprint.
    cfg = DataConfig(source="path", path=str(tmp_path / "in"))
    with_col = sources.dataset_fingerprint(cfg)
    write_inputs(str(tmp_path / "in"), movies=movies.replace(",year\n", ",yr\n", 1))
    assert sources.dataset_fingerprint(cfg) != with_col


@pytest.mark.parametrize("value", ["circa 1990", "1995.5", "inf"])
def test_bad_year_value_is_a_data_error(tmp_path, value):
    movies = f"movieId,title,genres,year\n1,Toy Story,Comedy,1995\n2,Heat,Action,{value}\n"
    ratings, movies_path = write_inputs(str(tmp_path), movies=movies,
                                        ratings="userId,movieId,rating,timestamp\n1,1,4,5\n")
    with pytest.raises(E.DatasetFormatError) as exc:
        M.convert_movielens_csv(ratings, movies_path, str(tmp_path / "out"))
    assert str(exc.value) == (f"{movies_path}: column 'year': 1 movie(s) with a non-numeric year "
                              f"(row 1 {value!r}); leave the cell empty if unknown")


def test_manifest_without_fallbacks_is_rebuilt(tmp_path):
    write_inputs(str(tmp_path / "in"))
    cfg = DataConfig(source="path", path=str(tmp_path / "in"))
    out = sources.prepare_dataset(cfg, str(tmp_path / "out"))
    m = E.read_dataset_manifest(out)
    del m["fallbacks"]  # as written before fallbacks were counted
    E.write_dataset_manifest(out, m)
    sources.prepare_dataset(cfg, out)
    m2 = E.read_dataset_manifest(out)
    assert m2["fallbacks"]["release_year_missing"] == {"count": 1, "of": 5}
    assert m2["fingerprint"] == m["fingerprint"]


def test_cli_reports_fallbacks(tmp_path, capsys):
    from pinrank.pipeline import cli
    write_inputs(str(tmp_path / "in"), movies=NO_YEARS_CSV)
    args = ["data", "--source", "path", "--data-path", str(tmp_path / "in"),
            "--out", str(tmp_path / "data")]
    assert cli.main(args) == 1  # bad data: exit 1 (a bad config or usage exits 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "5 of 5 items have no release year" in err[-1]
    assert cli.main(args + ["--set", "data.allow_fallbacks=true"]) == 0
    err = capsys.readouterr().err
    assert "fallbacks: release_year_missing 5 of 5 items" in err
    assert "fallbacks: genres_missing 1 of 5 items" in err


def test_fallback_config_fields():
    from pinrank.pipeline.config import apply_overrides, preset
    cfg = apply_overrides(preset("tiny"), ["data.allow_fallbacks=true",
                                           "data.max_fallback_share=0.9"])
    assert cfg.data.allow_fallbacks is True and cfg.data.max_fallback_share == 0.9
    with pytest.raises(ValueError, match="max_fallback_share"):
        DataConfig(max_fallback_share=1.5)


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("PINRANK_NETWORK_TESTS") != "1",
                    reason="downloads recbole==1.2.1 from PyPI; set PINRANK_NETWORK_TESTS=1")
def test_movielens_100k_download_and_convert(tmp_path, monkeypatch):
    cfg = DataConfig(source="movielens", cache_dir=str(tmp_path / "cache"))
    out = sources.prepare_dataset(cfg, str(tmp_path / "ml"))
    c = E.read_dataset_manifest(out)["counts"]
    assert (c["users"], c["items"], c["interests"], c["events"]) == (943, 1682, 19, 100_000)
    assert c["positives"] == 55_375  # 4 and 5 stars
    assert c["actions"] == {"repin": 21_201, "closeup": 34_174, "click": 27_145, "hide": 17_480}
    assert E.read_dataset_manifest(out)["user_attributes"] == {
        "gender": {"female": 273, "male": 670},
        "age_group": {"25-34": 310, "35-44": 194, "45+": 205, "<25": 234}}
    # Items 267 and 1412 have no year; 267 and 1373 only the genre "unknown": far below the limit.
    assert E.read_dataset_manifest(out)["fallbacks"] == {
        "release_year_missing": {"count": 2, "of": 1682},
        "genres_missing": {"count": 2, "of": 1682}}
    monkeypatch.setattr(M, "_obtain_wheel", lambda tmp: pytest.fail("second fetch downloaded"))
    assert M.fetch_movielens_100k(cfg.cache_dir) == os.path.join(cfg.cache_dir, M.ML100K_DIR)
