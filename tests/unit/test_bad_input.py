"""The bad-input matrix of docs/bad-input.md, one test per row: the CLI answers a bad input with
one `error: ...` line naming what and where, no traceback, exit 2 for usage/config errors and 1
for bad data; with examples.drop_invalid_events=true a bad row is dropped and counted instead."""
import os
import re

import pytest

from pinrank.pipeline import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RATINGS = ("userId,movieId,rating,timestamp\n1,10,4.0,880000000\n2,10,5.0,880000100\n"
           "2,20,3.0,880000200\n")
MOVIES = "movieId,title,genres\n10,Toy Story (1995),Animation|Comedy\n20,Heat (1995),Action\n"

# id -> (argv, expected fragment of the error line, exit code); {d} is a data dir, {o} an output dir
USAGE = {
    "run-unknown-preset": (["run", "--preset", "nope"], "invalid choice: 'nope'", 2),
    "run-unknown-field": (["run", "--set", "model.nope=1"], "unknown field 'nope' in model", 2),
    "run-bad-int": (["run", "--set", "train.batch_size=abc"],
                    "train.batch_size must be an integer, got 'abc'", 2),
    "run-bad-bool": (["run", "--set", "examples.drop_invalid_events=ture"],
                     "examples.drop_invalid_events must be a bool", 2),
    "run-section-as-value": (["config", "show", "--set", "ranker.realtime=x"],
                             "ranker.realtime is a section (RealtimeConfig)", 2),
    "run-path-without-dir": (["run", "--source", "path"], "needs data.path (--data-path DIR)", 2),
    "run-missing-ratings": (["run", "--source", "path", "--data-path", "{d}/nowhere"],
                            "ratings.csv not found", 1),
    "data-bad-synthetic-size": (["data", "--source", "synthetic", "--set", "data.num_users=0",
                                 "--out", "{o}"], "data.num_users must be >= 1, got 0", 2),
    "data-bad-synthetic-share": (["data", "--source", "synthetic", "--set",
                                  "data.evergreen_fraction=2", "--out", "{o}"],
                                 "data.evergreen_fraction must be in [0, 1]", 2),
    "compile-missing-args": (["compile"], "required: --pipeline-root", 2),
    "serve-missing-model": (["serve"], "one of the arguments --model_base_path", 2),
    "query-missing-command": (["query"], "pinrank query", 2),
    "embed-users-missing-args": (["embed-users"], "required: --model, --data, --out, --as-of", 2),
    "embed-users-bad-as-of": (["embed-users", "--model", "m", "--out", "{o}", "--as-of", "2020-01-01"],
                              "argument --as-of: invalid int value", 2),
    "recommend-missing-args": (["recommend"], "required: --user, --data", 2),
    "ingest-missing-source": (["ingest", "--store", "sqlite:///{o}.db"],
                              "one of the arguments --file --redis-stream is required", 2),
    "ingest-stream-without-name": (["ingest", "--store", "sqlite:///{o}.db", "--redis-stream",
                                    "redis://127.0.0.1:1/0"],
                                   "--redis-stream needs --stream NAME", 2),
    "ingest-bad-store-url": (["ingest", "--store", "mysql://x", "--file", "{d}/e.jsonl"],
                             "action store URL 'mysql://x': expected sqlite:///PATH or redis://", 2),
    "ingest-store-down": (["ingest", "--store", "redis://127.0.0.1:1/0", "--file", "{d}/e.jsonl"],
                          "action store redis://127.0.0.1:1/0 unavailable: ", 1),
    "ingest-missing-file": (["ingest", "--store", "sqlite:///{o}.db", "--file",
                             "{d}/nowhere.jsonl"], "nowhere.jsonl: no such event file", 1),
}

# id -> (ratings.csv text, movies.csv bytes, expected fragment, dropped problem or None)
DATA = {
    "csv-missing-column": (RATINGS.replace("rating,", "score,"), MOVIES,
                           "ratings.csv: missing column(s) ['rating']", None),
    "csv-text-rating": (RATINGS.replace("5.0", "five"), MOVIES,
                        "ratings.csv: 1 row with missing or out-of-range rating (need 0-5 stars) "
                        "(row 1: 'five')", "invalid_rating"),
    "csv-rating-out-of-range": (RATINGS.replace("5.0", "9.0"), MOVIES,
                                "out-of-range rating (need 0-5 stars) (row 1: 9.0)",
                                "invalid_rating"),
    "csv-negative-timestamp": (RATINGS.replace("880000100", "-5"), MOVIES,
                               "1 row with negative timestamp (row 1: -5)", "negative_timestamp"),
    "csv-text-timestamp": (RATINGS.replace("880000100", "yesterday"), MOVIES,
                           "1 row with missing or non-numeric timestamp (row 1)",
                           "missing_timestamp"),
    "csv-overflowing-timestamp": (RATINGS.replace("880000100", "99999999999999999999"), MOVIES,
                                  "1 row with timestamp after 9999-12-31 (seconds expected) "
                                  "(row 1: '99999999999999999999')", "timestamp_out_of_range"),
    "csv-unknown-movie": (RATINGS.replace("2,20,3.0", "2,30,3.0"), MOVIES,
                          "1 row with item id not in the item table (row 2: 30)", "unknown_item"),
    "csv-missing-user": (RATINGS.replace("2,20,3.0", ",20,3.0"), MOVIES,
                         "1 row with missing user id (row 2)", "missing_user_id"),
    "csv-header-only": ("userId,movieId,rating,timestamp\n", MOVIES,
                        "ratings.csv: no valid ratings (the file has no data rows)", None),
    "csv-non-utf8-title": (RATINGS, MOVIES.replace("Heat", "H\xe9at").encode("latin-1"),
                           "movies.csv: cannot read movies csv: 'utf-8' codec can't decode", None),
    "csv-no-release-years": (RATINGS, MOVIES.replace(" (1995)", ""),
                             "movies.csv: 2 of 2 items have no release year", None),
}


def _run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.err


def _data_dir(tmp_path, ratings, movies):
    d = tmp_path / "in"
    d.mkdir()
    (d / "ratings.csv").write_text(ratings)
    (d / "movies.csv").write_bytes(movies if isinstance(movies, bytes) else movies.encode())
    return str(d)


@pytest.mark.parametrize("case", sorted(USAGE))
def test_usage_and_config_errors(case, tmp_path, capsys):
    argv, fragment, want = USAGE[case]
    argv = [a.format(d=tmp_path, o=tmp_path / "out") for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse exits directly (our parser prints one line first)
        code = e.code
    err = capsys.readouterr().err
    assert code == want, err
    assert fragment in err
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err


@pytest.mark.parametrize("case", sorted(DATA))
def test_bad_csv_input_is_one_line_naming_file_and_row(case, tmp_path, capsys):
    ratings, movies, fragment, _ = DATA[case]
    d = _data_dir(tmp_path, ratings, movies)
    code, err = _run(["data", "--source", "path", "--data-path", d, "--out", str(tmp_path / "o")],
                     capsys)
    assert code == 1, err
    assert fragment in err and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    # Bad rows: nothing half-written is kept. Fallbacks: the data set stays built and counted,
    # so allowing them (data.allow_fallbacks=true) needs no new conversion.
    assert os.path.exists(tmp_path / "o" / "DATASET.json") == (case == "csv-no-release-years")


@pytest.mark.parametrize("case", sorted(c for c, v in DATA.items() if v[3]))
def test_drop_flag_drops_and_counts_the_bad_row(case, tmp_path, capsys):
    ratings, movies, _, problem = DATA[case]
    d = _data_dir(tmp_path, ratings, movies)
    code, err = _run(["data", "--source", "path", "--data-path", d, "--out", str(tmp_path / "o"),
                      "--set", "examples.drop_invalid_events=true"], capsys)
    assert code == 0, err
    assert f"dropped rows: 1 ({problem})" in err


def test_the_doc_lists_every_row():
    doc = open(os.path.join(ROOT, "docs", "bad-input.md")).read()
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \|.*\| (\d) \|$", doc, flags=re.M))
    want = {**{c: str(v[2]) for c, v in USAGE.items()}, **{c: "1" for c in DATA}}
    assert rows == want
