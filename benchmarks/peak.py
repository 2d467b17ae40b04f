"""The honest fp32 peak of this machine: one home for every benchmark's "% of peak".

The peak is the best n x n fp32 matmul rate (2 n^3 FLOP per product, best of `repeats` after a
warm-up) among the backends the process can run: TensorFlow (with oneDNN as the process has it,
i.e. as TF_ENABLE_ONEDNN_OPTS was set before TensorFlow loaded; pipeline/bootstrap.py turns it
on), numpy (its BLAS) and torch when it is importable. Taking the best of them keeps a slow
TensorFlow build from flattering every "% of peak" computed against it.

  python benchmarks/peak.py [--n 2048] [--repeats 5]
"""
from __future__ import annotations

import os

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import dataclasses
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Peak:
    n: int
    repeats: int
    flops: Dict[str, float]  # backend -> best FLOP/s ("tf", "numpy", "torch")
    onednn: str  # TF_ENABLE_ONEDNN_OPTS as TensorFlow saw it

    @property
    def best(self) -> float:
        return max(self.flops.values())

    @property
    def best_backend(self) -> str:
        return max(self.flops, key=lambda k: self.flops[k])

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in self.flops.items())
        return (f"fp32 matmul peak: {self.best / 1e9:.1f} GFLOP/s ({self.best_backend}; best of "
                f"{self.repeats} {self.n}x{self.n} per backend: {parts} GFLOP/s; "
                f"TF_ENABLE_ONEDNN_OPTS={self.onednn})")


def _best_rate(run: Callable[[], object], n: int, repeats: int) -> float:
    run()  # warm-up: thread pools, allocation, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def tf_matmul(n: int = 2048, repeats: int = 5) -> float:
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32, seed=1)
    b = tf.random.normal([n, n], dtype=tf.float32, seed=2)
    # Eager CPU ops run synchronously; reading one element adds no measurable time.
    return _best_rate(lambda: tf.matmul(a, b)[0, 0].numpy(), n, repeats)


def numpy_matmul(n: int = 2048, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return _best_rate(lambda: a @ b, n, repeats)


def torch_matmul(n: int = 2048, repeats: int = 5) -> Optional[float]:
    try:
        import torch
    except ImportError:
        return None
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    return _best_rate(lambda: a @ b, n, repeats)


def measure(n: int = 2048, repeats: int = 5) -> Peak:
    """Best fp32 matmul FLOP/s per backend, in this process (so with its thread settings)."""
    flops = {"tf": tf_matmul(n, repeats), "numpy": numpy_matmul(n, repeats)}
    t = torch_matmul(n, repeats)
    if t is not None:
        flops["torch"] = t
    return Peak(n, repeats, flops, os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"))


def count_matmul_flops(meta) -> Tuple[float, Dict[str, float], int]:
    """The other half of "% of peak": FLOPs of every MatMul / BatchMatMul / Einsum node
    (_Mkl/_Fused variants included) in an executed graph's RunMetadata (partition graphs and
    step stats with runtime output shapes), 2 x output elements x contracted size each.
    Returns (total, by op type, nodes whose shapes were missing)."""
    shapes: Dict[str, Dict[int, List[int]]] = {}
    for dev in meta.step_stats.dev_stats:
        for ns in dev.node_stats:
            shapes[ns.node_name] = {o.slot: [d.size for d in o.tensor_description.shape.dim]
                                    for o in ns.output}

    def shape_of(ref: str) -> Optional[List[int]]:
        name, _, slot = ref.lstrip("^").partition(":")
        return shapes.get(name, {}).get(int(slot or 0))

    total, by_op, missing = 0.0, {}, 0  # type: float, Dict[str, float], int
    graphs = list(meta.partition_graphs) + [pg for fg in meta.function_graphs
                                            for pg in fg.partition_graphs]
    for pg in graphs:
        for node in pg.node:
            op = node.op
            if "MatMul" not in op and "Einsum" not in op:
                continue
            ins = [i for i in node.input if not i.startswith("^")]
            out = shape_of(node.name)
            a = shape_of(ins[0]) if ins else None
            if out is None or a is None:
                missing += 1
                continue
            if "Einsum" in op:
                eq = node.attr["equation"].s.decode()
                lhs, _, rhs = eq.replace(" ", "").partition("->")
                operands = lhs.split(",")
                dims = {}
                for labels, ref in zip(operands, ins):
                    shp = shape_of(ref)
                    if shp is None or "." in labels:
                        continue
                    dims.update(zip(labels, shp))
                contracted = set("".join(operands)) - set(rhs) - {"."}
                k = float(np.prod([dims.get(c, 1) for c in contracted])) if contracted else 1.0
            else:
                ta = any(node.attr[x].b for x in ("transpose_a", "adj_x") if x in node.attr)
                k = float(a[-2] if ta else a[-1])
            flops = 2.0 * float(np.prod(out)) * k
            total += flops
            by_op[op] = by_op.get(op, 0.0) + flops
    return total, by_op, missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print(measure(args.n, args.repeats).describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
