"""PinnerFormer training throughput: tokens/s, model GFLOP/s and % of the honest peak.

  python benchmarks/train_throughput.py [--dims a b] [--steps 10] [--set model.x=y ...]
  python benchmarks/train_throughput.py --dims b --ab model.hand_gradients=false  # interleaved A/B
  python benchmarks/train_throughput.py --dims b --profile runs/profile        # TensorBoard trace
  TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/train_throughput.py   # without oneDNN (pipeline/bootstrap.py)

Dims (the issue's comparison points, so other frameworks can be compared on the same shapes):
  a   H=64,  2 layers, seq 50,  batch 256
  b   H=256, 2 layers, seq 200, batch 256
Everything else is the `cpu` preset (heads, FFN multiple, dropout, output dim, the dense
all-action objective with its 16 positions per sequence, 5000 in-batch + 512 random negatives,
the history-mean skip), changeable with --set.

What is timed: the trainer's own code path (models/pinnerformer/run.py): `PinnerFormer`,
`model.compile(optimizer=train.make_optimizer(cfg))`, then Keras' train function (the
tf.function `model.fit` runs each step: pairs, towers, sampled softmax, AdamW with clipping)
called on an iterator. Inputs are synthetic: one random batch of Transform outputs of the right
shapes and dtypes (full-length histories, `examples.max_future` future positives per row, a
random catalog of `--items` frozen `items.dim`-d vectors), repeated, so the input pipeline is not
in the figure. Each step is synchronised by reading its loss. Reported: min and median over the
timed steps after `--warmup` steps (the first traces and compiles).

tokens/s = batch x seq_len / step time.

Training FLOPs per step, counted analytically from the config (matmuls only; elementwise ops,
softmax, layer norms, gathers and the optimizer are not counted). Forward terms, with B batch,
M seq_len, H hidden, L layers, f ffn_mult, D output_dim, A the per-action input width,
Din the item input width, P = B x min(S, M) pairs (S = num_sampled_positions for the dense
all-action objective; the synthetic data makes every sampled slot valid), N = min(P,
max_in_batch) + num_random negatives (upper bound on the distinct labels):
  input projection        2 B M A H
  per layer: Q, K, V, O   8 B M H^2
             QK^T, AV     4 B M^2 H            (full M x M; the mask does not skip work)
             FFN          4 f B M H^2
  output head (P pairs)   2 P f H (H + D)      (the head runs on the sampled positions only)
  item tower (P + N)      2 (P + N) f H (Din + D)
  history-mean skip       2 (2 P + N) Din D    (when on; user side at the P pairs)
  logits                  2 P N D
Training = 3 x forward (forward, input gradient, weight gradient), except the matmuls whose
input carries no gradient (the item tower's first layer and the skip projection read the frozen
item table): 2 x. N is an upper bound (repeated labels shrink the pool), so the count is a few %
high. `--check-flops` also counts every MatMul / BatchMatMul / Einsum of one executed forward +
backward pass with runtime shapes (benchmarks/peak.py, `count_matmul_flops`) and prints both
(measured: a 18.2 counted vs 19.4 analytic GFLOP, b 584.6 vs 585.9; the Einsums, i.e. the
attention, match exactly).

% of peak = model GFLOP/s / the honest peak (benchmarks/peak.py: the best 2048^2 fp32 matmul of
TensorFlow with oneDNN as this process has it, numpy and torch if installed).

The RecBole SASRec column repeats the issue's reference figures (RecBole 1.2.1 SASRec, measured
by the issue's author on another run on this 2-core machine class), not a measurement of this
script. With `--peer PYTHON` (an interpreter that has torch and recbole==1.2.1; the project's
environment has neither, benchmarks/recbole_peer.py says how to make one) the peer is measured
in the same run instead, right after each dims, with the same steps, warm-up and catalogue size,
and the ratio is ours over the peer's, fastest step to fastest and median to median.
Not a timed test: prints a table, asserts nothing about speed.
"""
from __future__ import annotations

import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import sys
import time
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import peak as peak_mod
from pinrank.pipeline import features as F
from pinrank.pipeline.config import PipelineConfig, apply_overrides, preset

DIMS = {  # name -> (hidden, layers, seq_len, batch)
    "a": (64, 2, 50, 256),
    "b": (256, 2, 200, 256),
}
# The RecBole SASRec figures (tokens/s, low-high), measured on another run.
RECBOLE_SASREC = {"a": (44_800.0, 45_400.0), "b": (3_200.0, 3_290.0)}
NUM_ACTIONS, NUM_SURFACES = 6, 7  # vocabulary sizes + padding + OOV, as Transform would give


def bench_config(dims: str, overrides: List[str]) -> PipelineConfig:
    hidden, layers, seq_len, batch = DIMS[dims]
    cfg = preset("cpu").replace(model={"hidden": hidden, "num_layers": layers, "seq_len": seq_len},
                                train={"batch_size": batch})
    return apply_overrides(cfg, overrides)


def synthetic_catalog(cfg: PipelineConfig, num_items: int) -> Tuple[np.ndarray, np.ndarray]:
    """Item ids (unique, not contiguous) and their frozen `items.dim`-d vectors."""
    rng = np.random.default_rng(cfg.train.seed)
    item_ids = np.arange(1, num_items + 1, dtype=np.int64) * 7 + 1000
    return item_ids, rng.standard_normal((num_items, cfg.items.dim)).astype(np.float32)


def synthetic_batch(cfg: PipelineConfig, item_ids: np.ndarray, seed: int = 0) -> Dict[str, np.ndarray]:
    """Transform outputs (pipeline/features.py): newest-first full histories, oldest-first futures.
    Actions an hour or so apart, so every position has labels inside the 28-day window."""
    rng = np.random.default_rng(seed)
    b, m, f = cfg.train.batch_size, cfg.model.seq_len, cfg.examples.max_future
    gaps = rng.exponential(3600.0, (b, m + f)).astype(np.int64) + 1
    ts = 1_650_000_000 + np.cumsum(gaps, axis=1)  # oldest first
    hist_ts, fut_ts = ts[:, :m][:, ::-1], ts[:, m:]
    feats = {
        F.xf(F.HIST_ITEM): rng.choice(item_ids, (b, m)),
        F.xf(F.HIST_ACTION): rng.integers(1, NUM_ACTIONS - 1, (b, m)),
        F.xf(F.HIST_SURFACE): rng.integers(1, NUM_SURFACES - 1, (b, m)),
        F.xf(F.HIST_TS): hist_ts,
        F.xf(F.HIST_DURATION): rng.exponential(20.0, (b, m)).astype(np.float32),
        F.xf(F.HIST_POS): rng.integers(0, 2, (b, m)),
        F.SEQ_LEN_XF: np.full((b,), m),
        F.xf(F.FUT_ITEM): rng.choice(item_ids, (b, f)),
        F.xf(F.FUT_TS): fut_ts,
        F.FUT_LEN_XF: np.full((b, 1), f),
    }
    return {k: v if v.dtype == np.float32 else v.astype(np.int64) for k, v in feats.items()}


def action_input_width(model) -> int:
    return int(model.input_projection.kernel.shape[0])


def train_flops(cfg: PipelineConfig, action_width: int, item_width: int) -> Dict[str, float]:
    """Analytic training FLOPs per step by term (module docstring)."""
    mc = cfg.model
    b, m, h, lay, fm, d = (cfg.train.batch_size, mc.seq_len, mc.hidden, mc.num_layers, mc.ffn_mult,
                           mc.output_dim)
    per_row = {"dense_all_action": min(mc.num_sampled_positions, m), "sasrec": m, "next_action": 1,
               "all_action": mc.max_labels}[mc.objective]  # pair slots per sequence
    p = b * per_row
    n = min(p, mc.max_in_batch_negatives) + mc.num_random_negatives
    din = item_width
    fwd3 = {
        "input projection": 2 * b * m * action_width * h,
        "attention projections": lay * 8 * b * m * h * h,
        "attention scores": lay * 4 * b * m * m * h,
        "FFN": lay * 4 * fm * b * m * h * h,
        "output head": 2 * p * fm * h * (h + d),
        "item tower": 2 * (p + n) * fm * h * d,  # second layer; its input has a gradient
        "logits": 2 * p * n * d,
    }
    fwd2 = {"item tower": 2 * (p + n) * din * fm * h}
    if mc.history_mean_skip:
        fwd2["history-mean skip"] = 2 * (2 * p + n) * din * d
    out = {k: 3.0 * v for k, v in fwd3.items()}
    for k, v in fwd2.items():
        out[k] = out.get(k, 0.0) + 2.0 * v
    return out


class Bench:
    """One model + optimizer + train function on a repeated synthetic batch."""

    def __init__(self, cfg: PipelineConfig, num_items: int, label: str = ""):
        import tensorflow as tf

        from pinrank.models.pinnerformer import train
        from pinrank.models.pinnerformer.model import PinnerFormer

        self.cfg, self.label = cfg, label
        item_ids, item_emb = synthetic_catalog(cfg, num_items)
        with train.precision_policy(cfg.train.mixed_precision):  # as run_fn builds it
            self.model = PinnerFormer(cfg.model, item_ids, item_emb, NUM_ACTIONS, NUM_SURFACES,
                                      seed=cfg.train.seed)
            self.model.compile(optimizer=train.make_optimizer(cfg))
        batch = {k: tf.constant(v) for k, v in synthetic_batch(cfg, item_ids).items()}
        self.iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
        self.train_function = self.model.make_train_function()
        self.times: List[float] = []
        self.cpu_times: List[float] = []  # process CPU s per step: steadier than wall on a shared machine
        self.warm_traces = 0

    def step(self) -> float:
        """One training step; returns its wall time and records its process CPU time."""
        t, c = time.perf_counter(), time.process_time()
        logs = self.train_function(self.iterator)
        loss = float(logs["loss"])
        dt = time.perf_counter() - t
        self.cpu_times.append(time.process_time() - c)
        if not np.isfinite(loss):
            raise FloatingPointError(f"{self.label}: loss {loss}")
        return dt

    def tokens(self) -> int:
        return self.cfg.train.batch_size * self.cfg.model.seq_len

    def tracing_count(self) -> int:
        return int(self.train_function.experimental_get_tracing_count())


def run_dims(dims: str, args, measured_peak) -> List[dict]:
    variants: List[Tuple[str, List[str]]] = [("A" if args.ab else "", args.set)]
    if args.ab:
        variants.append(("B", args.set + args.ab))
    benches = [Bench(bench_config(dims, ov), args.items, label) for label, ov in variants]
    for bench in benches:
        for _ in range(args.warmup):
            bench.step()
        bench.warm_traces = bench.tracing_count()
        bench.cpu_times.clear()
    if args.profile:
        import tensorflow as tf

        for bench in benches:
            logdir = os.path.join(args.profile, f"{dims}{bench.label}")
            tf.profiler.experimental.start(logdir)
            bench.step()
            tf.profiler.experimental.stop()
            print(f"profile of one step: {logdir} (tensorboard --logdir {args.profile})")
    for _ in range(args.steps):  # interleaved, so both variants see the same machine load
        for bench in benches:
            bench.times.append(bench.step())
    rows = []
    for bench, (label, ov) in zip(benches, variants):
        item_width = cfg_item_width(bench)
        flops = train_flops(bench.cfg, action_input_width(bench.model), item_width)
        t = np.asarray(bench.times)
        rows.append({"dims": dims, "label": label, "overrides": ov, "cfg": bench.cfg,
                     "min_s": float(t.min()), "median_s": float(np.median(t)),
                     "cpu_median_s": float(np.median(bench.cpu_times[-len(t):])),
                     "tokens": bench.tokens(), "flops": flops,
                     "traces": f"{bench.warm_traces} -> {bench.tracing_count()}",
                     "bench": bench})
    if args.check_flops:
        for row in rows:
            counted, by_op, missing = counted_flops(row["cfg"], args.items)
            row["counted_flops"], row["counted_by_op"], row["counted_missing"] = counted, by_op, missing
    return rows


def cfg_item_width(bench: Bench) -> int:
    return int(bench.model.item_input_dim + bench.cfg.model.item_id_embedding_dim)


def counted_flops(cfg: PipelineConfig, num_items: int):
    """MatMul / BatchMatMul / Einsum FLOPs of one executed forward + backward pass (the optimizer
    has no matmuls), counted with runtime shapes: eager tf.functions export no step stats, so this
    builds the same loss and `tf.gradients` in a tf.compat.v1 graph and runs it once traced."""
    import tensorflow as tf

    from pinrank.models.pinnerformer.model import PinnerFormer

    g = tf.Graph()
    with g.as_default():
        item_ids, item_emb = synthetic_catalog(cfg, num_items)
        model = PinnerFormer(cfg.model, item_ids, item_emb, NUM_ACTIONS, NUM_SURFACES, seed=cfg.train.seed)
        feats = {k: tf.constant(v) for k, v in synthetic_batch(cfg, item_ids).items()}
        loss, _ = model.pair_loss(feats, training=True, seed=tf.constant([cfg.train.seed, 1], tf.int64),
                                  update_sketch=False)
        fetch = [loss, tf.gradients(loss, model.trainable_variables)]
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run([tf.compat.v1.global_variables_initializer(), tf.compat.v1.tables_initializer()])
            sess.run(fetch)
            opts = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE,
                                           output_partition_graphs=True)
            meta = tf.compat.v1.RunMetadata()
            sess.run(fetch, options=opts, run_metadata=meta)
    return peak_mod.count_matmul_flops(meta)


def report(rows: List[dict], measured_peak, args) -> None:
    peak = measured_peak.best
    print("\n" + measured_peak.describe())
    hdr = (f"{'dims':<5}{'':<3}{'H':>5}{'L':>3}{'seq':>5}{'batch':>6}{'step ms':>10}{'tokens/s':>11}"
           f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'% peak':>8}{'RecBole tok/s':>16}{'x RecBole':>12}")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        mc, tc = r["cfg"].model, r["cfg"].train
        total = sum(r["flops"].values())
        best = r["min_s"]
        tps = r["tokens"] / best
        lo, hi = RECBOLE_SASREC.get(r["dims"], (float("nan"),) * 2)
        print(f"{r['dims']:<5}{r['label']:<3}{mc.hidden:>5}{mc.num_layers:>3}{mc.seq_len:>5}"
              f"{tc.batch_size:>6}{best * 1e3:>10.1f}{tps:>11.0f}{total / 1e9:>12.2f}"
              f"{total / best / 1e9:>9.1f}{100 * total / best / peak:>7.1f}%"
              f"{f'{lo / 1e3:.2f}k-{hi / 1e3:.2f}k':>16}{f'{tps / hi:.2f}-{tps / lo:.2f}x':>12}")
    print("\nstep ms / tokens/s / GFLOP/s: the fastest of the timed steps; median step ms: "
          + ", ".join(f"{r['dims']}{r['label']} {r['median_s'] * 1e3:.1f}" for r in rows)
          + "; median process CPU s per step: "
          + ", ".join(f"{r['dims']}{r['label']} {r['cpu_median_s']:.2f}" for r in rows))
    print("RecBole tok/s: the issue's RecBole 1.2.1 SASRec reference figures (another run, same "
          "machine class), not measured here. Train-function traces after warm-up -> after the "
          "timed steps: "
          + ", ".join(f"{r['dims']}{r['label']} {r['traces']}" for r in rows))
    if args.ab:
        print(f"A/B ({args.steps} interleaved steps each): B = A + {args.ab}")
        by_dims: Dict[str, Dict[str, dict]] = {}
        for r in rows:
            by_dims.setdefault(r["dims"], {})[r["label"]] = r
        for dims, d in by_dims.items():
            a, b = d["A"], d["B"]
            print(f"  {dims}: B/A speed, wall min {a['min_s'] / b['min_s']:.3f}x, wall median "
                  f"{a['median_s'] / b['median_s']:.3f}x, CPU-time median "
                  f"{a['cpu_median_s'] / b['cpu_median_s']:.3f}x")
    print("\ntraining FLOPs per step by term (analytic, GFLOP):")
    for r in rows:
        terms = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in r["flops"].items())
        print(f"  {r['dims']}{r['label']}: {terms}")
        if "counted_flops" in r:
            ops = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(r["counted_by_op"].items()))
            miss = f"; {r['counted_missing']} nodes without shapes" if r["counted_missing"] else ""
            print(f"  {r['dims']}{r['label']}: counted on the executed step "
                  f"{r['counted_flops'] / 1e9:.2f} GFLOP vs analytic "
                  f"{sum(r['flops'].values()) / 1e9:.2f} ({ops}{miss})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", nargs="+", choices=sorted(DIMS), default=sorted(DIMS))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per dims (and variant)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing)")
    ap.add_argument("--items", type=int, default=20000, help="synthetic catalog size")
    ap.add_argument("--set", action="append", default=[], help="config override PATH=VALUE")
    ap.add_argument("--ab", action="append", default=[],
                    help="B variant = A + these overrides; steps of A and B alternate")
    ap.add_argument("--profile", help="write a TensorBoard profiler trace of one step here")
    ap.add_argument("--check-flops", action="store_true",
                    help="also count the executed step's matmul FLOPs from its run metadata")
    ap.add_argument("--peer", metavar="PYTHON",
                    help="also measure RecBole SASRec with this interpreter (benchmarks/recbole_peer.py)")
    ap.add_argument("--peak-n", type=int, default=2048)
    ap.add_argument("--peak-repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import tensorflow as tf

    print(f"tf {tf.__version__}, {os.cpu_count()} CPUs, TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset)')}; synthetic inputs, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    measured_peak = peak_mod.measure(args.peak_n, args.peak_repeats)
    rows: List[dict] = []
    peers: Dict[str, dict] = {}
    for dims in args.dims:
        rows += run_dims(dims, args, measured_peak)
        if args.peer:
            peers[dims] = measure_peer(dims, args)
    report(rows, measured_peak, args)
    if peers:
        report_peer(rows, peers)
    return 0


def measure_peer(dims: str, args) -> dict:
    """RecBole SASRec's fastest and median step at `dims`, from benchmarks/recbole_peer.py run by
    the interpreter `args.peer` (a separate process: torch and TensorFlow do not share one)."""
    import subprocess

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recbole_peer.py")
    cmd = [args.peer, script, "--dims", dims, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--items", str(args.items)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:1] == [dims]]
    if out.returncode != 0 or len(rows) != 1:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:]
        raise SystemExit(f"--peer {args.peer}: recbole_peer.py --dims {dims} failed "
                         f"(exit {out.returncode}): {tail[0] if tail else 'no output'}")
    _, _, _, seq, batch, min_ms, median_ms = rows[0][:7]
    return {"tokens": int(seq) * int(batch), "min_s": float(min_ms) / 1e3, "median_s": float(median_ms) / 1e3}


def report_peer(rows: List[dict], peers: Dict[str, dict]) -> None:
    print("\nside by side with RecBole 1.2.1 SASRec, measured in this run (benchmarks/recbole_peer.py):")
    hdr = (f"{'dims':<5}{'':<3}{'tokens/s (fastest)':>20}{'peer':>10}{'ratio':>8}"
           f"{'tokens/s (median)':>20}{'peer':>10}{'ratio':>8}")
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        p = peers[r["dims"]]
        ours_best, ours_med = r["tokens"] / r["min_s"], r["tokens"] / r["median_s"]
        peer_best, peer_med = p["tokens"] / p["min_s"], p["tokens"] / p["median_s"]
        print(f"{r['dims']:<5}{r['label']:<3}{ours_best:>20.0f}{peer_best:>10.0f}{ours_best / peer_best:>7.2f}x"
              f"{ours_med:>20.0f}{peer_med:>10.0f}{ours_med / peer_med:>7.2f}x")


if __name__ == "__main__":
    sys.exit(main())
