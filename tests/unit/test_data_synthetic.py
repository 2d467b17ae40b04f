"""Synthetic world: determinism, streaming shards, agreement with its own ground truth, and its
temporal dynamics (releases, rising and decaying popularity, drifting interests)."""
import dataclasses
import glob
import hashlib
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pinrank.components.data import events as E
from pinrank.components.data import sources, synthetic
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DAY_S, DataConfig

CFG = DataConfig(source="synthetic", num_users=120, num_items=400, num_interests=8,
                 events_per_user=40, content_dim=8, seed=3)
SHARD_ROWS = 1000


def _read_all(paths, reader):
    return pd.concat([reader(p) for p in paths], ignore_index=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("syn"))
    summary = synthetic.generate(d, CFG, shard_rows=SHARD_ROWS)
    ev = _read_all(E.event_shards(d), E.read_event_shard)
    imps = _read_all(E.impression_shards(d), E.read_impression_shard)
    users = pq.read_table(os.path.join(d, "ground_truth", "users.parquet")).to_pandas()
    ids, emb, interests = E.item_arrays(d)
    return dict(dir=d, summary=summary, ev=ev, imps=imps, users=users, item_ids=ids, emb=emb,
                interests=interests)


def test_streams_several_full_shards(world):
    shards = E.event_shards(world["dir"])
    rows = [pq.read_metadata(p).num_rows for p in shards]
    assert len(shards) >= 3
    assert all(r == SHARD_ROWS for r in rows[:-1]) and 0 < rows[-1] <= SHARD_ROWS
    assert world["summary"]["counts"]["event_shards"] == len(shards)
    assert len(E.impression_shards(world["dir"])) >= 2


def test_events_are_valid_and_match_the_manifest(world):
    ev, summary = world["ev"], world["summary"]
    for _, df, counts in E.iter_events(world["dir"]):  # raises on any invalid row
        assert not any(counts.values())
    c = E.read_dataset_manifest(world["dir"])["counts"]
    assert c == summary["counts"]
    assert c["events"] == len(ev)
    assert c["positives"] == int(E.is_positive(ev["action"], ev["duration"]).sum())
    assert c["actions"] == {a: int((ev["action"] == a).sum()) for a in F.ACTIONS}
    assert ev["user_id"].str.fullmatch(r"u\d{6}").all()
    assert world["item_ids"].tolist() == list(range(1, CFG.num_items + 1))
    assert E.read_interest_names(world["dir"])[:2] == ["home_decor", "recipes"]


def test_size_and_time_shape(world):
    ev = world["ev"]
    per_user = ev.groupby("user_id").size()
    assert per_user.index.nunique() == CFG.num_users
    assert 0.75 * CFG.events_per_user < per_user.mean() < 1.25 * CFG.events_per_user
    assert per_user.std() > 0.3 * per_user.mean()  # heterogeneous activity
    t0 = synthetic.START_TS
    assert ev["timestamp"].min() >= t0
    assert ev["timestamp"].max() <= t0 + (synthetic.horizon_days(CFG) + 1) * DAY_S
    # Sessions (requests) are >= 30 min apart; engagements within a session seconds to minutes.
    req = world["imps"].groupby("request_id").agg(user=("user_id", "first"),
                                                  ts=("timestamp", "first"))
    gaps = req.sort_values(["user", "ts"]).groupby("user")["ts"].diff().dropna()
    assert gaps.min() >= synthetic.MIN_GAP_S
    assert 3600 < gaps.median() < 10 * DAY_S
    surfaces = ev["surface"].value_counts()
    assert surfaces.index[0] == "homefeed" and set(surfaces.index) <= set(F.SURFACES)
    pos = E.is_positive(ev["action"], ev["duration"])
    assert 0.2 < pos.mean() < 0.9
    clicks = ev[ev["action"] == "click"]["duration"]
    assert ((clicks >= 10).mean() > 0.1) and ((clicks < 10).mean() > 0.1)


def test_events_are_the_labelled_impressions(world):
    ev, imps = world["ev"], world["imps"]
    for a in F.IMPRESSION_LABELS:
        assert int(imps[a].sum()) == int((ev["action"] == a).sum())
    assert (imps.loc[imps["hide"] == 1, ["repin", "click", "closeup"]].to_numpy() == 0).all()
    # Every event belongs to a shown candidate with that label, at or after the request.
    long = imps.melt(id_vars=["user_id", "item_id", "timestamp"], value_vars=list(F.ACTIONS),
                     var_name="action", value_name="label")
    long = long[long["label"] == 1]
    m = ev.merge(long, on=["user_id", "item_id", "action"], suffixes=("", "_req"))
    ok = m[m["timestamp"] >= m["timestamp_req"]].drop_duplicates(
        ["user_id", "item_id", "action", "timestamp"])
    assert len(ok) == len(ev.drop_duplicates(["user_id", "item_id", "action", "timestamp"]))
    slate = imps.groupby("request_id")
    assert (slate["item_id"].nunique() == slate.size()).all()  # no repeated item in a slate
    assert (slate["position"].max() + 1 == slate.size()).all()


def _support_hits(world, ev):
    """Per event: does the item share an interest with the user's long-term mixture?"""
    mix = np.stack(world["users"]["mixture"].to_numpy())
    user_row = pd.Index(world["users"]["user_id"]).get_indexer(ev["user_id"])
    item_row = ev["item_id"].to_numpy() - 1
    ints = world["interests"][item_row]
    w = np.where(ints >= 0, mix[user_row[:, None], np.maximum(ints, 0)], 0.0)
    return (w > 0).any(axis=1), w.max(axis=1) / mix[user_row].max(axis=1)


def test_engagement_follows_ground_truth_interests(world):
    ev = world["ev"]
    mix = np.stack(world["users"]["mixture"].to_numpy())
    np.testing.assert_allclose(mix.sum(axis=1), 1.0, atol=1e-5)
    assert ((mix > 0).sum(axis=1) <= 1 + 8).all() and np.median((mix > 0).sum(axis=1)) <= 4
    pos = E.is_positive(ev["action"], ev["duration"])
    hit, rel = _support_hits(world, ev)
    # Chance level: a popularity-weighted random item shares an interest with the mixture.
    pop = pq.read_table(os.path.join(world["dir"], "ground_truth", "items.parquet")) \
        .column("popularity").to_numpy()
    ints = world["interests"]
    in_support = (mix[:, np.maximum(ints, 0)] > 0) & (ints >= 0)[None]  # [U, N, K]
    chance = (in_support.any(axis=2) * pop[None]).sum(axis=1).mean()
    assert hit[pos].mean() > 0.75
    assert hit[pos].mean() > chance + 0.25
    # Short-term drift: some positives fall outside the long-term mixture.
    assert hit[pos].mean() < 0.99
    # Hides land on items the user cares less about than repins do.
    is_hide = (ev["action"] == "hide").to_numpy()
    is_repin = (ev["action"] == "repin").to_numpy()
    assert rel[is_hide].mean() + 0.3 < rel[is_repin].mean()


def test_content_embeddings_cluster_by_interest(world):
    emb, primary = world["emb"], world["interests"][:, 0]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    same = primary[:, None] == primary[None, :]
    np.fill_diagonal(same, False)
    diff = primary[:, None] != primary[None, :]
    assert sim[same].mean() > sim[diff].mean() + 0.4


def test_deterministic_per_seed(world, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    synthetic.generate(a, CFG, with_impressions=False, shard_rows=SHARD_ROWS)
    pd.testing.assert_frame_equal(_read_all(E.event_shards(a), E.read_event_shard), world["ev"])
    pd.testing.assert_frame_equal(E.read_items(a), E.read_items(world["dir"]))
    assert not os.path.exists(os.path.join(a, "impressions"))
    synthetic.generate(b, dataclasses.replace(CFG, seed=4), with_impressions=False)
    other = _read_all(E.event_shards(b), E.read_event_shard)
    assert len(other) != len(world["ev"]) or not other.equals(world["ev"])


def test_rejects_impossible_worlds(tmp_path):
    with pytest.raises(ValueError, match="num_items"):
        synthetic.generate(str(tmp_path), dataclasses.replace(CFG, num_items=4))
    with pytest.raises(ValueError, match="release_fraction_at_start"):
        synthetic.generate(str(tmp_path), dataclasses.replace(CFG, release_fraction_at_start=1.5))
    with pytest.raises(ValueError, match="popularity_half_life_days"):
        synthetic.generate(str(tmp_path), dataclasses.replace(CFG, popularity_half_life_days=0.0))


def test_cli_prints_progress(tmp_path, capsys):
    out = str(tmp_path / "cli")
    rc = synthetic.main(["--out", out, "--num-users", "30", "--num-items", "50",
                         "--num-interests", "4", "--events-per-user", "10", "--content-dim", "4",
                         "--seed", "1", "--shard-rows", "100", "--no-impressions",
                         "--horizon-days", "60"])
    err = capsys.readouterr().err
    assert rc == 0 and "events/s" in err and "users 30/30" in err
    manifest = E.read_dataset_manifest(out)
    assert manifest["counts"]["users"] == 30 and manifest["world"]["horizon_days"] == 60
    assert synthetic.main(["--out", out, "--num-users", "5", "--static", "--no-impressions"]) == 0
    manifest = E.read_dataset_manifest(out)
    assert not manifest["config"]["temporal_dynamics"] and manifest["world"]["horizon_days"] == 120


def test_prepare_dataset_is_idempotent(tmp_path, monkeypatch):
    out = str(tmp_path / "ds")
    cfg = dataclasses.replace(CFG, num_users=20, events_per_user=10)
    assert sources.prepare_dataset(cfg, out) == out
    first = E.read_dataset_manifest(out)
    assert first["fingerprint"] == sources.dataset_fingerprint(cfg)

    def boom(*a, **k):
        raise AssertionError("regenerated a dataset with a matching fingerprint")

    monkeypatch.setattr(synthetic, "generate", boom)
    sources.prepare_dataset(cfg, out)
    monkeypatch.undo()
    changed = dataclasses.replace(cfg, seed=cfg.seed + 1)
    sources.prepare_dataset(changed, out)
    assert E.read_dataset_manifest(out)["fingerprint"] == sources.dataset_fingerprint(changed)
    assert E.read_dataset_manifest(out)["fingerprint"] != first["fingerprint"]
    with pytest.raises(ValueError, match="unknown data.source"):
        sources.prepare_dataset(dataclasses.replace(cfg, source="kafka"), out)


# ---- Temporal dynamics --------------------------------------------------------------------------

def _gt_items(d):
    return pq.read_table(os.path.join(d, "ground_truth", "items.parquet")).to_pandas()


def test_no_engagement_or_impression_before_release(world):
    gt = _gt_items(world["dir"]).set_index("item_id")
    release = gt["release_ts"]
    t0, horizon = synthetic.START_TS, synthetic.horizon_days(CFG) * DAY_S
    assert ((release > t0).mean() > 0.6) and (release < t0 + horizon).all()
    assert (release <= t0).sum() >= CFG.num_interests  # a starting catalogue in every interest
    for df in (world["ev"], world["imps"]):
        assert (df["timestamp"].to_numpy() >= release.loc[df["item_id"]].to_numpy()).all()
    # Not vacuous: most engagements are with items released during the world.
    assert (release.loc[world["ev"]["item_id"]].to_numpy() > t0).mean() > 0.5


def test_lifecycle_rises_then_decays():
    age = np.array([0.0, 1.0, 7.0, 30.0, 120.0, 365.0])
    life = synthetic.lifecycle(age, np.full(6, 30.0))
    assert life[0] == 0.0 and life[1] < life[2] and np.argmax(life) == 2
    assert life[4] < 0.1 * life[2] and life[5] < 0.01
    evergreen = synthetic.lifecycle(age, np.full(6, 30.0 * synthetic.EVERGREEN_FACTOR))
    assert evergreen[5] > 0.3


DYN = DataConfig(source="synthetic", num_users=300, num_items=600, num_interests=8,
                 events_per_user=100, content_dim=4, seed=7)


def _positives(d):
    ev = _read_all(E.event_shards(d), E.read_event_shard)
    return ev[E.is_positive(ev["action"], ev["duration"])]


@pytest.fixture(scope="module")
def dynamics(tmp_path_factory):
    """The same small world with default dynamics, without interest drift, and static."""
    out = {}
    for name, cfg in (("default", DYN), ("no_drift", dataclasses.replace(
            DYN, interest_drift_per_session=0.0)), ("static", dataclasses.replace(
            DYN, temporal_dynamics=False))):
        d = str(tmp_path_factory.mktemp(f"dyn_{name}"))
        synthetic.generate(d, cfg, with_impressions=False)
        users = pq.read_table(os.path.join(d, "ground_truth", "users.parquet")).to_pandas()
        out[name] = dict(dir=d, cfg=cfg, pos=_positives(d), users=users,
                         interests=E.item_arrays(d)[2])
    return out


def _top_items(pos, cfg, lo, hi, k=50):
    day = (pos["timestamp"] - synthetic.START_TS) / DAY_S
    h = synthetic.horizon_days(cfg)
    sel = pos[(day >= lo * h) & (day < hi * h)]
    return set(sel["item_id"].value_counts().index[:k])


def test_popularity_as_of_time_differs_from_all_time(dynamics):
    """What is hot in the last 10 % of the horizon is not what was hot in the first 30 %."""
    overlap = {name: len(_top_items(w["pos"], w["cfg"], 0.0, 0.3)
                         & _top_items(w["pos"], w["cfg"], 0.9, 1.0))
               for name, w in dynamics.items()}
    assert overlap["default"] <= 15, overlap
    assert overlap["static"] >= 20, overlap


def test_users_are_active_in_periods_across_the_horizon(dynamics):
    w = dynamics["default"]
    g = w["pos"].groupby("user_id")["timestamp"]
    span_days = (g.max() - g.min()) / DAY_S
    first_day = (g.min() - synthetic.START_TS) / DAY_S
    h = synthetic.horizon_days(DYN)
    assert h == 730
    assert 20 < span_days.median() < 0.25 * h
    assert (first_day < 0.25 * h).mean() > 0.1 and (first_day > 0.5 * h).mean() > 0.3


def _thirds_distance(w, min_positives=45):
    """Mean total-variation distance between the engaged-interest distributions of the first and
    the last third of each long user's positives."""
    pos = w["pos"].sort_values(["user_id", "timestamp"], kind="stable")
    primary = w["interests"][pos["item_id"].to_numpy() - 1, 0]
    K = w["cfg"].num_interests
    dist = []
    for idx in pos.groupby("user_id").indices.values():
        if len(idx) < min_positives:
            continue
        n = len(idx) // 3
        first = np.bincount(primary[idx[:n]], minlength=K) / n
        last = np.bincount(primary[idx[-n:]], minlength=K) / n
        dist.append(0.5 * np.abs(first - last).sum())
    assert len(dist) > 50
    return float(np.mean(dist))


def test_interests_drift(dynamics):
    drift, still = dynamics["default"], dynamics["no_drift"]
    assert _thirds_distance(drift) > _thirds_distance(still) + 0.07
    # Ground truth records the mixture at the start and at the end.
    for w, moved in ((drift, True), (still, False)):
        start = np.stack(w["users"]["mixture"].to_numpy())
        end = np.stack(w["users"]["mixture_end"].to_numpy())
        np.testing.assert_allclose(end.sum(axis=1), 1.0, atol=1e-5)
        changed = np.abs(start - end).sum(axis=1) > 1e-6
        assert (0.15 < changed.mean() < 0.9) if moved else not changed.any()


def _content_hash(d):
    """sha256 of a dataset's contents (not of its parquet bytes, which depend on the writer)."""
    h = hashlib.sha256()

    def table(paths, columns=None):
        return pa.concat_tables([pq.read_table(p, columns=columns) for p in paths])

    tables = [
        table(sorted(glob.glob(os.path.join(d, "events", "*.parquet")))),
        table(sorted(glob.glob(os.path.join(d, "impressions", "*.parquet")))),
        table([os.path.join(d, "items.parquet")]),
        # The ground-truth columns WORLD_VERSION 1 wrote (later versions add columns).
        table([os.path.join(d, "ground_truth", "users.parquet")], ["user_id", "mixture"]),
        table([os.path.join(d, "ground_truth", "items.parquet")],
              ["item_id", "popularity", "quality"]),
    ]
    for t in tables:
        for name in t.column_names:
            col = t.column(name).combine_chunks()
            h.update(name.encode())
            if pa.types.is_list(col.type):
                h.update(pc.list_value_length(col).to_numpy().astype(np.int64).tobytes())
                col = pc.list_flatten(col)
            if pa.types.is_string(col.type):
                h.update("\0".join(col.to_pylist()).encode())
            else:
                h.update(col.to_numpy().tobytes())
    with open(os.path.join(d, "interests.json"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def test_static_world_reproduces_world_version_1(tmp_path):
    # Pins WORLD_VERSION 1's static world: this hash was computed with the code of
    # WORLD_VERSION 1 (before temporal dynamics existed) on this config; temporal_dynamics=false
    # must keep reproducing it exactly.
    cfg = DataConfig(source="synthetic", num_users=50, num_items=300, num_interests=8,
                     events_per_user=40, content_dim=8, seed=5, temporal_dynamics=False)
    synthetic.generate(str(tmp_path), cfg, shard_rows=500)
    assert len(E.event_shards(str(tmp_path))) > 1
    assert _content_hash(str(tmp_path)) == (
        "e9328a456854a5be6ff9501a5f053d46c10a03deda92c0eaf0879cf5c38bd6cf")
