"""Training/serving parity of the ranker's inputs on MovieLens-100K (issue: the online path).

Offline: RankingExampleGen's Beam graph builds the ranking examples of a sample of MovieLens
users (a dataset holding only their events and the full catalogue, so their requests and
negatives are the ones the full run derives). Online: the same events are replayed into the
action store in time order up to each request, the daily user-embedding job runs at the start
of each request day and loads its snapshot into the store, and the recommendation service
builds the request's features. Both sides use one PinnerFormer SavedModel (the serving test
model, whose embed_raw is a fixed function of the history).

Every feature of every sampled request must be equal, exactly, but one: the PinnerFormer
embedding is computed by two jobs (RankingExampleGen, the daily snapshot job) that batch users
differently, and a model's output for a row changes with its batch neighbours at the float
rounding level (docs/status.md, "Reproducibility"), so it agrees to 1e-6 relative. The candidate
lists given to the `rank` signature must be equal too.
"""
import os

import numpy as np
import pandas as pd
import pytest

from pinrank.components.data import events as ev
from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.pipeline.config import preset

USERS = 30  # sampled users (every k-th of the sorted ids)
DAYS = 8  # request days replayed with a snapshot (the busiest of the sample)


@pytest.fixture(scope="module")
def movielens_sample(tmp_path_factory):
    from pinrank.components.data import movielens

    root = tmp_path_factory.mktemp("parity")
    full = str(root / "full")
    movielens.convert_movielens_100k(movielens.fetch_movielens_100k(), full)
    events = pd.concat([ev.read_event_shard(p) for p in ev.event_shards(full)],
                       ignore_index=True)
    users = np.sort(events["user_id"].unique())
    sample = users[:: len(users) // USERS][:USERS]
    mine = events[events["user_id"].isin(sample)].reset_index(drop=True)
    ds = str(root / "sample")
    ids, emb, interests = ev.item_arrays(full)
    ev.write_items(ds, ids, emb, [[int(x) for x in row if x >= 0] for row in interests],
                   ev.read_interest_names(full))
    with ev.EventShardWriter(ds, shard_rows=5000) as w:
        w.write(mine)
    ev.write_dataset_manifest(ds, {"source": "movielens sample", "users": len(sample)})
    return root, ds, mine


@pytest.fixture(scope="module")
def offline(movielens_sample):
    """request_id -> (request features, candidate ids) from RankingExampleGen's Beam graph."""
    import apache_beam as beam
    import tensorflow as tf

    from pinrank.components import ranking_example_gen as rg
    from pinrank.serving import testing as T

    root, ds, _ = movielens_sample
    model = T.save_toy_pinnerformer(str(root / "pf"), scale=1.0)
    cfg = preset("cpu", "movielens").ranking
    out = str(root / "examples")
    with beam.Pipeline() as p:
        rg.build_examples(p, ds, model, cfg, False, out)
    requests = {}
    for split in rg.SPLITS:
        files = tf.io.gfile.glob(os.path.join(out, f"Split-{split}", "*"))
        for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            feats = _decode(rec.numpy())
            rid = feats[F.REQUEST_ID][0]
            cand = int(feats.pop(F.CAND_ITEM)[0])
            for h in F.HEADS:
                feats.pop(F.label_key(h))
            if rid not in requests:
                requests[rid] = (feats, [])
            assert _equal(requests[rid][0], feats), rid  # request features repeat per candidate
            requests[rid][1].append(cand)
    return model, requests


def _decode(serialized: bytes):
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    out = {}
    for key, f in ex.features.feature.items():
        kind = f.WhichOneof("kind")
        values = list(getattr(f, kind).value)
        if kind == "bytes_list":
            out[key] = np.array([v.decode() for v in values], object)
        elif kind == "float_list":
            out[key] = np.array(values, np.float32)
        else:
            out[key] = np.array(values, np.int64)
    return out


def _equal(a, b) -> bool:
    return set(a) == set(b) and all(
        a[k].dtype.kind == b[k].dtype.kind and a[k].shape == b[k].shape
        and np.array_equal(a[k], b[k]) for k in a)


def _online_features(store_url, tmp, movielens_sample, offline):
    from pinrank.serving import batch_embeddings as B
    from pinrank.serving.action_store import open_store
    from pinrank.serving.service import Recommender, rank_inputs

    _, ds, events = movielens_sample
    model, requests = offline
    cfg = preset("cpu", "movielens")
    reqs = sorted(((int(f[F.REQUEST_TS][0]), rid) for rid, (f, _) in requests.items()))
    per_day = pd.Series([rf.day_start(ts) for ts, _ in reqs]).value_counts()
    days = sorted(per_day.index[:DAYS].tolist())
    chosen = [(ts, rid) for ts, rid in reqs if rf.day_start(ts) in days]
    events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    ts_col = events["timestamp"].to_numpy(np.int64)
    checked, sent = [], 0
    with open_store(store_url) as store:
        rec = Recommender(None, store, cfg, titles={}, cold_start=None)
        snap_days = set()
        for ts, rid in chosen:
            # Replay what happened before the request: its session's own actions (at
            # request_ts and later) are its outcome, not yet known when it is served.
            upto = int(np.searchsorted(ts_col, ts, side="left"))
            if upto > sent:
                store.append(events.iloc[sent:upto])
                sent = upto
            day = rf.day_start(ts)
            if day not in snap_days:  # the daily job of the request's day, then its snapshot
                path = B.run_daily_embeddings(model, ds, os.path.join(tmp, "snapshots"), day)
                B.load_snapshot_into_store(path, store)
                snap_days.add(day)
            want, cands = requests[rid]
            user, surface = want[F.USER_ID][0], want[F.SURFACE][0]
            got = rec.request_features(user, ts, surface, rec.history(user, ts),
                                       store.snapshot_for_request(user, ts),
                                       pf_dim=len(want[F.PF_EMBEDDING]))
            checked.append((rid, want, got, cands, rank_inputs(got, np.array(cands))))
    return checked


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_online_request_features_equal_the_training_examples(backend, request, tmp_path,
                                                             movielens_sample, offline):
    url = (f"sqlite:///{tmp_path}/actions.db" if backend == "sqlite"
           else request.getfixturevalue("redis_url"))  # a real redis-server (tests/unit/conftest.py)
    checked = _online_features(url, str(tmp_path), movielens_sample, offline)
    assert len(checked) >= 15
    assert {int(w[F.PF_PRESENT][0]) for _, w, _, _, _ in checked} >= {1}
    for rid, want, got, cands, inputs in checked:
        assert set(got) == set(want), rid
        for key in want:
            assert got[key].dtype.kind == want[key].dtype.kind, (rid, key)
            if key == F.PF_EMBEDDING:  # same model, same actions, other batch neighbours
                np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7)
                continue
            assert np.array_equal(got[key], want[key]), (rid, key, got[key][:5], want[key][:5])
        assert inputs[F.CAND_ITEM].tolist() == cands
        n = int(inputs["hist_len"][0])
        assert n == len(want[F.HIST_ITEM])
        assert inputs[F.HIST_ITEM][0, :n].tolist() == want[F.HIST_ITEM].tolist()
