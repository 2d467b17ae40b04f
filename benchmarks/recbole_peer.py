"""The peer of benchmarks/train_throughput.py: RecBole 1.2.1 SASRec's training step, timed the same way.

Issue 13 compares the PinnerFormer trainer's tokens/s with RecBole's SASRec at equal dims
(a: H 64, 2 layers, seq 50, batch 256; b: H 256, 2 layers, seq 200, batch 256). This script
measures the peer on the same machine, so the ratio needs no figure from another run.

RecBole needs PyTorch, which the project's locked environment does not have (and should not: the
project is TensorFlow). Run it from its own virtual environment, for example:

    python3.10 -m venv /tmp/peer
    /tmp/peer/bin/pip install torch==2.3.1 recbole==1.2.1 "numpy<2" "scipy<1.13"
    /tmp/peer/bin/python benchmarks/recbole_peer.py --dims a b

It imports nothing from pinrank. What is timed: RecBole's own training step, as
`recbole.trainer.Trainer._train_epoch` runs it (zero_grad, `model.calculate_loss(interaction)`,
backward, Adam step), on batches of RecBole's own training DataLoader built from a synthetic
interaction file (every user has `--events` actions, so every training sequence is full length
after the first few). SASRec with its defaults except the dims: 2 heads, inner size 4H, dropout
0.5, CE loss over the whole catalogue of `--items` items. Reported: min and median step over
`--steps` timed steps after `--warmup`; tokens/s = batch x seq_len / step time, the formula
train_throughput.py uses. Threads: torch's default (one per core).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

DIMS = {"a": dict(hidden=64, layers=2, seq=50, batch=256),
        "b": dict(hidden=256, layers=2, seq=200, batch=256)}


def write_interactions(path: str, users: int, items: int, events: int, seed: int) -> None:
    """RecBole atomic file `<name>.inter`: user_id, item_id, timestamp (one row per action)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(users):
            picks = rng.integers(1, items + 1, size=events)
            for t, i in enumerate(picks):
                f.write(f"{u + 1}\t{i}\t{t}\n")


def measure(dims: str, args) -> dict:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec

    d = DIMS[dims]
    # Enough users that the training loader yields warmup + steps full batches.
    events = max(args.events, d["seq"] + 3)
    users = max(64, (args.warmup + args.steps + 2) * d["batch"] // max(1, events - d["seq"]) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        name = "peer"
        os.makedirs(os.path.join(tmp, name))
        write_interactions(os.path.join(tmp, name, f"{name}.inter"), users, args.items, events, args.seed)
        config = Config(model="SASRec", dataset=name, config_dict={
            "data_path": tmp, "use_gpu": False, "device": "cpu", "seed": args.seed,
            "hidden_size": d["hidden"], "inner_size": 4 * d["hidden"], "n_layers": d["layers"],
            "MAX_ITEM_LIST_LENGTH": d["seq"], "train_batch_size": d["batch"], "loss_type": "CE",
            "train_neg_sample_args": None, "learning_rate": 1e-3, "show_progress": False,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
            "state": "ERROR", "checkpoint_dir": os.path.join(tmp, "saved")})
        dataset = create_dataset(config)
        train_data, _, _ = data_preparation(config, dataset)
        model = SASRec(config, train_data._dataset).to("cpu")
        opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
        model.train()
        times = []
        batches = iter(train_data)
        for i in range(args.warmup + args.steps):
            interaction = next(batches)
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = model.calculate_loss(interaction)
            loss.backward()
            opt.step()
            float(loss)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        seq_len = int(interaction["item_id_list"].shape[1])
        batch = int(interaction["item_id_list"].shape[0])
    med, best = statistics.median(times), min(times)
    return dict(dims=dims, **d, real_seq=seq_len, real_batch=batch, median_ms=1e3 * med, min_ms=1e3 * best,
                tokens_median=batch * seq_len / med, tokens_best=batch * seq_len / best)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", nargs="+", choices=sorted(DIMS), default=sorted(DIMS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--items", type=int, default=20000, help="catalogue size (as train_throughput.py)")
    ap.add_argument("--events", type=int, default=120, help="actions per synthetic user")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import recbole
    import torch
    print(f"RecBole {recbole.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.items} items, {args.warmup} warm-up + {args.steps} timed steps")
    print(f"{'dims':<6}{'H':>4}{'L':>3}{'seq':>5}{'batch':>6}{'min ms':>9}{'median ms':>11}"
          f"{'tokens/s (median)':>19}{'tokens/s (best)':>17}")
    for dims in args.dims:
        r = measure(dims, args)
        print(f"{dims:<6}{r['hidden']:>4}{r['layers']:>3}{r['real_seq']:>5}{r['real_batch']:>6}"
              f"{r['min_ms']:>9.1f}{r['median_ms']:>11.1f}{r['tokens_median']:>19.0f}{r['tokens_best']:>17.0f}",
              flush=True)


if __name__ == "__main__":
    main()
