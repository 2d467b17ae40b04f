"""data.suppressed_users: the listed users' rows are removed at data preparation for every
source, counted in DATASET.json, and the list's hash is part of the dataset fingerprint. Checked
against a pandas reference: the unsuppressed dataset filtered with `isin`."""
import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from pinrank.components.data import events as E
from pinrank.components.data import sources
from pinrank.pipeline import features as F
from pinrank.pipeline.config import DataConfig

CFG = DataConfig(source="synthetic", num_users=40, num_items=120, num_interests=6,
                 events_per_user=15, content_dim=4, seed=7)


def _frame(paths, reader):
    if not paths:
        return pd.DataFrame()
    df = pd.concat([reader(p) for p in paths], ignore_index=True)
    return df.sort_values(list(df.columns[:4])).reset_index(drop=True)


def _events(d):
    return _frame(E.event_shards(d), E.read_event_shard)


def _impressions(d):
    return _frame(E.impression_shards(d), E.read_impression_shard)


def _write_list(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return sources.prepare_dataset(CFG, str(tmp_path_factory.mktemp("full")))


def test_synthetic_rows_of_listed_users_are_removed_and_counted(full, tmp_path):
    ev_full, imp_full = _events(full), _impressions(full)
    users = sorted(ev_full.user_id.unique())
    chosen = [users[0], users[7], users[19]]
    listed = _write_list(tmp_path / "suppressed.txt",
                         ["# deletion requests", f"  {chosen[0]}  ", "", chosen[1], chosen[2],
                          "never-a-user"])
    cfg = dataclasses.replace(CFG, suppressed_users=listed)
    out = sources.prepare_dataset(cfg, str(tmp_path / "out"))

    want_ev = ev_full[~ev_full.user_id.isin(chosen)].reset_index(drop=True)
    want_imp = imp_full[~imp_full.user_id.isin(chosen)].reset_index(drop=True)
    pd.testing.assert_frame_equal(_events(out), want_ev)
    pd.testing.assert_frame_equal(_impressions(out), want_imp)
    assert len(imp_full) > len(want_imp) > 0
    truth = pd.read_parquet(os.path.join(out, "ground_truth", "users.parquet"))
    assert not truth.user_id.isin(chosen).any() and len(truth) == len(users) - 3

    counts = E.read_dataset_manifest(out)["counts"]
    gone = ev_full[ev_full.user_id.isin(chosen)]
    assert counts["suppressed"] == {"users": 3, "events": len(gone),
                                    "impressions": len(imp_full) - len(want_imp)}
    before = E.read_dataset_manifest(full)["counts"]
    assert counts["events"] == before["events"] - len(gone) == len(want_ev)
    assert counts["users"] == before["users"] - 3
    assert counts["actions"] == {a: int((want_ev.action == a).sum()) for a in F.ACTIONS}
    assert counts["positives"] == int(E.is_positive(want_ev.action.to_numpy(object),
                                                    want_ev.duration.to_numpy(np.float64)).sum())


def test_the_list_is_part_of_the_fingerprint_and_a_change_rebuilds(full, tmp_path):
    users = sorted(_events(full).user_id.unique())
    listed = _write_list(tmp_path / "s.txt", [users[1]])
    cfg = dataclasses.replace(CFG, suppressed_users=listed)
    fp_none = sources.dataset_fingerprint(CFG)
    fp_one = sources.dataset_fingerprint(cfg)
    assert fp_one != fp_none
    assert sources.dataset_fingerprint(dataclasses.replace(CFG, suppressed_users="")) == fp_none
    out = sources.prepare_dataset(cfg, str(tmp_path / "out"))
    shard = E.event_shards(out)[0]
    mtime = os.stat(shard).st_mtime_ns
    sources.prepare_dataset(cfg, out)  # same list: reused, not rewritten
    assert os.stat(shard).st_mtime_ns == mtime
    _write_list(listed, [users[1], users[2]])  # a deletion request added: rebuilt
    assert sources.dataset_fingerprint(cfg) not in (fp_one, fp_none)
    sources.prepare_dataset(cfg, out)
    manifest = E.read_dataset_manifest(out)
    assert manifest["fingerprint"] == sources.dataset_fingerprint(cfg)
    assert manifest["counts"]["suppressed"]["users"] == 2
    assert not _events(out).user_id.isin(users[1:3]).any()


def test_path_source_is_suppressed_too(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Animation\n2,Heat (1995),Action\n"
        "5,Nosferatu (1922),Horror\n")
    (tmp_path / "in" / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,5.0,964982703\n1,2,4.5,964981247\n"
        "1,5,4.0,964982224\n2,1,3.5,964983815\n2,5,3.0,964982931\n2,2,2.5,964982400\n"
        "3,5,2.0,964980868\n3,1,0.5,964982176\n")
    listed = _write_list(tmp_path / "s.txt", ["2"])
    cfg = DataConfig(source="path", path=str(tmp_path / "in"), suppressed_users=listed)
    out = sources.prepare_dataset(cfg, str(tmp_path / "out"))
    ev = _events(out)
    assert sorted(ev.user_id.unique()) == ["1", "3"] and len(ev) == 5  # user 2 had 3 ratings
    counts = E.read_dataset_manifest(out)["counts"]
    assert counts["suppressed"] == {"users": 1, "events": 3, "impressions": 0}
    assert counts["events"] == 5 and counts["users"] == 2


def test_bad_list_is_one_line_naming_the_setting(tmp_path):
    cfg = dataclasses.replace(CFG, suppressed_users=str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match=r"^data.suppressed_users=.*missing.txt: not found$"):
        sources.prepare_dataset(cfg, str(tmp_path / "out"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(E.DatasetFormatError, match="data.suppressed_users=.*not a UTF-8 text"):
        sources.dataset_fingerprint(dataclasses.replace(CFG, suppressed_users=str(binary)))


def test_user_attribute_table_is_suppressed(full, tmp_path):
    """users.parquet (ML-100K's gender and age group) loses the listed users' rows too."""
    import shutil

    d = str(tmp_path / "copy")
    shutil.copytree(full, d)
    users = sorted(_events(d).user_id.unique())
    E.write_users(d, users, {"gender": ["F" if i % 2 else "M" for i in range(len(users))]})
    gone = E.drop_users(d, [users[3], "nobody"])
    assert gone["users"] == 1
    table = pd.read_parquet(os.path.join(d, E.USERS_FILE))
    assert table.user_id.tolist() == [u for u in users if u != users[3]]
    assert table.gender.tolist() == ["F" if i % 2 else "M" for i in range(len(users)) if i != 3]
