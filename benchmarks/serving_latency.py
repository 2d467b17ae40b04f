"""Serving latency/throughput: gRPC through the local TF-Serving stand-in vs a direct in-process
SavedModel call, plus achieved FLOP/s as a fraction of this machine's measured fp32 matmul peak.

  python benchmarks/serving_latency.py [--serving-dir runs/pinrank/<data>/serving]

Not a timed test: bounded iteration counts, one run, prints a table. Scenarios:
  embed b=1     embed_raw, 1 user  x M actions
  embed b=256   embed_raw, 256 users x M actions
  rank 1x500    the ranker's `rank` signature, 1 request x 500 candidates (only if a `ranker`
                model is in the serving dir; otherwise the line says it is skipped)

Each scenario runs (a) in-process: `loaded.signatures[sig](**tensors)` plus `.numpy()` on the
outputs (inputs pre-converted to tensors), and (b) gRPC: ServingClient.predict against the local
server started here on 127.0.0.1 (proto encoding, HTTP/2, the server's own conversion). Latency
is sequential closed-loop (one request in flight) -> p50/p99 and QPS; "QPS xC" runs C client
threads concurrently. overhead = gRPC p50 / in-process p50.

FLOPs are counted from the graph, not from the config: the signature is run once in a
tf.compat.v1 Session with a FULL_TRACE RunMetadata, which yields the executed (inlined,
grappler/oneDNN-rewritten) partition graph and every node's runtime output shape; each
MatMul / BatchMatMul / Einsum node (incl. _Mkl/_Fused variants) counts 2 x output elements x
contracted size. Elementwise ops, softmax, layer norm and lookups are not counted (so the
fraction is a slight underestimate). The tf.compat.v1 profiler is not used because it has no
FLOP rule for Einsum, which carries the attention projections. (Checked by hand on the tiny
preset, M=16 H=32 L=1 D=32: 0.881 MFLOP per user, matching the count.) Peak = the honest peak
of benchmarks/peak.py: the best n x n fp32 matmul of TensorFlow, numpy and torch (if installed),
measured in the same process.

The local server is Python (grpc + a thread pool), so its overhead is an upper bound of TF
Serving's C++ server; on a 2-core machine shared with other jobs expect noisy p99s.
"""
from __future__ import annotations

import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import concurrent.futures
import glob
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import peak as peak_mod
from pinrank.pipeline import features as F
from pinrank.serving import constants as C

# ------------------------------------------------------------------------------ locating things


def newest_serving_dir(roots: List[str]) -> Optional[str]:
    """The serving dir holding the most recently pushed pinnerformer version under `roots`."""
    best = None
    for root in roots:
        pattern = os.path.join(root, "**", "serving", C.PINNERFORMER, "*", "saved_model.pb")
        for pb in glob.glob(pattern, recursive=True):
            version_dir = os.path.dirname(pb)
            if not os.path.basename(version_dir).isdigit():
                continue
            key = (os.path.getmtime(pb), int(os.path.basename(version_dir)))
            if best is None or key > best[0]:
                best = (key, os.path.dirname(os.path.dirname(version_dir)))
    return best[1] if best else None


def dataset_for(serving_dir: str) -> Optional[str]:
    """The dataset the run behind `serving_dir` ingested (pipeline/runs.py layout:
    <home>/<pipeline>/<key>/{serving, pipeline_root, metadata.sqlite}; its MLMD knows)."""
    from pinrank.pipeline.runs import RunPaths, dataset_dir

    key_dir = os.path.dirname(os.path.abspath(serving_dir))
    return dataset_dir(RunPaths(home=os.path.dirname(os.path.dirname(key_dir)),
                                pipeline_root=os.path.join(key_dir, "pipeline_root"),
                                metadata_path=os.path.join(key_dir, "metadata.sqlite"),
                                serving_dir=serving_dir))


# ------------------------------------------------------------------------------ inputs


def history_batch(batch: int, width: int, data_dir: Optional[str], seed: int = 0
                  ) -> Tuple[Dict[str, np.ndarray], str]:
    """embed_raw inputs [batch, width]: real users' latest histories when the data set is known
    (users repeated if there are fewer than `batch`), else random valid histories."""
    if data_dir:
        import pandas as pd

        from pinrank.components.data import events as ev
        from pinrank.serving.client import embed_request_from_events

        df = pd.concat([ev.read_event_shard(p) for p in ev.event_shards(data_dir)],
                       ignore_index=True)
        users = df.groupby("user_id").size().sort_values(ascending=False).index.tolist()
        chosen = [users[i % len(users)] for i in range(batch)]
        uniq = sorted(set(chosen))
        req = embed_request_from_events(df[df.user_id.isin(uniq)], uniq, width,
                                        int(df.timestamp.max()) + 1)
        rows = [uniq.index(u) for u in chosen]
        return {k: v[rows] for k, v in req.items()}, f"real histories from {data_dir}"
    rng = np.random.default_rng(seed)
    acts = np.array([a.encode() for a in F.ACTIONS], object)
    surfs = np.array([s.encode() for s in F.SURFACES], object)
    return {
        F.HIST_ITEM: rng.integers(0, 1000, (batch, width)).astype(np.int64),
        F.HIST_ACTION: acts[rng.integers(0, len(acts), (batch, width))],
        F.HIST_SURFACE: surfs[rng.integers(0, len(surfs), (batch, width))],
        F.HIST_TS: np.sort(rng.integers(1_600_000_000, 1_700_000_000, (batch, width)), axis=1),
        F.HIST_DURATION: rng.uniform(0, 60, (batch, width)).astype(np.float32),
        C.HIST_LEN: np.full((batch,), width, np.int64),
    }, "random full-length histories (no data set found)"


# ------------------------------------------------------------------------------ FLOPs


def graph_flops(model_path: str, signature: str, inputs: Dict[str, np.ndarray]
                ) -> Tuple[float, Dict[str, float], int]:
    """FLOPs of one call, counted on the executed graph with runtime shapes (module doc).
    Returns (total, by op type, nodes whose shapes were missing)."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        sess = tf.compat.v1.Session(graph=g)
        mg = tf.compat.v1.saved_model.loader.load(sess, ["serve"], model_path)
        sig = mg.signature_def[signature]
        feed = {sig.inputs[k].name: v for k, v in inputs.items()}
        fetch = [t.name for t in sig.outputs.values()]
        opts = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE,
                                       output_partition_graphs=True)
        meta = tf.compat.v1.RunMetadata()
        sess.run(fetch, feed)  # warm (grappler + table init), then trace
        sess.run(fetch, feed, options=opts, run_metadata=meta)
        sess.close()
    return peak_mod.count_matmul_flops(meta)


# ------------------------------------------------------------------------------ timing


def timed(fn: Callable[[], object], iters: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    lat = np.empty(iters)
    for i in range(iters):
        t = time.perf_counter()
        fn()
        lat[i] = time.perf_counter() - t
    return lat


def concurrent_qps(fn: Callable[[], object], total: int, clients: int) -> float:
    per = max(1, total // clients)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        t = time.perf_counter()
        futures = [pool.submit(lambda: [fn() for _ in range(per)]) for _ in range(clients)]
        for f in futures:
            f.result()
        return per * clients / (time.perf_counter() - t)


def stats(lat: np.ndarray) -> Dict[str, float]:
    return {"p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "qps": float(len(lat) / lat.sum())}


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serving-dir", help="<dir>/pinnerformer/<version>/ (default: the newest "
                                          "push under ./runs and $PINRANK_HOME)")
    ap.add_argument("--data", help="canonical dataset for real histories (default: the run's)")
    ap.add_argument("--iters", type=int, default=200, help="timed calls, batch 1 and rank")
    ap.add_argument("--iters-large", type=int, default=30, help="timed calls, batch 256")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4, help="threads for the concurrent QPS")
    ap.add_argument("--candidates", type=int, default=500, help="ranking candidates")
    ap.add_argument("--peak-n", type=int, default=2048, help="matmul size for the peak")
    ap.add_argument("--peak-repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import tensorflow as tf

    from pinrank.serving import local_server as LS
    from pinrank.serving.batch_embeddings import history_width, resolve_model_dir
    from pinrank.serving.client import ServingClient

    roots = [r for r in ("runs", os.environ.get("PINRANK_HOME", "")) if r]
    serving_dir = args.serving_dir or newest_serving_dir(roots)
    if not serving_dir:
        print(f"no pushed model under {roots}; pass --serving-dir", file=sys.stderr)
        return 2
    model_path = resolve_model_dir(os.path.join(serving_dir, C.PINNERFORMER))
    version = int(os.path.basename(model_path))
    width = history_width(model_path, None)
    data_dir = args.data or dataset_for(serving_dir)
    print(f"serving dir: {serving_dir}\nmodel: {C.PINNERFORMER} v{version} ({model_path}), "
          f"history length M={width}")
    print(f"tf {tf.__version__}, {os.cpu_count()} CPUs, intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")

    measured = peak_mod.measure(args.peak_n, args.peak_repeats)
    peak = measured.best
    print(measured.describe())

    sigs = tf.saved_model.load(model_path).signatures
    scenarios = []
    for b, iters in ((1, args.iters), (256, args.iters_large)):
        inputs, source = history_batch(b, width, data_dir)
        scenarios.append((f"embed b={b}", C.PINNERFORMER, version, sigs, C.EMBED_RAW, inputs,
                          b, iters, model_path))
    print(f"inputs: {source}")

    ranker_base = os.path.join(serving_dir, C.RANKER)
    skipped_rank = None
    try:
        ranker_path = resolve_model_dir(ranker_base, C.RANKER)
    except FileNotFoundError:
        ranker_path = None
        skipped_rank = f"rank 1x{args.candidates}: skipped (no {C.RANKER} model in {serving_dir})"
    if ranker_path:
        from pinrank.serving.client import rank_request_inputs

        rsigs = tf.saved_model.load(ranker_path).signatures
        rdef = LS.signature_defs(ranker_path).get(C.RANK)
        if rdef is None:
            skipped_rank = f"rank: skipped ({ranker_path} has no {C.RANK!r} signature)"
        else:
            from pinrank.serving.batch_embeddings import fixed_history_len

            rwidth = fixed_history_len(rdef) or width
            hist, _ = history_batch(1, rwidth, data_dir)
            cands = list(range(1, args.candidates + 1))
            # The request's PinnerFormer embedding, from the served PinnerFormer itself.
            pf_in, _ = history_batch(1, width, data_dir)
            pf = sigs[C.EMBED_RAW](**{k: tf.constant(v) for k, v in pf_in.items()})
            rin = rank_request_inputs(hist, cands, request_ts=int(hist[F.HIST_TS].max()) + 60,
                                      pf_embedding=pf[C.EMBEDDING].numpy()[0])
            scenarios.append((f"rank 1x{args.candidates}", C.RANKER,
                              int(os.path.basename(ranker_path)), rsigs, C.RANK, rin, 1,
                              args.iters, ranker_path))

    handle = LS.serve(model_base_path=serving_dir, port=0, file_system_poll_wait_seconds=0)
    rows = []
    try:
        client = ServingClient(handle.target, timeout_s=60, retries=3)
        for name, model, ver, loaded, sig, inputs, b, iters, path in scenarios:
            fn = loaded[sig]
            tensors = {k: tf.constant(v) for k, v in inputs.items()}

            def direct(fn=fn, tensors=tensors):
                return {k: v.numpy() for k, v in fn(**tensors).items()}

            def remote(model=model, sig=sig, inputs=inputs, ver=ver):
                return client.predict(model, sig, inputs, version=ver)

            want, got = direct(), remote()
            for k in want:  # sanity: both paths compute the same thing
                np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=1e-5)
            flops, by_op, missing = graph_flops(path, sig, inputs)
            for path_name, call in (("in-process", direct), ("gRPC", remote)):
                s = stats(timed(call, iters, args.warmup))
                s["qps_conc"] = concurrent_qps(call, max(iters, args.clients * 5), args.clients)
                s.update(scenario=name, path=path_name, rows=b, iters=iters, flops=flops,
                         by_op=by_op, missing=missing)
                rows.append(s)
        client.close()
    finally:
        handle.stop(grace=None)

    # ---- report
    hdr = (f"{'scenario':<14}{'path':<12}{'p50 ms':>9}{'p99 ms':>9}{'QPS':>9}{'rows/s':>10}"
           f"{'QPS x' + str(args.clients):>9}{'overhead':>10}{'GFLOP/s':>9}{'% peak':>8}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    by_key = {(r["scenario"], r["path"]): r for r in rows}
    for r in rows:
        base = by_key[(r["scenario"], "in-process")]
        over = r["p50_ms"] / base["p50_ms"]
        achieved = r["flops"] / (r["p50_ms"] / 1e3)
        print(f"{r['scenario']:<14}{r['path']:<12}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['qps']:>9.1f}{r['qps'] * r['rows']:>10.0f}{r['qps_conc']:>9.1f}"
              f"{over:>9.2f}x{achieved / 1e9:>9.3f}{100 * achieved / peak:>7.3f}%")
    if skipped_rank:
        print(skipped_rank)
    print("\nmodel FLOPs per call (graph count, MatMul/BatchMatMul/Einsum at runtime shapes):")
    for r in rows:
        if r["path"] != "in-process":
            continue
        ops = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in sorted(r["by_op"].items()))
        if r["missing"]:
            ops += f"; {r['missing']} nodes without shapes, not counted"
        print(f"  {r['scenario']:<14}{r['flops'] / 1e6:10.2f} MFLOP "
              f"({r['flops'] / r['rows'] / 1e6:.3f} MFLOP/row; {ops})")
    print(f"\n% peak = model FLOPs / p50 latency / measured matmul peak "
          f"({peak / 1e9:.1f} GFLOP/s); overhead = p50 / in-process p50; QPS = sequential, "
          f"one request in flight; QPS x{args.clients} = {args.clients} concurrent clients.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
