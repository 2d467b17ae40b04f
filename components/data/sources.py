"""One entry point from DataConfig to a canonical dataset directory (layout: events.py).

`prepare_dataset` is idempotent: DATASET.json records a fingerprint of everything that
determines the output (source, generator knobs, input checksums, converter versions, the
suppression list's sha256); a directory whose fingerprint matches is reused as is, anything else
is regenerated from scratch.

Suppression (`data.suppressed_users`, docs/privacy.md): after any source is converted, every
event, impression and ground-truth row of a listed user is removed from the dataset before it
is marked complete, and the removed rows are counted in DATASET.json (`counts.suppressed`) and
the run summary. Nothing downstream (examples, TFMA output, MLMD, the daily snapshot job) ever
reads them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from pinrank.components.data import events as E
from pinrank.components.data import movielens, synthetic
from pinrank.pipeline.artifacts import copy_tree, sha256_file
from pinrank.pipeline.config import ConfigError, DataConfig

SOURCES = ("synthetic", "movielens", "path")
SYNTHETIC_FIELDS = ("num_users", "num_items", "num_interests", "events_per_user", "content_dim",
                    "seed", "temporal_dynamics", "horizon_days", "release_fraction_at_start",
                    "popularity_half_life_days", "evergreen_fraction", "user_active_days",
                    "interest_drift_per_session")


def path_inputs(cfg: DataConfig):
    """(ratings.csv, movies.csv) of data.path; checked before anything heavy is imported."""
    if not cfg.path:
        raise ConfigError("data.source='path' needs data.path: a directory with ratings.csv "
                         "(userId,movieId,rating,timestamp) and movies.csv (movieId,title,genres)")
    ratings = os.path.join(cfg.path, "ratings.csv")
    movies = os.path.join(cfg.path, "movies.csv")
    for f in (ratings, movies):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"data.path={cfg.path}: {os.path.basename(f)} not found "
                                    f"(expected {f})")
    return ratings, movies


def dataset_fingerprint(cfg: DataConfig, *, with_impressions: bool = True,
                        drop_invalid: bool = False) -> str:
    """sha256 over what determines the dataset built from `cfg` (not where it is cached)."""
    if cfg.source == "synthetic":
        key = {"source": "synthetic", "version": synthetic.WORLD_VERSION,
               "with_impressions": with_impressions,
               **{f: getattr(cfg, f) for f in SYNTHETIC_FIELDS}}
    elif cfg.source == "movielens":
        key = {"source": "movielens", "version": movielens.CONVERSION_VERSION,
               "wheel_sha256": movielens.RECBOLE_WHEEL_SHA256, "drop_invalid": drop_invalid}
    elif cfg.source == "path":
        ratings, movies = path_inputs(cfg)
        key = {"source": "path", "version": movielens.CONVERSION_VERSION,
               "drop_invalid": drop_invalid, "ratings_sha256": sha256_file(ratings),
               "movies_sha256": sha256_file(movies)}
        if movielens.has_year_column(movies):
            key["year_column"] = True  # see has_year_column
    else:
        raise ValueError(f"unknown data.source {cfg.source!r}; choose one of {SOURCES}")
    if cfg.suppressed_users:  # absent when unset: existing datasets keep their fingerprint
        E.read_user_list(cfg.suppressed_users, "data.suppressed_users")  # readable, or one line
        key["suppressed_users_sha256"] = sha256_file(cfg.suppressed_users)
    key["format_version"] = E.FORMAT_VERSION
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def prepare_dataset(cfg: DataConfig, out_dir: str, *, drop_invalid: bool = False,
                    with_impressions: bool = True) -> str:
    """Build (or reuse) the canonical dataset for `cfg` in `out_dir`; returns `out_dir`.
    (`pinrank data` and the benchmarks; a pipeline run ingests inside its DAG: DatasetGen.)

    synthetic -> synthetic.generate; movielens -> ML-100K fetched into the cache and converted;
    path -> convert_movielens_csv(cfg.path/ratings.csv, cfg.path/movies.csv). drop_invalid drops
    and counts bad rows of real data instead of failing (synthetic data is valid by
    construction); with_impressions only affects synthetic data (MovieLens has no impressions).

    MovieLens items whose release year or genres fall back to "unknown" are counted in
    DATASET.json; more than cfg.max_fallback_share of them (per feature) raises
    DatasetFormatError unless cfg.allow_fallbacks. The check also runs on a reused dataset, and
    a failed one stays built, so allowing the fallbacks needs no new conversion.
    """
    fingerprint = dataset_fingerprint(cfg, with_impressions=with_impressions,
                                      drop_invalid=drop_invalid)
    manifest = E.read_dataset_manifest(out_dir)
    reuse = (manifest is not None and manifest.get("fingerprint") == fingerprint
             # built before fallbacks were counted: rebuild (same data, same fingerprint)
             and (cfg.source == "synthetic" or "fallbacks" in manifest))
    if not reuse:
        raw = None if cfg.source == "synthetic" else raw_input(cfg)
        manifest = _build(cfg, out_dir, raw, fingerprint, drop_invalid=drop_invalid,
                          with_impressions=with_impressions)
    if "fallbacks" in manifest:
        movielens.check_fallbacks(manifest["fallbacks"], _items_file(cfg), cfg.max_fallback_share,
                                  cfg.allow_fallbacks)
    return out_dir


# ------------------------------------------------------------------ ingestion inside the DAG
RAW_FORMATS = ("movielens-100k", "movielens-csv", "canonical")
_ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


@dataclasses.dataclass(frozen=True)
class RawInput:
    """Input files as the pipeline's importer records them (components/types.py RawData)."""
    uri: str
    format: str
    fingerprint: str


def _files_fingerprint(files) -> str:
    return hashlib.sha256(json.dumps({os.path.basename(f): sha256_file(f) for f in files},
                                     sort_keys=True).encode()).hexdigest()


def raw_input(cfg: DataConfig) -> RawInput:
    """The files a run of `cfg` ingests (MovieLens is fetched into the cache first: a download,
    not ingestion). Synthetic data has none: DatasetGen generates it from the config."""
    if cfg.source == "movielens":
        src = movielens.fetch_movielens_100k(cfg.cache_dir)
        return RawInput(os.path.abspath(src), "movielens-100k",
                        _files_fingerprint([os.path.join(src, f) for f in _ML100K_FILES]))
    if cfg.source == "path":
        return RawInput(os.path.abspath(cfg.path), "movielens-csv",
                        _files_fingerprint(path_inputs(cfg)))
    raise ValueError(f"data.source={cfg.source!r} has no input files (synthetic data is "
                     f"generated inside the pipeline)")


def suppression_fingerprint(cfg: DataConfig) -> str:
    """sha256 of data.suppressed_users' contents ("" without a list): part of DatasetGen's cache
    key, so an edited list at the same path rebuilds the dataset."""
    if not cfg.suppressed_users:
        return ""
    E.read_user_list(cfg.suppressed_users, "data.suppressed_users")  # readable, or one line
    return sha256_file(cfg.suppressed_users)


def ingested_fingerprint(cfg: DataConfig, raw: RawInput | None, *, drop_invalid: bool = False,
                         with_impressions: bool = True) -> str:
    """DATASET.json's fingerprint for data built from `raw`: it changes with the input files'
    contents, the conversion and the suppression list, never with where the files are."""
    if raw is None:  # synthetic: the generator's knobs are the data
        return dataset_fingerprint(cfg, with_impressions=with_impressions,
                                   drop_invalid=drop_invalid)
    if raw.format == "canonical" and not cfg.suppressed_users:
        return raw.fingerprint  # the copy is the same data
    key = {"format": raw.format, "files": raw.fingerprint, "drop_invalid": drop_invalid,
           "version": movielens.CONVERSION_VERSION, "format_version": E.FORMAT_VERSION}
    if cfg.suppressed_users:
        key["suppressed_users_sha256"] = suppression_fingerprint(cfg)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def ingest(cfg: DataConfig, out_dir: str, raw: RawInput | None, *, drop_invalid: bool = False,
           with_impressions: bool = True) -> dict:
    """Build the canonical dataset into an empty local `out_dir` from `raw` (None: generate the
    synthetic world of `cfg`); returns its manifest. The fallback check runs as in
    `prepare_dataset`."""
    if raw is not None and raw.format not in RAW_FORMATS:
        raise ValueError(f"raw data {raw.uri}: unknown format {raw.format!r}; one of {RAW_FORMATS}")
    manifest = _build(cfg, out_dir, raw,
                      ingested_fingerprint(cfg, raw, drop_invalid=drop_invalid,
                                           with_impressions=with_impressions),
                      drop_invalid=drop_invalid, with_impressions=with_impressions)
    if "fallbacks" in manifest and raw is not None and raw.format != "canonical":
        items = (os.path.join(raw.uri, "ml-100k.item") if raw.format == "movielens-100k"
                 else os.path.join(raw.uri, "movies.csv"))
        movielens.check_fallbacks(manifest["fallbacks"], items, cfg.max_fallback_share,
                                  cfg.allow_fallbacks)
    return manifest


def _build(cfg: DataConfig, out_dir: str, raw: RawInput | None, fingerprint: str, *,
           drop_invalid: bool, with_impressions: bool) -> dict:
    """Convert (or generate, or copy) into `out_dir`, suppress, write the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    if raw is None:
        synthetic.generate(out_dir, cfg, with_impressions=with_impressions)
    elif raw.format == "movielens-100k":
        movielens.convert_movielens_100k(raw.uri, out_dir, drop_invalid=drop_invalid)
    elif raw.format == "movielens-csv":
        movielens.convert_movielens_csv(os.path.join(raw.uri, "ratings.csv"),
                                        os.path.join(raw.uri, "movies.csv"), out_dir,
                                        drop_invalid=drop_invalid)
    else:  # canonical: a dataset `pinrank data` wrote; the copy keeps its manifest
        _copy_canonical(raw.uri, out_dir)
    manifest = E.read_dataset_manifest(out_dir) or {}
    if cfg.suppressed_users:
        _suppress(out_dir, manifest, E.read_user_list(cfg.suppressed_users,
                                                      "data.suppressed_users"))
    manifest.pop("format_version", None)
    manifest.update(fingerprint=fingerprint, data_config=dataclasses.asdict(cfg))
    E.write_dataset_manifest(out_dir, manifest)
    return manifest


def _copy_canonical(src: str, out_dir: str) -> None:
    """Copy a canonical dataset (local or gs://); it must be complete."""
    import tensorflow as tf  # gfile reads gs://; only here, data preparation stays TF-free

    if not tf.io.gfile.exists(os.path.join(src, E.MANIFEST_FILE)):
        raise FileNotFoundError(f"{src}: no {E.MANIFEST_FILE}; a canonical dataset is written "
                                f"by `pinrank data --out DIR`")
    copy_tree(src, out_dir)


def _suppress(out_dir: str, manifest: dict, users) -> None:
    """Drop the users' rows from the built dataset; record and subtract them in the counts."""
    gone = E.drop_users(out_dir, users)
    counts = manifest.setdefault("counts", {})
    for k in ("users", "events", "impressions", "positives"):
        if k in counts:
            counts[k] -= gone[k]
    for a, n in gone["actions"].items():
        if a in counts.get("actions", {}):
            counts["actions"][a] -= n
    counts["suppressed"] = {k: gone[k] for k in ("users", "events", "impressions")}


def _items_file(cfg: DataConfig) -> str:
    """The file the item features were read from (named in fallback errors)."""
    if cfg.source == "path":
        return path_inputs(cfg)[1]
    return os.path.join(movielens.cache_root(cfg.cache_dir), movielens.ML100K_DIR, "ml-100k.item")
