"""EventExampleGen: canonical event log -> per-user timeline examples (one tf.Example per anchor).

Protocol (docs/protocol.md, "Examples (EventExampleGen)"):
- Users are split by a stable hash of user_id: `eval_user_percent` % go to `eval`, the rest to
  `train`, so no user is on both sides.
- An anchor t splits a user's time line: history = actions with timestamp < t, labels = positive
  engagements with t <= timestamp < t + window. Anchors are the distinct event times of the user
  that have >= `min_history` actions before them and >= 1 positive in the window.
- Eval users get exactly one anchor (window = `eval_window_days`), drawn by a per-user seeded RNG.
  Training users get up to `anchors_per_user` anchors (window = `train_window_days`).
- Evaluation windows never reach past the last event of the data set, so every eval user's
  14-day label set is complete. Training windows are truncated at the data's end unless
  `full_train_window` (the paper does not settle this; docs/models.md, "Deviations").

Everything is a Beam transform keyed by user, so it scales with the runner, not with RAM. Every
truncation or dropped row is counted in `<examples>/event_example_gen.json` and in the artifact's
custom properties; nothing is dropped silently.
"""

import hashlib
import json
import os
from typing import Dict, Iterator, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx import v1 as tfx
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts

from pinrank.components.data import beam_io
from pinrank.components.data import events as ev
from pinrank.components.types import EventLog, ItemCatalog
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, ExampleGenConfig, PipelineConfig

# train: model and item embeddings; valid: the Trainer's validation loss (early stopping);
# eval: the users the RetrievalEvaluator scores (never seen by training).
SPLITS = ("train", "valid", "eval")
_STATS_FILE = "event_example_gen.json"
# Beside the splits: every training user's positives (the evaluation's baselines count them).
TRAIN_POSITIVES_DIR = "train_positives"
TRAIN_POS_ITEM, TRAIN_POS_TS = "item", "ts"


def stable_bucket(user_id: str, buckets: int = 100) -> int:
    """Deterministic across processes and machines (unlike hash())."""
    return int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big") % buckets


def split_of(user_id: str, cfg: ExampleGenConfig) -> Optional[str]:
    """"eval", "valid" or "train" by stable bucket; None for a test user left out of a
    validation run. Buckets: [0, eval) test users; in a validation run the next
    `validation_user_percent` are the evaluated users; the next `valid_user_percent` are the
    Trainer's validation users (early stopping); the rest train."""
    bucket = stable_bucket(user_id)
    lo = cfg.eval_user_percent
    if bucket < lo:
        return "eval" if cfg.eval_users == "test" else None
    if cfg.eval_users == "validation":
        lo += cfg.validation_user_percent
        if bucket < lo:
            return "eval"
    return "valid" if bucket < lo + cfg.valid_user_percent else "train"


def eval_cut(cfg: ExampleGenConfig, data_start: int, data_end: int) -> Optional[int]:
    """Start of the out-of-time evaluation period, or None when the protocol is not used."""
    if cfg.eval_after_time_quantile <= 0:
        return None
    return int(data_start + cfg.eval_after_time_quantile * (data_end - data_start))


def _sorted_rows(rows: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    order = np.lexsort((rows["item_id"], rows["timestamp"]))  # time, ties broken by item id
    return {k: v[order] for k, v in rows.items()}


def train_positives(user_id: str, rows: Dict[str, np.ndarray], cfg: ExampleGenConfig,
                    cut: Optional[int] = None) -> Iterator[tf.train.Example]:
    """A training user's positive engagements (all of them, before `cut` when given), one
    tf.Example {user_id, item, ts}: what the evaluation's baselines may count."""
    if split_of(user_id, cfg) != "train":
        return
    r = _sorted_rows(rows)
    keep = ev.is_positive(r["action"], r["duration"])
    if cut is not None:
        keep &= r["timestamp"] < cut
    if not keep.any():
        return
    ex = tf.train.Example()
    f = ex.features.feature
    f[F.USER_ID].bytes_list.value.append(user_id.encode())
    f[TRAIN_POS_ITEM].int64_list.value.extend(r["item_id"][keep].tolist())
    f[TRAIN_POS_TS].int64_list.value.extend(r["timestamp"][keep].tolist())
    yield ex


def _user_rng(user_id: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def candidate_anchors(ts: np.ndarray, pos: np.ndarray, window_s: int, min_history: int,
                      data_end: int, full_window: bool = True) -> np.ndarray:
    """Anchor times for one user (ts sorted ascending): distinct event times with enough history
    and at least one positive in [t, t + window); with `full_window` the window must also end
    within the data (otherwise it is truncated at the data's end)."""
    times = np.unique(ts)
    n_before = np.searchsorted(ts, times, side="left")
    pos_cum = np.concatenate([[0], np.cumsum(pos)])
    n_pos_in_window = (pos_cum[np.searchsorted(ts, times + window_s, side="left")]
                       - pos_cum[n_before])
    ok = (n_before >= min_history) & (n_pos_in_window > 0)
    if full_window:
        ok &= times + window_s <= data_end + 1
    return times[ok]


def train_anchors(cfg: ExampleGenConfig, n_train_users: int) -> int:
    """Anchors per training user: anchors_per_user, or with min_train_examples enough that the
    training users make that many examples, capped at max_anchors_per_user."""
    if cfg.min_train_examples <= 0 or n_train_users <= 0:
        return cfg.anchors_per_user
    need = -(-cfg.min_train_examples // n_train_users)  # ceil
    return int(min(max(cfg.anchors_per_user, need), cfg.max_anchors_per_user))


def user_examples(user_id: str, rows: Dict[str, np.ndarray], cfg: ExampleGenConfig,
                  data_end: int, cut: Optional[int] = None, n_anchors: Optional[int] = None,
                  ) -> Iterator[Tuple[Optional[str], tf.train.Example, Dict[str, int]]]:
    """Yields (split, example, counters) for one user's events (any order). `cut`: start of
    the out-of-time eval period (eval_cut); training timelines end before it. `n_anchors`:
    anchors per training user (train_anchors; default anchors_per_user)."""
    split = split_of(user_id, cfg)
    if split is None:
        yield None, None, {"users_left_out_test": 1}
        return
    r = _sorted_rows(rows)
    counters_user = {}
    # Validation users are cut too: their loss picks the Trainer's best epoch (early stopping),
    # so they must not see the eval period either.
    if cut is not None and split in ("train", "valid"):
        after = r["timestamp"] >= cut
        counters_user["train_events_after_eval_cut"] = int(after.sum())
        r = {k: v[~after] for k, v in r.items()}
        data_end = min(data_end, cut - 1)
    ts = r["timestamp"]
    pos = ev.is_positive(r["action"], r["duration"]).astype(np.int64)
    window_days = cfg.eval_window_days if split == "eval" else cfg.train_window_days
    window_s = window_days * DAY_S
    full = split == "eval" or cfg.full_train_window
    anchors = candidate_anchors(ts, pos, window_s, cfg.min_history, data_end, full)
    if cut is not None and split == "eval":
        anchors = anchors[anchors >= cut]
    if len(anchors) == 0:
        yield split, None, {f"users_without_anchor_{split}": 1, **counters_user}
        return
    per_user = n_anchors if n_anchors is not None else cfg.anchors_per_user
    n_keep = min(cfg.eval_anchors_per_user if split == "eval" else per_user, len(anchors))
    rng = _user_rng(user_id, cfg.seed)
    chosen = np.sort(rng.choice(anchors, size=n_keep, replace=False))
    max_future = cfg.max_eval_future if split == "eval" else cfg.max_future
    for t in chosen:
        start = np.searchsorted(ts, t, side="left")
        end = np.searchsorted(ts, t + window_s, side="left")
        lo = max(0, start - cfg.max_history)
        fut_idx = np.nonzero(pos[start:end])[0][:max_future] + start
        counters = {f"examples_{split}": 1, **counters_user,
                    "history_truncated": int(lo > 0),
                    "history_actions_dropped_by_max_history": int(lo),
                    "future_truncated": int(pos[start:end].sum() > len(fut_idx))}
        ex = tf.train.Example()
        f = ex.features.feature
        f[F.USER_ID].bytes_list.value.append(user_id.encode())
        f[F.ANCHOR_TS].int64_list.value.append(int(t))
        f[F.HIST_ITEM].int64_list.value.extend(r["item_id"][lo:start].tolist())
        f[F.HIST_ACTION].bytes_list.value.extend(a.encode() for a in r["action"][lo:start])
        f[F.HIST_SURFACE].bytes_list.value.extend(s.encode() for s in r["surface"][lo:start])
        f[F.HIST_TS].int64_list.value.extend(ts[lo:start].tolist())
        f[F.HIST_DURATION].float_list.value.extend(r["duration"][lo:start].tolist())
        f[F.HIST_POS].int64_list.value.extend(pos[lo:start].tolist())
        f[F.FUT_ITEM].int64_list.value.extend(r["item_id"][fut_idx].tolist())
        f[F.FUT_TS].int64_list.value.extend(ts[fut_idx].tolist())
        yield split, ex, counters
        counters_user = {}  # per-user counts go with the first example only


def build_examples(p: beam.Pipeline, input_base: str, cfg: ExampleGenConfig,
                   output_uri: str) -> None:
    """The Beam graph: shards -> validated rows -> per-user groups -> anchor examples."""
    shards = ev.event_shards(input_base)
    if not shards:
        raise FileNotFoundError(f"no event shards under {input_base}/events/")
    read = (p | "Shards" >> beam.Create(shards)
            | "ReadValidate" >> beam.ParDo(
                beam_io.ReadValidatedEvents(input_base, cfg.drop_invalid_events, emit_max_ts=True))
            .with_outputs("counters", "max_ts", main="rows"))
    data_end = beam.pvalue.AsSingleton(read.max_ts | "DataEnd" >> beam.CombineGlobally(lambda xs: max(xs, default=0)))
    per_user = (read.rows | "GroupByUser" >> beam.GroupByKey()
                | "Concat" >> beam.MapTuple(lambda u, parts: (u, beam_io.concat_columns(parts))))
    data_start = beam.pvalue.AsSingleton(
        per_user | "UserStart" >> beam.MapTuple(lambda u, r: int(r["timestamp"].min()))
        | "DataStart" >> beam.CombineGlobally(lambda xs: min(xs, default=0)))
    # Anchors per training user: known once the training users are counted (a side input).
    n_anchors = (per_user | "TrainUsers" >> beam.Filter(lambda kv: split_of(kv[0], cfg) == "train")
                 | "CountTrainUsers" >> beam.combiners.Count.Globally()
                 | "AnchorsPerUser" >> beam.Map(lambda n: train_anchors(cfg, n)))
    out = (per_user | "Anchors" >> beam.FlatMap(
        lambda kv, start, end, k: user_examples(kv[0], kv[1], cfg, end,
                                                eval_cut(cfg, start, end), k),
        data_start, data_end, beam.pvalue.AsSingleton(n_anchors)))
    _ = (per_user | "TrainPositives" >> beam.FlatMap(
            lambda kv, start, end: train_positives(kv[0], kv[1], cfg, eval_cut(cfg, start, end)),
            data_start, data_end)
         | "SerializePositives" >> beam.Map(lambda ex: ex.SerializeToString())
         | "WritePositives" >> beam.io.WriteToTFRecord(
             os.path.join(output_uri, TRAIN_POSITIVES_DIR, "data_tfrecord"),
             file_name_suffix=".gz"))
    for split in SPLITS:
        (out | f"Only{split}" >> beam.Filter(lambda x, s=split: x[0] == s and x[1] is not None)
         | f"Serialize{split}" >> beam.Map(lambda x: x[1].SerializeToString())
         | f"Write{split}" >> beam.io.WriteToTFRecord(
             os.path.join(output_uri, f"Split-{split}", "data_tfrecord"),
             file_name_suffix=".gz"))
    counters = ((read.counters, out | "Counters" >> beam.Map(lambda x: x[2]),
                 n_anchors | "AnchorsCounter" >> beam.Map(lambda k: {"train_anchors_per_user": k}))
                | "AllCounters" >> beam.Flatten()
                | "Sum" >> beam.CombineGlobally(beam_io.sum_counters))
    _ = counters | "WriteStats" >> beam.Map(
        lambda c: tf.io.gfile.GFile(os.path.join(output_uri, _STATS_FILE), "w").write(
            json.dumps(c, indent=2, sort_keys=True)))


@tfx.dsl.components.component(use_beam=True)
def EventExampleGen(
    examples: tfx.dsl.components.OutputArtifact[standard_artifacts.Examples],
    items: tfx.dsl.components.OutputArtifact[ItemCatalog],
    events: tfx.dsl.components.InputArtifact[EventLog],
    config_json: tfx.dsl.components.Parameter[str],
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """The canonical dataset (DatasetGen's EventLog) -> Examples (train/valid/eval) + ItemCatalog."""
    input_base = events.uri
    cfg = PipelineConfig.from_json(config_json).examples
    with beam_pipeline as p:
        build_examples(p, input_base, cfg, examples.uri)
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
    with tf.io.gfile.GFile(os.path.join(examples.uri, _STATS_FILE)) as fh:
        stats = json.load(fh)
    for key, val in stats.items():
        examples.set_int_custom_property(key, int(val))
    for name in ("items.parquet", "interests.json"):
        tf.io.gfile.copy(os.path.join(input_base, name), os.path.join(items.uri, name),
                         overwrite=True)
    items.set_int_custom_property("num_items", len(ev.read_items(input_base)))


def read_train_positives(examples_uri: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index, item id, timestamp) of every training user's positives (TRAIN_POSITIVES_DIR
    of an Examples artifact), as flat int64 arrays."""
    files = tf.io.gfile.glob(os.path.join(examples_uri, TRAIN_POSITIVES_DIR, "*"))
    if not files:
        raise FileNotFoundError(
            f"{examples_uri}/{TRAIN_POSITIVES_DIR}/ is missing: these Examples were written by "
            f"an older EventExampleGen; rerun the pipeline with the cache disabled")
    users, items, ts = [], [], []
    for i, rec in enumerate(tf.data.TFRecordDataset(files, compression_type="GZIP")):
        f = tf.train.Example.FromString(rec.numpy()).features.feature
        items.append(np.asarray(f[TRAIN_POS_ITEM].int64_list.value, np.int64))
        ts.append(np.asarray(f[TRAIN_POS_TS].int64_list.value, np.int64))
        users.append(np.full(len(items[-1]), i, np.int64))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(users), cat(items), cat(ts)


def read_stats(examples_uri: str) -> Dict[str, int]:
    with tf.io.gfile.GFile(os.path.join(examples_uri, _STATS_FILE)) as fh:
        return json.load(fh)
