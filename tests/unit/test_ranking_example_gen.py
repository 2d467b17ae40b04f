"""RankingExampleGen: history strictly before the request, PinnerFormer embedding as of the day
start (from a toy embed_raw model we can predict), labels from impressions, time split,
MovieLens-style request derivation, blessing check, and the curated ranker schema."""
import glob
import os

import numpy as np
import pandas as pd
import pytest

from pinrank.components import ranking_example_gen as rg
from pinrank.components.data import events as ev
from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, PipelineConfig, RankingConfig

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "..", "pipeline", "schema",
                      "ranker_raw.pbtxt")
D0 = 20000  # first day (days since the epoch)
H = 3600
NUM_ITEMS = 20


def _t(day, hours, secs=0):
    return (D0 + day) * DAY_S + hours * H + secs


# --------------------------------------------------------------------------------------------
# Toy PinnerFormer: a predictable function of the (masked) history, [None, None] inputs like the
# real export's embed_raw.

def toy_embedding(hist) -> np.ndarray:
    """numpy twin of the toy SavedModel: hist = dict of chronological lists (real actions)."""
    n = len(hist["ts"])
    if n == 0:
        return None
    ts = np.asarray(hist["ts"], np.float64)
    item = np.asarray(hist["item"], np.float64)
    pos = np.arange(1, n + 1, dtype=np.float64)
    return np.array([
        np.mean(ts % DAY_S) / DAY_S,
        n,
        np.mean(item),
        np.mean(np.asarray(hist["action"]) == "repin"),
        np.mean(hist["duration"]),
        np.sum(pos * item) / n,
    ], np.float32)


def save_toy_model(path: str) -> None:
    import tensorflow as tf

    specs = [tf.TensorSpec([None, None], tf.int64, F.HIST_ITEM),
             tf.TensorSpec([None, None], tf.string, F.HIST_ACTION),
             tf.TensorSpec([None, None], tf.string, F.HIST_SURFACE),
             tf.TensorSpec([None, None], tf.int64, F.HIST_TS),
             tf.TensorSpec([None, None], tf.float32, F.HIST_DURATION),
             tf.TensorSpec([None], tf.int64, "hist_len")]

    class Toy(tf.Module):
        @tf.function(input_signature=specs)
        def embed_raw(self, hist_item, hist_action, hist_surface, hist_ts, hist_duration,
                      hist_len):
            width = tf.shape(hist_item)[1]
            mask = tf.sequence_mask(hist_len, width, tf.float64)
            n = tf.maximum(tf.cast(hist_len, tf.float64), 1.0)
            pos = tf.cast(tf.range(1, width + 1), tf.float64)[None, :]
            item = tf.cast(hist_item, tf.float64)

            def mean(x):
                return tf.reduce_sum(x * mask, axis=1) / n

            emb = tf.stack([
                mean(tf.cast(hist_ts % DAY_S, tf.float64) / DAY_S),
                tf.cast(hist_len, tf.float64),
                mean(item),
                mean(tf.cast(tf.equal(hist_action, b"repin"), tf.float64)),
                mean(tf.cast(hist_duration, tf.float64)),
                mean(pos * item),
            ], axis=1)
            return {"embedding": tf.cast(emb, tf.float32)}

    m = Toy()
    tf.saved_model.save(m, path, signatures={"embed_raw": m.embed_raw})


# --------------------------------------------------------------------------------------------
# Datasets

def _items(d):
    ev.write_items(d, np.arange(1, NUM_ITEMS + 1), np.eye(NUM_ITEMS, 4, dtype=np.float32),
                   [[0]] * NUM_ITEMS, ["a"])


def _write_events(d, rows):
    with ev.EventShardWriter(d, shard_rows=7) as w:  # several shards; users span them
        w.write(pd.DataFrame(rows, columns=list(F.EVENT_COLUMNS)))


# (user, item, action, timestamp, duration, surface)
EVENTS = [
    ("alice", 1, "repin", _t(0, 10), 0.0, "homefeed"),
    ("alice", 2, "closeup", _t(0, 11), 30.0, "search"),
    ("alice", 3, "click", _t(1, 8), 12.0, "homefeed"),        # after day-1 start, before r_a1
    ("alice", 4, "repin", _t(1, 12), 0.0, "homefeed"),        # AT r_a1's request time
    ("alice", 5, "closeup", _t(1, 12, 5), 40.0, "homefeed"),  # during r_a1's session
    ("alice", 6, "hide", _t(2, 9), 0.0, "related"),
    ("bob", 8, "repin", _t(0, 9, 10), 0.0, "homefeed"),       # during r_b1's session
    ("carol", 9, "repin", _t(0, 5), 0.0, "homefeed"),          # no impressions at all
    ("dave", 10, "click", _t(0, 23), 15.0, "profile"),
]
# request_id -> (user, request_ts, surface, [(item, position, {labels})])
REQUESTS = {
    "r_a1": ("alice", _t(1, 12), "homefeed",
             [(4, 0, {"repin": 1}), (5, 1, {"closeup": 1}), (7, 2, {})]),
    "r_a2": ("alice", _t(1, 18), "search", [(11, 0, {"click": 1, "closeup": 1}), (12, 1, {})]),
    "r_a3": ("alice", _t(3, 10), "homefeed", [(13, 0, {"hide": 1})]),
    "r_b1": ("bob", _t(0, 9), "homefeed", [(8, 0, {"repin": 1}), (14, 1, {})]),
    "r_b2": ("bob", _t(2, 10), "related",                       # 4 rows, max_candidates = 3
             [(15, 0, {}), (16, 1, {"repin": 1}), (17, 2, {}), (18, 3, {"hide": 1})]),
    "r_d1": ("dave", _t(1, 0), "homefeed", [(19, 0, {"click": 1})]),  # exactly at a day start
}
RANK_CFG = dict(max_candidates=3, max_history=3, eval_time_quantile=0.8)


def _impression_rows():
    rows = []
    for rid, (user, ts, surface, cands) in REQUESTS.items():
        for item, pos, labels in cands:
            rows.append({"request_id": rid, "user_id": user, "item_id": item, "timestamp": ts,
                         "surface": surface, "position": pos,
                         **{h: labels.get(h, 0) for h in F.IMPRESSION_LABELS}})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # any row order


def make_impression_dataset(d, events=EVENTS):
    _items(d)
    _write_events(d, events)
    with ev.ImpressionShardWriter(d, shard_rows=5) as w:
        w.write(_impression_rows())
    return d


ML_T = _t(0, 1)
ML_EVENTS = (
    # m1: session 1 = items 1, 2, 3 (gaps 600 s); a gap of exactly 1800 s starts session 2;
    # session 3 ten days later.
    [("m1", 1, "repin", ML_T, 20.0, "homefeed"), ("m1", 2, "hide", ML_T + 600, 0.0, "homefeed"),
     ("m1", 3, "closeup", ML_T + 1200, 30.0, "homefeed"),
     ("m1", 4, "click", ML_T + 3000, 5.0, "homefeed"),
     ("m1", 5, "repin", ML_T + 10 * DAY_S, 20.0, "homefeed")]
    # m2: 15 items in one session, then items 16, 17: only 3 catalog items never touched.
    + [("m2", i, "closeup", ML_T + 60 * i, 30.0, "homefeed") for i in range(1, 16)]
    + [("m2", 16, "repin", ML_T + 5 * DAY_S, 20.0, "homefeed"),
       ("m2", 17, "hide", ML_T + 5 * DAY_S + 100, 0.0, "homefeed")]
    # m3: one session of two items.
    + [("m3", 7, "click", ML_T + 2 * DAY_S, 5.0, "homefeed"),
       ("m3", 8, "repin", ML_T + 2 * DAY_S + 1000, 20.0, "homefeed")])
ML_CFG = dict(negatives_per_request=4, max_candidates=12, max_history=50, seed=7)


def make_movielens_dataset(d):
    _items(d)
    _write_events(d, ML_EVENTS)
    return d


# --------------------------------------------------------------------------------------------
# Running the executor

def run_executor(root, input_base, model_uri, ranking, blessed=1):
    from tfx.types import standard_artifacts

    from pinrank.components.types import EventLog

    events = EventLog()
    events.uri = input_base
    model = standard_artifacts.Model()
    model.uri = model_uri
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = os.path.join(root, "blessing")
    blessing.set_int_custom_property("blessed", blessed)
    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(root, "examples")
    cfg = PipelineConfig().replace(ranking=ranking)
    props = {"config_json": cfg.sections_json("ranking", "examples")}
    executor = rg.RankingExampleGen.EXECUTOR_SPEC.executor_class()
    executor.Do({"model": [model], "model_blessing": [blessing], "events": [events]},
                {"examples": [examples]}, props)
    return examples


def read_split(uri, split):
    import tensorflow as tf
    files = glob.glob(os.path.join(uri, f"Split-{split}", "*"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def decode(serialized):
    import tensorflow as tf
    ex = tf.train.Example.FromString(serialized)
    out = {}
    for k, f in ex.features.feature.items():
        kind = f.WhichOneof("kind")
        vals = list(getattr(f, kind).value) if kind else []
        out[k] = [v.decode() if isinstance(v, bytes) else v for v in vals]
    return out


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("model"))
    save_toy_model(os.path.join(uri, "Format-Serving"))
    return uri


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory, model_uri):
    root = str(tmp_path_factory.mktemp("imp"))
    d = make_impression_dataset(os.path.join(root, "ds"))
    examples = run_executor(root, d, model_uri, RANK_CFG)
    rows = {s: [decode(x) for x in read_split(examples.uri, s)] for s in rg.SPLITS}
    return examples, rows


def _sorted(rows):
    return sorted(rows, key=lambda r: repr(sorted(r.items())))


def _all(rows):
    return [(s, r) for s in rg.SPLITS for r in rows[s]]


def _events_before(user, t, events=EVENTS, cap=None):
    ev_ = sorted((e for e in events if e[0] == user and e[3] < t), key=lambda e: (e[3], e[1]))
    if cap:
        ev_ = ev_[-cap:]
    return {"item": [e[1] for e in ev_], "action": [e[2] for e in ev_],
            "ts": [e[3] for e in ev_], "duration": [e[4] for e in ev_],
            "surface": [e[5] for e in ev_]}


# --------------------------------------------------------------------------------------------
# Impressions mode

def test_one_example_per_impression_with_its_labels(imp_run):
    examples, rows = imp_run
    got = {}
    for _, r in _all(rows):
        got[(r[F.REQUEST_ID][0], r[F.CAND_ITEM][0])] = r
    want = {}
    for rid, (user, ts, surface, cands) in REQUESTS.items():
        for item, pos, labels in cands[:RANK_CFG["max_candidates"]]:  # first by position
            want[(rid, item)] = (user, ts, surface, labels)
    assert set(got) == set(want)
    for key, (user, ts, surface, labels) in want.items():
        r = got[key]
        assert r[F.USER_ID] == [user] and r[F.REQUEST_TS] == [ts] and r[F.SURFACE] == [surface]
        for h in F.HEADS:
            assert r[F.label_key(h)] == [labels.get(h, 0)], (key, h)
    stats = rg.read_stats(examples.uri)
    assert stats["candidates_truncated"] == 1 and stats["candidates_dropped_by_max_candidates"] == 1
    assert stats["examples_train"] + stats["examples_eval"] == len(want)
    n_rows = sum(len(r[3]) for r in REQUESTS.values())
    assert stats["impressions_read"] == stats["impressions_kept"] == n_rows
    assert stats["users_without_requests"] == 1  # carol
    assert stats["requests"] == len(REQUESTS)
    props = examples.mlmd_artifact.custom_properties
    assert props["examples_train"].int_value == stats["examples_train"]
    assert examples.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"
    assert examples.split_names == '["train", "eval"]'
    assert examples.get_string_custom_property("request_source") == rg.SOURCE_IMPRESSIONS


def test_history_strictly_before_request_and_capped(imp_run):
    examples, rows = imp_run
    n_trunc = 0
    for _, r in _all(rows):
        t = r[F.REQUEST_TS][0]
        assert all(x < t for x in r[F.HIST_TS])
        want = _events_before(r[F.USER_ID][0], t, cap=RANK_CFG["max_history"])
        assert r[F.HIST_TS] == want["ts"] and r[F.HIST_ITEM] == want["item"]
        assert r[F.HIST_ACTION] == want["action"] and r[F.HIST_SURFACE] == want["surface"]
        np.testing.assert_allclose(r[F.HIST_DURATION], want["duration"])
    by_req = {r[F.REQUEST_ID][0]: r for _, r in _all(rows)}
    assert by_req["r_a1"][F.HIST_ITEM] == [1, 2, 3]         # not item 4 at request_ts, not 5
    assert by_req["r_a2"][F.HIST_ITEM] == [3, 4, 5]         # capped at 3 of 5
    assert by_req["r_b1"][F.HIST_ITEM] == []                # first request: empty history
    assert by_req["r_d1"][F.HIST_ITEM] == [10]
    stats = rg.read_stats(examples.uri)
    n_trunc = sum(1 for rid in REQUESTS
                  if len(_events_before(REQUESTS[rid][0], REQUESTS[rid][1])["ts"]) > 3)
    assert stats["history_truncated"] == n_trunc == 2        # r_a2, r_a3
    assert stats["requests_without_history"] == 1


def test_pf_embedding_from_actions_before_the_day_start(imp_run):
    examples, rows = imp_run
    seen = 0
    for _, r in _all(rows):
        t = r[F.REQUEST_TS][0]
        day_start = (t // DAY_S) * DAY_S
        hist = _events_before(r[F.USER_ID][0], day_start, cap=RANK_CFG["max_history"])
        want = toy_embedding(hist)
        if want is None:
            assert r[F.PF_PRESENT] == [0] and r[F.PF_EMBEDDING] == [0.0] * 6
        else:
            seen += 1
            assert r[F.PF_PRESENT] == [1]
            np.testing.assert_allclose(r[F.PF_EMBEDDING], want, rtol=1e-5)
            assert max(hist["ts"]) < day_start <= t
    assert seen > 0
    by_req = {r[F.REQUEST_ID][0]: r for _, r in _all(rows)}
    # Same day, same embedding, although r_a2's history has two more actions.
    assert by_req["r_a1"][F.PF_EMBEDDING] == by_req["r_a2"][F.PF_EMBEDDING]
    assert by_req["r_a1"][F.PF_EMBEDDING][1] == 2.0          # items 1, 2 only (day 0)
    assert by_req["r_d1"][F.PF_PRESENT] == [1]               # event at 23:00 the day before
    stats = rg.read_stats(examples.uri)
    assert stats["pf_user_days"] == 5  # alice d1, d3; bob d0, d2; dave d1
    assert stats["pf_user_days_without_history"] == 1 and stats["users_without_pf_embedding"] == 1
    assert stats["examples_without_pf_embedding_train"] == 2  # r_b1's two candidates


def test_perturbing_actions_at_or_after_day_start_keeps_the_embedding(imp_run, model_uri,
                                                                      tmp_path):
    _, rows = imp_run
    # Change everything alice did from day 1 on (after r_a1's day start): item, action, dwell.
    def perturb(e):
        u, i, a, t, d, s = e
        if u == "alice" and t >= _t(1, 0):
            return (u, i % NUM_ITEMS + 1, "hide", t, d + 99.0, s)
        return e

    perturbed = [perturb(e) for e in EVENTS]
    assert perturbed != EVENTS
    d = make_impression_dataset(str(tmp_path / "ds"), events=perturbed)
    ex2 = run_executor(str(tmp_path), d, model_uri, RANK_CFG)
    rows2 = {s: [decode(x) for x in read_split(ex2.uri, s)] for s in rg.SPLITS}

    def by_key(rs):
        return {(r[F.REQUEST_ID][0], r[F.CAND_ITEM][0]): r for _, r in _all(rs)}

    a, b = by_key(rows), by_key(rows2)
    assert set(a) == set(b)
    for key in a:
        if key[0] in ("r_a1", "r_a2"):  # day-1 requests: PF from day 0 only
            assert a[key][F.PF_EMBEDDING] == b[key][F.PF_EMBEDDING]
            assert a[key][F.HIST_ITEM] != b[key][F.HIST_ITEM]  # the history did change
        if key[0] == "r_a3":            # day 3: the perturbed actions are before its day start
            assert a[key][F.PF_EMBEDDING] != b[key][F.PF_EMBEDDING]


def test_time_split_cutoff(imp_run):
    examples, rows = imp_run
    times = sorted(ts for _, ts, _, _ in REQUESTS.values())
    cutoff = times[int(np.floor(0.8 * len(times)))]
    assert rg.time_cutoff(times, 0.8) == cutoff == _t(2, 10)
    stats = rg.read_stats(examples.uri)
    assert stats["eval_cutoff_ts"] == cutoff
    assert examples.get_int_custom_property("eval_cutoff_ts") == cutoff
    assert {r[F.REQUEST_ID][0] for r in rows["eval"]} == {"r_b2", "r_a3"}
    assert all(r[F.REQUEST_TS][0] >= cutoff for r in rows["eval"])
    assert all(r[F.REQUEST_TS][0] < cutoff for r in rows["train"])
    assert stats["requests_eval"] == 2 and stats["requests_train"] == 4
    assert stats["examples_eval"] == len(rows["eval"]) == 4  # r_b2 (3 kept) + r_a3
    assert stats["label_repin_positives_eval"] == 1 and stats["label_hide_positives_eval"] == 1
    assert rg.time_cutoff([], 0.8) is None and rg.time_cutoff([5, 5, 5], 0.8) == 5


def test_output_parses_with_curated_schema_and_validates(imp_run):
    import tensorflow as tf
    import tensorflow_data_validation as tfdv
    from google.protobuf import text_format
    from tensorflow_data_validation.statistics import stats_impl
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.coders import example_coder

    examples, _ = imp_run
    schema = text_format.Parse(open(SCHEMA).read(), schema_pb2.Schema())
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    feature_names = {F.REQUEST_ID, F.USER_ID, F.REQUEST_TS, F.SURFACE, F.CAND_ITEM, F.PF_EMBEDDING,
                     F.PF_PRESENT, F.HIST_ITEM, F.HIST_ACTION, F.HIST_TS, F.HIST_SURFACE,
                     F.HIST_DURATION} | {F.label_key(h) for h in F.HEADS}
    assert set(spec) == feature_names
    for split in rg.SPLITS:
        serialized = read_split(examples.uri, split)
        assert {frozenset(decode(s)) for s in serialized} == {frozenset(feature_names)}
        parsed = tf.io.parse_example(serialized, spec)
        assert parsed[F.CAND_ITEM].shape == (len(serialized), 1)
        assert parsed[F.PF_EMBEDDING].to_tensor().shape == (len(serialized), 6)
        decoder = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString())
        batch = decoder.DecodeBatch(serialized)
        stats = stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))
        anomalies = tfdv.validate_statistics(stats, schema)
        assert not anomalies.anomaly_info, (split, anomalies)
    # The train split has empty histories (r_b1), and they validate.
    train = tf.io.parse_example(read_split(examples.uri, "train"), spec)
    assert (train[F.HIST_ITEM].row_lengths().numpy() == 0).any()
    # ... while the schema does catch bad values.
    bad = tf.train.Example.FromString(read_split(examples.uri, "train")[0])
    bad.features.feature[F.PF_EMBEDDING].float_list.value[0] = float("nan")
    bad.features.feature[F.HIST_ACTION].bytes_list.value.append(b"like")
    batch = decoder.DecodeBatch([bad.SerializeToString()])
    stats = stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))
    found = set(tfdv.validate_statistics(stats, schema).anomaly_info)
    assert {F.PF_EMBEDDING, F.HIST_ACTION} <= found


# --------------------------------------------------------------------------------------------
# MovieLens-style derivation

@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, model_uri):
    root = str(tmp_path_factory.mktemp("ml"))
    d = make_movielens_dataset(os.path.join(root, "ds"))
    examples = run_executor(root, d, model_uri, ML_CFG)
    rows = {s: [decode(x) for x in read_split(examples.uri, s)] for s in rg.SPLITS}
    return examples, rows


def test_sessions_from_gaps():
    ts = np.array([0, 600, 1200, 3000, 3000 + 1799, 10 ** 6])
    assert rg.session_ids(ts, 1800).tolist() == [0, 0, 0, 1, 1, 2]
    assert rg.session_ids(np.zeros(0, np.int64), 1800).tolist() == []


def test_sample_negatives_uniform_distinct_and_excluding():
    catalog = np.arange(1, 101)
    rng = np.random.default_rng(0)
    counts = np.zeros(101)
    for _ in range(400):
        neg = rg.sample_negatives(catalog, np.arange(1, 41), 10, rng)
        assert len(set(neg.tolist())) == 10 and neg.min() > 40
        counts[neg] += 1
    assert counts[:41].sum() == 0 and counts[41:].min() > 30  # ~66 each
    few = rg.sample_negatives(catalog, np.arange(1, 98), 10, rng)   # pool path, short
    assert sorted(few.tolist()) == [98, 99, 100]


def test_movielens_requests_candidates_and_counts(ml_run):
    examples, rows = ml_run
    stats = rg.read_stats(examples.uri)
    by_user = {}
    for u, *_ in ML_EVENTS:
        by_user.setdefault(u, set()).update(e[1] for e in ML_EVENTS if e[0] == u)
    reqs = {}
    for _, r in _all(rows):
        reqs.setdefault(r[F.REQUEST_ID][0], []).append(r)
    # m1: 3 sessions (the 1800 s gap splits), m2: 2, m3: 1.
    want_ts = {"m1": [ML_T, ML_T + 3000, ML_T + 10 * DAY_S],
               "m2": [ML_T + 60, ML_T + 5 * DAY_S], "m3": [ML_T + 2 * DAY_S]}
    assert set(reqs) == {f"{u}@{t}" for u, ts in want_ts.items() for t in ts}
    assert stats["sessions"] == stats["requests"] == 6
    action_of = {(e[0], e[1]): e[2] for e in ML_EVENTS}
    for rid, rs in reqs.items():
        user, t = rid.split("@")[0], int(rid.split("@")[1])
        nxt = min([s for s in want_ts[user] if s > t], default=float("inf"))
        session = [e for e in ML_EVENTS if e[0] == user and t <= e[3] < nxt]
        session_items = [e[1] for e in sorted(session, key=lambda e: (e[3], e[1]))]
        items = [r[F.CAND_ITEM][0] for r in rs]
        assert len(items) == len(set(items)) <= ML_CFG["max_candidates"]
        for r in rs:
            assert r[F.REQUEST_TS] == [t] and all(x < t for x in r[F.HIST_TS])
            assert r[F.HIST_TS] == _events_before(user, t, ML_EVENTS)["ts"]
            item = r[F.CAND_ITEM][0]
            labels = {h: r[F.label_key(h)][0] for h in F.HEADS}
            if item in session_items:
                assert labels == {h: int(h == action_of[(user, item)]) for h in F.HEADS}
            else:  # a sampled negative: never interacted (ever), all labels 0
                assert item not in by_user[user] and sum(labels.values()) == 0
        n_neg = sum(1 for i in items if i not in session_items)
        free = NUM_ITEMS - len(by_user[user])
        if user == "m2" and t == ML_T + 60:  # 15 session items + 3 negatives, capped at 12
            assert len(items) == 12 and n_neg == 0
        else:
            assert n_neg == min(ML_CFG["negatives_per_request"], free)
            assert set(session_items) <= set(items)
    assert stats["negatives_short"] == 2  # m2 has only 3 never-touched items left
    assert stats["candidates_truncated"] == 1 and stats["candidates_dropped_by_max_candidates"] == 6
    assert examples.get_string_custom_property("request_source") == rg.SOURCE_SESSIONS


def test_movielens_derivation_is_seeded():
    cfg = RankingConfig(**ML_CFG)
    events = [e for e in ML_EVENTS if e[0] == "m3"]
    cols = {c: np.array([e[i + 1] for e in events]) for i, c in enumerate(F.EVENT_COLUMNS[1:])}
    catalog = np.arange(1, NUM_ITEMS + 1)

    def negatives(seed):
        out = list(rg.user_requests("m3", cols, None, dataclass_replace(cfg, seed=seed), catalog))
        (req,) = [v for tag, v in out if tag == "req"]
        return req[1]["cand_item"][2:].tolist()

    assert negatives(7) == negatives(7) != negatives(8)


def dataclass_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


# --------------------------------------------------------------------------------------------
# Errors

def test_not_blessed_model_is_refused(tmp_path, model_uri):
    d = make_impression_dataset(str(tmp_path / "ds"))
    with pytest.raises(rg.ModelNotBlessedError, match="not blessed"):
        run_executor(str(tmp_path), d, model_uri, RANK_CFG, blessed=0)
    assert not os.path.exists(os.path.join(str(tmp_path), "examples", "Split-train"))


def test_invalid_impressions_fail_with_file_name_or_are_dropped():
    df = _impression_rows().reset_index(drop=True)
    df.loc[2, "surface"] = "nowhere"
    df.loc[4, "hide"] = 3
    with pytest.raises(ev.EventValidationError) as err:
        rg.validate_impressions(df, np.arange(1, NUM_ITEMS + 1), where="imp.parquet",
                                drop_invalid=False)
    msg = str(err.value)
    assert "imp.parquet" in msg and "unknown surface (row 2: 'nowhere')" in msg
    assert "label not 0 or 1 (row 4: 3)" in msg
    clean, dropped = rg.validate_impressions(df, np.arange(1, NUM_ITEMS + 1), where="x",
                                             drop_invalid=True)
    assert len(clean) == len(df) - 2 and dropped["unknown_surface"] == dropped["bad_label"] == 1


def test_inconsistent_request_is_an_error():
    cfg = RankingConfig()
    imps = {"request_id": np.array(["r", "r"], object), "item_id": np.array([1, 2]),
            "timestamp": np.array([100, 200]), "surface": np.array(["homefeed"] * 2, object),
            "position": np.array([0, 1]),
            **{h: np.zeros(2, np.int64) for h in F.IMPRESSION_LABELS}}
    with pytest.raises(rg.RankingDataError, match="several timestamps"):
        list(rg.user_requests("u", None, imps, cfg))
    out = list(rg.user_requests("u", None, imps, cfg, drop_invalid=True))
    counters = [v for tag, v in out if tag == "counters"][0]
    assert counters["requests_dropped_inconsistent"] == 1
    assert not [v for tag, v in out if tag == "req"]


def test_impression_user_without_events_gets_empty_history_and_no_embedding():
    imps = {"request_id": np.array(["r"], object), "item_id": np.array([3]),
            "timestamp": np.array([_t(0, 9)]), "surface": np.array(["search"], object),
            "position": np.array([0]), **{h: np.array([int(h == "hide")]) for h in F.HEADS}}
    out = list(rg.user_requests("new", None, imps, RankingConfig()))
    (pf,) = [v for tag, v in out if tag == "pf"]
    (req,) = [v for tag, v in out if tag == "req"]
    (counters,) = [v for tag, v in out if tag == "counters"]
    assert pf[0] == req[0] == ("new", D0) and len(pf[1][F.HIST_TS]) == 0
    assert len(req[1]["hist"][F.HIST_ITEM]) == 0 and req[1]["labels"].tolist() == [[0, 0, 0, 1]]
    assert counters["impression_users_without_events"] == 1
    assert counters["users_without_pf_embedding"] == 1
    ex = rg.request_examples("new", req[1], np.zeros(4, np.float32), 0)[0]
    f = ex.features.feature
    assert f[F.HIST_ITEM].WhichOneof("kind") == "int64_list"  # empty, but typed
    assert f[F.HIST_ACTION].WhichOneof("kind") == "bytes_list"
    assert f[F.HIST_DURATION].WhichOneof("kind") == "float_list"


def test_component_wires_into_a_pipeline():
    from tfx.types import Channel, standard_artifacts

    from pinrank.components.types import EventLog

    node = rg.RankingExampleGen(
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
        events=Channel(type=EventLog),
        config_json=PipelineConfig().sections_json("ranking", "examples"))
    assert node.outputs["examples"].type == standard_artifacts.Examples
    assert set(node.inputs) >= {"model", "model_blessing", "events"}
    assert set(node.exec_properties) >= {"config_json"}


def test_request_id_shared_by_two_users_fails(tmp_path, model_uri):
    import apache_beam as beam
    d = str(tmp_path / "ds")
    _items(d)
    _write_events(d, EVENTS)
    rows = _impression_rows()
    rows.loc[rows["request_id"] == "r_d1", "request_id"] = "r_a3"  # dave's request named r_a3
    with ev.ImpressionShardWriter(d) as w:
        w.write(rows)
    with pytest.raises(Exception, match="shared by several users: 'r_a3'"):
        with beam.Pipeline() as p:
            rg.build_examples(p, d, os.path.join(model_uri, "Format-Serving"),
                              RankingConfig(), False, str(tmp_path / "out"))


def test_embed_dofn_batches_mixed_rows_and_probes_dim(model_uri):
    fn = rg.EmbedUserDays(os.path.join(model_uri, "Format-Serving"))
    fn.setup()
    assert fn._dim == 6  # static output shape of the toy
    empty = {k: np.zeros(0, np.int64) for k in (F.HIST_ITEM, F.HIST_TS)}
    empty.update({F.HIST_ACTION: np.zeros(0, object), F.HIST_SURFACE: np.zeros(0, object),
                  F.HIST_DURATION: np.zeros(0, np.float32)})
    hist = _events_before("alice", _t(3, 0))
    full = {F.HIST_ITEM: np.array(hist["item"]), F.HIST_TS: np.array(hist["ts"]),
            F.HIST_ACTION: np.array(hist["action"], object),
            F.HIST_SURFACE: np.array(hist["surface"], object),
            F.HIST_DURATION: np.array(hist["duration"], np.float32)}
    out = dict(fn.process([(("a", 1), empty), (("b", 2), full), (("c", 3), empty)]))
    assert out[("a", 1)][1] == out[("c", 3)][1] == 0 and out[("b", 2)][1] == 1
    assert not out[("a", 1)][0].any()
    np.testing.assert_allclose(out[("b", 2)][0], toy_embedding(hist), rtol=1e-5)
    fn._dim = None  # a model without a static D: learnt from a probe call
    (key, (emb, present)), = list(fn.process([(("a", 1), empty)]))
    assert emb.shape == (6,) and present == 0 and not emb.any()


def test_embed_dofn_feeds_a_fixed_width_signature_the_newest_actions(tmp_path):
    from pinrank.serving import testing as T
    path = T.save_toy_pinnerformer(str(tmp_path / "toy"), scale=1.0)  # embed_raw [B, 5]
    fn = rg.EmbedUserDays(path)
    fn.setup()
    assert fn._width == T.SEQ_LEN
    n = T.SEQ_LEN + 3
    h = {F.HIST_ITEM: np.arange(1, n + 1), F.HIST_TS: 1000 + np.arange(n),
         F.HIST_ACTION: np.array(["repin", "click"] * (n // 2), object),
         F.HIST_SURFACE: np.array(["homefeed"] * n, object),
         F.HIST_DURATION: np.arange(n, dtype=np.float32)}
    newest = {k: v[-T.SEQ_LEN:] for k, v in h.items()}
    (_, (a, _)), (_, (b, _)) = list(fn.process([(("u", 1), h), (("v", 1), newest)]))
    np.testing.assert_array_equal(a, b)
    x = rf.pad_histories([newest], T.SEQ_LEN)
    assert x[F.HIST_ITEM].shape == (1, T.SEQ_LEN) and x["hist_len"].tolist() == [T.SEQ_LEN]


# --------------------------------------------------------------------------------------------
# Reproducibility (docs/status.md, "Reproducibility")

def test_embed_batches_depend_on_the_data_only():
    """Buckets by sha256 (not the per-process salted hash()) and chunks sorted by (user, day):
    the same batches whatever order Beam delivers the rows in."""
    rows = [((f"u{u:03d}", d), {"n": u * 10 + d}) for u in range(40) for d in range(3)]
    assert rg.embed_buckets(0) == 1 and rg.embed_buckets(rg.EMBED_BATCH) == 1
    assert rg.embed_buckets(rg.EMBED_BATCH + 1) == 2
    assert rg.embed_bucket("u007", 5) == 4  # pinned: sha256("u007") mod 5
    rng = np.random.default_rng(0)
    want = list(rg.sorted_batches(rows, 7))
    for _ in range(3):
        shuffled = [rows[i] for i in rng.permutation(len(rows))]
        assert list(rg.sorted_batches(shuffled, 7)) == want
    assert [len(b) for b in want] == [7] * 17 + [1]
    assert [kv[0] for b in want for kv in b] == sorted(kv[0] for kv in rows)


def test_requests_of_a_user_day_come_out_sorted_and_serialized_deterministically():
    emb = np.zeros(3, np.float32)

    def req(rid, ts):
        return {"request_id": rid, "request_ts": ts, "surface": "homefeed",
                "cand_item": np.array([1, 2]), "labels": np.zeros((2, len(F.HEADS)), np.int64),
                "hist": {name: np.zeros(0, rf.HIST_DTYPES[name]) for name in rf.HIST_FEATURES}}

    reqs = [req("b", 20), req("a", 20), req("c", 10)]
    element = (("u", 0), {"pf": [(emb, 0)], "req": reqs})
    out = [x for x in rg._join_examples(element, cutoff=10 ** 9) if x[1] is not None]
    import tensorflow as tf
    parsed = [tf.train.Example.FromString(x[1]) for x in out]
    assert [p.features.feature[F.REQUEST_ID].bytes_list.value[0] for p in parsed] == [
        b"c", b"c", b"a", b"a", b"b", b"b"]
    assert all(x[1] == p.SerializeToString(deterministic=True) for x, p in zip(out, parsed))
    again = [x for x in rg._join_examples((("u", 0), {"pf": [(emb, 0)], "req": reqs[::-1]}),
                                          cutoff=10 ** 9) if x[1] is not None]
    assert again == out


def test_eval_sample_keeps_whole_hashed_requests_and_counts_the_rest(imp_run, model_uri, tmp_path):
    # sha256 puts r_b2 at 38.07 % and r_a3 at 57.71 % of the hash range: 50 % keeps r_b2 only.
    assert rg.in_eval_sample("r_b2", 50) and not rg.in_eval_sample("r_a3", 50)
    full_examples, full = imp_run
    d = make_impression_dataset(os.path.join(str(tmp_path), "ds"))
    examples = run_executor(str(tmp_path), d, model_uri, dict(RANK_CFG, eval_sample_percent=50))
    rows = {s: [decode(x) for x in read_split(examples.uri, s)] for s in rg.SPLITS}
    # Beam writes rows in no fixed order: compare them as sorted sets.
    assert _sorted(rows["train"]) == _sorted(full["train"])  # training data untouched
    assert _sorted(rows["eval"]) == _sorted(r for r in full["eval"] if r[F.REQUEST_ID][0] == "r_b2")
    stats, full_stats = rg.read_stats(examples.uri), rg.read_stats(full_examples.uri)
    assert stats["requests_eval"] == 1 and stats["requests_eval_sampled_out"] == 1
    assert stats["examples_eval"] == len(rows["eval"])
    assert (stats["examples_eval"] + stats["examples_eval_sampled_out"]
            == full_stats["examples_eval"])
    assert full_stats["requests_eval_sampled_out"] == 0
    # r_a3 is alone on its (user, day), so that day is not embedded at all.
    assert stats["pf_user_days_eval_sampled_out"] == 1
    assert full_stats["pf_user_days_eval_sampled_out"] == 0
    assert stats["pf_user_days"] == full_stats["pf_user_days"]
    assert (examples.get_int_custom_property("examples_eval_sampled_out")
            == len(full["eval"]) - len(rows["eval"]))


def test_sample_user_day_groups_and_skips():
    kept, out = "r_b2", "r_a3"  # in and out of a 50 % sample (see the test above)
    hist = {F.HIST_TS: np.array([1], np.int64)}

    def run(reqs, cutoff=100, percent=50):
        return list(rg.sample_user_day((("u", 0), (hist, reqs)), cutoff, percent))
    assert run([(99, out), (100, out)]) == [(0, (("u", 0), hist))]  # a train request: group 0
    assert run([(100, out), (150, kept)]) == [(1, (("u", 0), hist))]  # eval only, one kept
    (skipped,) = run([(100, out), (120, out)])
    assert skipped.tag == "counters" and skipped.value == {"pf_user_days_eval_sampled_out": 1}
    assert run([(100, out)], percent=100) == [(1, (("u", 0), hist))]


def test_eval_sample_fraction_and_bounds():
    ids = [f"u{i}@{i * 7}" for i in range(20000)]
    kept = sum(rg.in_eval_sample(r, 10) for r in ids) / len(ids)
    assert abs(kept - 0.10) < 0.01  # binomial sd 0.002
    assert all(rg.in_eval_sample(r, 100) for r in ids[:100])
    # a smaller percent keeps a subset of a larger one's requests
    assert all(rg.in_eval_sample(r, 20) for r in ids if rg.in_eval_sample(r, 10))
    with pytest.raises(ValueError, match="eval_sample_percent"):
        RankingConfig(eval_sample_percent=0)
