"""The recommendation service under bounded loopback load, by stage, as ratios to the ranker.

  python benchmarks/serving_recs.py [--serving-dir runs/pinrank/<data>/serving] [--store URL]

Set-up (on the newest pushed models, as `pinrank online-demo` does): the local TF-Serving
stand-in serves both models; the dataset's events replay into an action store (a fresh SQLite
file, or --store, e.g. a local redis-server); the daily job writes the snapshot of the last
day. Then `serve-recs` (serving/recs_http.py) answers GET /v1/recommendations/{user} with
online.num_candidates = --candidates (500) retrieved and ranked, for the most active users in
turn:
  sequential   one request in flight: p50/p99 latency and requests/s
  xC           C client threads, each closed-loop: requests/s, p50/p99
The sequential requests alternate with in-process calls of the ranker's `rank` signature on the
same requests (the SavedModel loaded here, inputs pre-built: the model's own cost, nothing
else), so both see the same background load; every figure is a ratio to that in-process p50.
Per stage (the response's timings_ms: store, snapshot, retrieve, rank, total) the median of
the sequential requests is printed. The goal
of the issue: end-to-end p99 <= 1.5x the ranker's in-process time, warm.

Not a timed test: bounded iteration counts, one run, prints a table. On a 2-core machine the
client threads, the HTTP server, the gRPC server and the models share the cores.
"""
from __future__ import annotations

import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import concurrent.futures
import glob
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.serving_latency import dataset_for, newest_serving_dir, stats
from pinrank.serving import constants as C

STAGES = ("store", "snapshot", "retrieve", "rank", "total")


def newest_trained_ranker(serving_dir: str):
    """The newest ranker SavedModel the run's Trainer wrote (<pipeline_root>/RankerTrainer/model/
    <id>/Format-Serving), or None."""
    root = os.path.join(os.path.dirname(os.path.abspath(serving_dir)), "pipeline_root",
                        "RankerTrainer", "model")
    found = [p for p in glob.glob(os.path.join(root, "*", "Format-Serving", "saved_model.pb"))]
    return os.path.dirname(max(found, key=os.path.getmtime)) if found else None


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as r:
        return json.loads(r.read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serving-dir", help="default: the newest push under ./runs, $PINRANK_HOME")
    ap.add_argument("--data", help="canonical dataset (default: the run's)")
    ap.add_argument("--store", help="action store URL (default: a fresh SQLite file)")
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--users", type=int, default=20, help="most active users, cycled")
    ap.add_argument("--iters", type=int, default=100, help="sequential requests")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)

    import pandas as pd
    import tensorflow as tf

    from pinrank.components.data import events as ev
    from pinrank.components.data import ranking_features as rf
    from pinrank.pipeline.config import preset
    from pinrank.serving import batch_embeddings as B
    from pinrank.serving import local_server as LS
    from pinrank.serving import recs_http
    from pinrank.serving.action_store import open_store
    from pinrank.serving.client import ServingClient
    from pinrank.serving.ingest import ingest_dataset
    from pinrank.serving.service import ColdStart, Recommender, rank_inputs

    roots = [r for r in ("runs", os.environ.get("PINRANK_HOME", "")) if r]
    serving_dir = args.serving_dir or newest_serving_dir(roots)
    data_dir = args.data or (dataset_for(serving_dir) if serving_dir else None)
    if not serving_dir or not data_dir:
        print(f"no pushed model/dataset under {roots}; pass --serving-dir and --data",
              file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="serving-recs-")
    try:
        ranker_path = B.resolve_model_dir(os.path.join(serving_dir, C.RANKER), C.RANKER)
    except FileNotFoundError:  # not blessed: time the run's trained ranker all the same
        ranker_path = newest_trained_ranker(serving_dir)
        if ranker_path is None:
            print(f"no ranker pushed in {serving_dir} nor trained beside it", file=sys.stderr)
            return 2
        served = os.path.join(tmp, "serving")
        shutil.copytree(os.path.join(serving_dir, C.PINNERFORMER),
                        os.path.join(served, C.PINNERFORMER))
        shutil.copytree(ranker_path, os.path.join(served, C.RANKER, "1"))
        print(f"{serving_dir} has no {C.RANKER} (not blessed): serving the trained "
              f"{ranker_path} as {C.RANKER} v1 for the timing")
        serving_dir = served
    cfg = preset("cpu", "movielens").replace(online={"num_candidates": args.candidates,
                                                     "store": args.store or
                                                     f"sqlite:///{tmp}/actions.db"})
    events = pd.concat([ev.read_event_shard(p) for p in ev.event_shards(data_dir)],
                       ignore_index=True)
    t_end = int(events.timestamp.max()) + 1
    users = events.groupby("user_id").size().sort_values(ascending=False).index[:args.users]
    users = [str(u) for u in users]

    handle = LS.serve(model_base_path=serving_dir, port=0, file_system_poll_wait_seconds=0)
    store = open_store(cfg.online.store)
    client = ServingClient(handle.target, timeout_s=60)
    httpd = None
    try:
        t = time.perf_counter()
        ingest_dataset(data_dir, store, until=t_end)
        print(f"ingested {len(events)} events into {store!r} in {time.perf_counter() - t:.1f} s")
        snap = B.run_daily_embeddings(serving_dir, data_dir, os.path.join(tmp, "snapshots"),
                                      rf.day_start(t_end))
        B.load_snapshot_into_store(snap, store)
        client.wait_until_available(C.PINNERFORMER, timeout_s=60)
        client.wait_until_available(C.RANKER, timeout_s=60)
        rec = Recommender(client, store, cfg, titles=ev.read_titles(data_dir),
                          cold_start=ColdStart.from_dataset(data_dir, 28))

        # The ranker in process, on exactly the requests the service sends.
        rank_fn = tf.saved_model.load(ranker_path).signatures[C.RANK]
        want = rank_fn.structured_input_signature[1]
        calls = []
        for u in users:
            first = rec.recommend(u, request_ts=t_end, k=10)
            assert first.mode == "ranked", (u, first.mode, first.degraded)
            full = rec.recommend(u, request_ts=t_end, k=args.candidates)  # all candidates
            cand = np.array([i["item_id"] for i in full.items])
            snap_u = store.snapshot_for_request(u, t_end)
            feats = rec.request_features(u, t_end, "homefeed", rec.history(u, t_end), snap_u,
                                         len(snap_u[0]) if snap_u else 1)
            x = rank_inputs(feats, cand)
            tensors = {k: tf.constant(x[k], dtype=want[k].dtype) for k in want}
            calls.append(lambda tensors=tensors: {k: v.numpy()
                                                  for k, v in rank_fn(**tensors).items()})
        httpd = recs_http.serve(rec, "127.0.0.1", 0)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}/v1/recommendations/"
        seen: list = []

        def one(i: int) -> dict:
            return _get(f"{base}{users[i % len(users)]}?now={t_end}&k=10")

        # Interleaved, one request in flight: the ranker in process, then the same user's
        # request through serve-recs, so both see the same background load.
        for i in range(args.warmup):
            calls[i % len(calls)]()
            one(i)
        rank_lat, http_lat = np.empty(args.iters), np.empty(args.iters)
        for i in range(args.iters):
            t0 = time.perf_counter()
            calls[i % len(calls)]()
            rank_lat[i] = time.perf_counter() - t0
            t0 = time.perf_counter()
            seen.append(one(i))
            http_lat[i] = time.perf_counter() - t0
        in_proc, seq = stats(rank_lat), stats(http_lat)
        lat: list = []

        def client_loop(c: int) -> None:
            for j in range(args.per_client):
                t0 = time.perf_counter()
                one(c * args.per_client + j)
                lat.append(time.perf_counter() - t0)

        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client_loop, range(args.clients)))
        wall = time.perf_counter() - t
        conc = stats(np.array(lat))
        conc["qps"] = len(lat) / wall
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        client.close()
        store.close()
        handle.stop(grace=None)

    modes = {d["mode"] for d in seen}
    stage = {s: float(np.median([d["timings_ms"][s] for d in seen])) for s in STAGES}
    r = in_proc["p50_ms"]
    print(f"\nserve-recs on {serving_dir}: {args.candidates} candidates, {len(users)} users, "
          f"store {cfg.online.store.split(':')[0]}, modes {sorted(modes)}")
    print(f"ranker in-process (rank 1x{args.candidates}): p50 {r:.1f} ms, "
          f"p99 {in_proc['p99_ms']:.1f} ms")
    hdr = f"{'load':<12}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'p50/rank':>10}{'p99/rank':>10}"
    print(hdr + "\n" + "-" * len(hdr))
    for name, s in (("sequential", seq), (f"x{args.clients} clients", conc)):
        print(f"{name:<12}{s['qps']:>8.2f}{s['p50_ms']:>9.1f}{s['p99_ms']:>9.1f}"
              f"{s['p50_ms'] / r:>9.2f}x{s['p99_ms'] / r:>9.2f}x")
    print("stage medians of the sequential requests (ms; ratio to the ranker's in-process p50):")
    for s in STAGES:
        print(f"  {s:<10}{stage[s]:>9.1f}{stage[s] / r:>9.2f}x")
    print(f"HTTP + JSON: end-to-end p50 - total stage p50 = {seq['p50_ms'] - stage['total']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
