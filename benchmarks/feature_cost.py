"""What each ranker feature group costs at serving time (ML Test Score "Data 3").

  python benchmarks/feature_cost.py [--preset cpu] [--source movielens] [--candidates 500]

Builds the ranker (models/realtime/) for each feature-group variant of
benchmarks/ranker_ablations.py (a no sequence, b +PinnerFormer, c +realtime, d hybrid) from the
preset's config with random weights (cost does not depend on trained values) and measures, per
variant, for one 1 x N rank call (`Ranker.rank_request`, the model half of the `rank` signature;
the featurizer's lookups and the Transform graph are the same for every variant and not included):

  params    trainable + non-trainable weights of the built model (embedding tables included;
            their vocabulary sizes are the preset's, which the pipeline re-derives from the data)
  FLOPs     analytic (`rank_flops`, matmul FLOPs at 2 per multiply-add, by block), and
            cross-checked against the count on the executed graph that
            benchmarks/serving_latency.py uses (`graph_flops`: MatMul/BatchMatMul/Einsum nodes at
            runtime shapes; elementwise ops, softmax, layer norm and lookups are not counted by
            either)
  latency   p50/p99 of the in-process call (`serving_latency.timed` / `stats`, one request in
            flight), timed in interleaved rounds over the variants

and prints each variant's ratio to the no-sequence variant, all measured in this one run. Not a
timed test: one run, bounded iterations, a table. On a shared 2-core machine expect noisy p99s.
"""
from __future__ import annotations

import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import json
import sys
import tempfile
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.ranker_ablations import VARIANTS
from benchmarks.serving_latency import graph_flops, stats, timed
from pinrank.pipeline.config import RankerConfig, apply_overrides, preset

BASE = "a_no_sequence"
SIGNATURE = "rank_request"
REQUEST_TS_S = 1_700_000_000


def rank_flops(cfg: RankerConfig, n: int) -> Dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of `Ranker.rank_request` for 1 user x n candidates, by
    block, following models/realtime/ranker.py:

    transact   per encoder row set (n sets with concat/append fusion, one with "none"): per layer
               Q, K, V and output projections 4 x 2 L d^2, scores and attention x V 2 x 2 L^2 d,
               FFN 2 x 2 L d f; then Dense(d) on the max-pool 2 d^2. L = P (+1 for append).
    dcn        call_split: the shared block's share of the first layer once (2 Ds D), the per-row
               share n times (2 n (D - Ds) D), later layers 2 n D^2 each.
    mlp_heads  2 n x (D m1 + m1 m2 + ... + m_last H).
    D = user block (context embeddings + numerics + PinnerFormer) + TransAct output + candidate
    block (item embedding + candidate categorical embeddings)."""
    if n <= 0:
        raise ValueError(f"n (candidates) must be positive, got {n}")
    rt = cfg.realtime
    du = (sum(d for _, _, d in cfg.context_categorical) + len(cfg.context_numeric)
          + (cfg.pinnerformer_dim if cfg.use_pinnerformer else 0))
    dc = rt.item_emb_dim + sum(d for _, _, d in cfg.candidate_categorical)
    r = rt.output_dim if cfg.use_realtime else 0
    width = du + r + dc
    out = {"transact": 0, "dcn": 0, "mlp_heads": 0}
    shared = du
    if cfg.use_realtime:
        d, f = rt.model_dim, rt.ffn_dim
        length = rt.seq_len + (1 if rt.fusion == "append" else 0)
        sets = 1 if rt.fusion == "none" else n
        layer = 8 * length * d * d + 4 * length * length * d + 4 * length * d * f
        out["transact"] = sets * (rt.num_layers * layer + (2 * d * d if rt.max_pool else 0))
        if rt.fusion == "none":
            shared += r  # computed once and broadcast: part of the shared block
    if cfg.num_cross_layers:
        out["dcn"] = (2 * shared * width + 2 * n * (width - shared) * width
                      + (cfg.num_cross_layers - 1) * 2 * n * width * width)
    dims = [width, *cfg.mlp_dims, len(cfg.heads)]
    out["mlp_heads"] = 2 * n * sum(a * b for a, b in zip(dims, dims[1:]))
    return out


def variant_configs(preset_name: str, source: str, sets: Sequence[str] = ()
                    ) -> Dict[str, RankerConfig]:
    """The ranker config of each ablation variant, as ranker_ablations.py builds it."""
    return {v: apply_overrides(preset(preset_name, source), list(sets) + overrides).ranker
            for v, overrides in VARIANTS.items()}


def request_inputs(cfg: RankerConfig, n: int, seed: int = 0
                   ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """One user (full-length realtime sequence, every action real) and n candidates, shaped as
    `rank_request` takes them."""
    from pinrank.models.realtime import ranker as R

    rng = np.random.default_rng(seed)
    rt = cfg.realtime
    p = rt.seq_len
    user: Dict[str, np.ndarray] = {
        name: np.array([rng.integers(0, vocab)], np.int64)
        for name, vocab, _ in cfg.context_categorical}
    for name in cfg.context_numeric:
        user[name] = rng.normal(size=[1]).astype(np.float32)
    if cfg.use_pinnerformer:
        user[R.PINNERFORMER_EMB] = rng.normal(size=[1, cfg.pinnerformer_dim]).astype(np.float32)
    if cfg.use_realtime:
        user[R.RT_ACTION_TYPE] = rng.integers(1, rt.num_action_types + 1, [1, p]).astype(np.int64)
        user[R.RT_ITEM_EMB] = rng.normal(size=[1, p, rt.item_emb_dim]).astype(np.float32)
        user[R.RT_ACTION_TS] = (REQUEST_TS_S - np.sort(rng.integers(60, 86_400, [1, p]), axis=1)
                                ).astype(np.int64)
        user[R.REQUEST_TS] = np.array([REQUEST_TS_S], np.int64)
    cand: Dict[str, np.ndarray] = {
        R.CANDIDATE_EMB: rng.normal(size=[n, rt.item_emb_dim]).astype(np.float32)}
    for name, vocab, _ in cfg.candidate_categorical:
        cand[name] = rng.integers(0, vocab, [n]).astype(np.int64)
    return user, cand


def save_rank_model(cfg: RankerConfig, user: Dict[str, np.ndarray],
                    cand: Dict[str, np.ndarray], path: str, seed: int = 0):
    """A randomly initialised Ranker with its `rank_request` as the SavedModel signature
    `SIGNATURE` (flat inputs: the user's keys, then the candidates'). Returns the tf.Module."""
    import tensorflow as tf

    from pinrank.models.realtime import ranker as R

    model = R.Ranker(cfg, seed=seed)
    ukeys, ckeys = sorted(user), sorted(cand)
    specs = [tf.TensorSpec(user[k].shape, tf.as_dtype(user[k].dtype), name=k) for k in ukeys]
    specs += [tf.TensorSpec([None, *cand[k].shape[1:]], tf.as_dtype(cand[k].dtype), name=k)
              for k in ckeys]

    @tf.function(input_signature=specs)
    def rank(*args):
        return model.rank_request(dict(zip(ukeys, args[:len(ukeys)])),
                                  dict(zip(ckeys, args[len(ukeys):])))

    module = tf.Module()
    module.model, module.rank = model, rank
    rank(*[tf.constant(user[k]) for k in ukeys], *[tf.constant(cand[k]) for k in ckeys])
    tf.saved_model.save(module, path, signatures={SIGNATURE: rank})
    return module


def prepare(name: str, cfg: RankerConfig, n: int, workdir: str) -> Tuple[dict, Callable[[], object]]:
    """Build and save one variant, count its FLOPs; returns (row, the timed call)."""
    import tensorflow as tf

    user, cand = request_inputs(cfg, n)
    path = os.path.join(workdir, name)
    module = save_rank_model(cfg, user, cand, path)
    inputs = {**user, **cand}
    graph, _, missing = graph_flops(path, SIGNATURE, inputs)
    tensors = {k: tf.constant(v) for k, v in inputs.items()}
    fn = tf.saved_model.load(path).signatures[SIGNATURE]

    def call():
        return {k: v.numpy() for k, v in fn(**tensors).items()}

    analytic = rank_flops(cfg, n)
    # weights exist once traced; the subclassed model is never `built`, so no count_params()
    params = sum(int(np.prod(w.shape)) for w in module.model.weights)
    return {"variant": name, "params": params, "flops": int(sum(analytic.values())),
            "flops_by_block": analytic, "graph_flops": float(graph),
            "graph_missing_nodes": int(missing)}, call


def time_interleaved(calls: Dict[str, Callable[[], object]], iters: int, warmup: int,
                     rounds: int) -> Dict[str, np.ndarray]:
    """Latencies of each call, `iters` in all, timed in `rounds` rounds that visit every variant
    in turn, so slow phases of a shared machine hit all variants alike."""
    per = max(1, iters // rounds)
    lat: Dict[str, list] = {name: [] for name in calls}
    for r in range(rounds):
        for name, call in calls.items():
            lat[name].append(timed(call, per, warmup if r == 0 else 1))
    return {name: np.concatenate(x) for name, x in lat.items()}


def ratio_table(rows: Sequence[dict], base: str = BASE) -> str:
    """Markdown: each variant's cost and its ratio to `base` (same run)."""
    b = next(r for r in rows if r["variant"] == base)
    lines = ["| variant | params | x | MFLOP / 1xN call | x | p50 ms | x | p99 ms | x |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['params'] / b['params']:.2f} "
            f"| {r['flops'] / 1e6:,.1f} | {r['flops'] / b['flops']:.1f} "
            f"| {r['p50_ms']:.2f} | {r['p50_ms'] / b['p50_ms']:.1f} "
            f"| {r['p99_ms']:.2f} | {r['p99_ms'] / b['p99_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--source", default="movielens")
    ap.add_argument("--set", action="append", default=[], help="config override, as for pinrank")
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)

    import tensorflow as tf

    print(f"tf {tf.__version__}, {os.cpu_count()} CPUs; preset {args.preset}/{args.source}, "
          f"1 x {args.candidates} candidates, {args.iters} timed calls")
    rows, calls = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, cfg in variant_configs(args.preset, args.source, args.set).items():
            row, calls[name] = prepare(name, cfg, args.candidates, workdir)
            rows.append(row)
        lat = time_interleaved(calls, args.iters, args.warmup, args.rounds)
    for row in rows:
        row.update(stats(lat[row["variant"]]))
        print(json.dumps({k: v for k, v in row.items() if k != "flops_by_block"}), flush=True)
    print("\n" + ratio_table(rows) + "\n")
    for r in rows:
        agree = r["graph_flops"] / r["flops"] if r["flops"] else float("nan")
        blocks = ", ".join(f"{k} {v / 1e6:,.1f}M" for k, v in r["flops_by_block"].items())
        print(f"{r['variant']:<16} analytic {r['flops'] / 1e6:,.1f} MFLOP ({blocks}); graph count "
              f"{r['graph_flops'] / 1e6:,.1f} MFLOP (x{agree:.3f}, "
              f"{r['graph_missing_nodes']} nodes without shapes)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
