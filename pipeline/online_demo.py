"""`pinrank online-demo` (the end of `make demo`): one request through the online path on the
models the pipeline just pushed.

1. The local TF-Serving stand-in serves the run's serving dir (both models) on a free port.
2. `ingest`: the dataset's events before T replay into the action store (`online.store`),
   T = one second after the last event (so every action is history).
3. `embed-users`: the daily job runs at the start of T's day and loads its snapshot into the
   store (the ranker's "previous day" PinnerFormer embedding).
4. The recommendation service answers one user at T; the top k are printed with titles.

Re-running is harmless: ingestion is idempotent on event ids (counted "duplicate") and the
day's snapshot is rebuilt.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

from pinrank.pipeline.config import PipelineConfig
from pinrank.pipeline.runs import RunPaths, dataset_dir


def run(cfg: PipelineConfig, home: str, user: Optional[str] = None, k: int = 10,
        log=print) -> Dict[str, Any]:
    from pinrank.components.data import events as ev
    from pinrank.components.data import ranking_features as rf
    from pinrank.serving import batch_embeddings as B
    from pinrank.serving import constants as C
    from pinrank.serving import local_server as LS
    from pinrank.serving.action_store import open_store
    from pinrank.serving.client import ServingClient
    from pinrank.serving.ingest import ingest_dataset
    from pinrank.serving.service import ColdStart, Recommender

    paths = RunPaths.for_config(cfg, home)
    data_dir = dataset_dir(paths) or ""
    manifest = ev.read_dataset_manifest(data_dir) if data_dir else None
    if manifest is None or not os.path.isdir(os.path.join(paths.serving_dir, C.PINNERFORMER)):
        raise FileNotFoundError(f"{paths.serving_dir}: no pushed {C.PINNERFORMER} (run "
                                f"`pinrank run` with the same preset/--set first)")
    t_end = int(manifest["time_range"][1]) + 1
    h = LS.serve(model_base_path=paths.serving_dir, port=0, file_system_poll_wait_seconds=0)
    out: Dict[str, Any] = {"request_ts": t_end}
    try:
        with open_store(cfg.online.store) as store, \
                ServingClient(h.target, timeout_s=30) as client:
            t = time.perf_counter()
            out["ingest"] = counts = ingest_dataset(data_dir, store, until=t_end)
            log(f"online: ingested {data_dir} into {store!r} ({counts}, "
                f"{time.perf_counter() - t:.1f} s)")
            t = time.perf_counter()
            day = rf.day_start(t_end)
            snap = B.run_daily_embeddings(paths.serving_dir, data_dir,
                                          os.path.join(os.path.dirname(paths.serving_dir),
                                                       "online", "snapshots"), day,
                                          overwrite=True)
            out["snapshot_users"] = B.load_snapshot_into_store(snap, store)
            log(f"online: snapshot as of {day} ({out['snapshot_users']} users) loaded "
                f"({time.perf_counter() - t:.1f} s)")
            client.wait_until_available(C.PINNERFORMER, timeout_s=60)
            rec = Recommender(client, store, cfg, titles=ev.read_titles(data_dir),
                              cold_start=ColdStart.from_dataset(
                                  data_dir, cfg.online.cold_start_window_days))
            user = user or _first_user(data_dir)
            result = rec.recommend(user, request_ts=t_end, k=k)
            out["recommendations"] = result.to_dict()
    finally:
        h.stop(grace=None)
    return out


def _first_user(data_dir: str) -> str:
    """The smallest user id of the first event shard ("1" on MovieLens)."""
    from pinrank.components.data import events as ev

    df = ev.read_event_shard(ev.event_shards(data_dir)[0])
    ids = sorted(df["user_id"].unique(), key=lambda u: (len(u), u))
    return str(ids[0])
