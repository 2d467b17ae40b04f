"""How PinnerFormer's retrieval quality decays with model age (ML Test Score "Model 4").

  python benchmarks/staleness.py run --seeds 0 1            # -> runs/staleness/results.json
  python benchmarks/staleness.py report runs/staleness/results.json --png docs/staleness.png

One pipeline run per seed trains a model on data before the cut T (the out-of-time protocol,
`examples.eval_after_time_quantile`, with every anchor of every eval user kept). That frozen
model then embeds the eval users' *current* histories at anchors in windows of model age after T
(default 0-1, 1-2, 2-4, 4-8 and 8-16 weeks): every user's anchors there, built by the
pipeline's own EventExampleGen.user_examples, reported for all users and for the held-out eval
users alone (never trained on). Beside it, on the same users and anchors:
- the non-learned baselines counting every training user's positives before the anchor (not
  cut at T): popularity and co-occurrence are always fresh;
- the same baselines frozen at T (what the pipeline's own out-of-time evaluation counts);
- for each `--fresh-weeks` F, a model retrained by a second pipeline run cut at T + F weeks,
  scored on the window that starts there (fresh vs stale on identical anchors).
Each user keeps at most `--anchors-per-window` anchors per window (seeded), so heavy raters do
not dominate a window; the intervals are the RetrievalEvaluator's cluster bootstrap over users.
Every run lives in its own home (runs/staleness/seed<S>-cut<D>d), so a rerun is a cache hit.
"""
from __future__ import annotations

import os
import sys

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

# isort: split

import argparse
import itertools
import json
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import quality

DEFAULT_EDGES_DAYS = (0, 7, 14, 28, 56, 112)
POPULATIONS = ("all", "held-out")


# ------------------------------------------------------------------------------- pure helpers
def window_index(anchor_ts, cut: int, edges_s) -> np.ndarray:
    """[n] index i of the age window [cut + edges_s[i], cut + edges_s[i + 1]) holding each anchor,
    -1 for anchors outside every window."""
    edges = cut + np.asarray(edges_s, np.int64)
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"window edges must be at least two increasing values, got {edges_s}")
    ts = np.asarray(anchor_ts, np.int64)
    idx = np.searchsorted(edges, ts, side="right") - 1
    return np.where((ts >= edges[0]) & (ts < edges[-1]), idx, -1)


def cap_per_user(users, windows, max_per_user: int, seed: int = 0) -> np.ndarray:
    """[n] bool: at most `max_per_user` examples of each (user, window), drawn by a seeded random
    order; examples outside every window (window -1) are dropped."""
    users, windows = np.asarray(users), np.asarray(windows)
    if max_per_user < 1:
        raise ValueError(f"--anchors-per-window must be >= 1, got {max_per_user}")
    _, u = np.unique(users, return_inverse=True)
    order = np.lexsort((np.random.default_rng(seed).random(len(u)), windows, u))
    key = np.stack([u[order], windows[order]], axis=1)
    new_group = np.r_[True, np.any(key[1:] != key[:-1], axis=1)]
    starts = np.flatnonzero(new_group)
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.zeros(len(u), bool)
    keep[order] = (rank < max_per_user) & (windows[order] >= 0)
    return keep


def cut_quantile(data_start: int, data_end: int, cut: int) -> float:
    """The `examples.eval_after_time_quantile` whose cut (EventExampleGen.eval_cut) is exactly
    `cut`."""
    from pinrank.components.event_example_gen import eval_cut
    from pinrank.pipeline.config import ExampleGenConfig

    if not data_start < cut < data_end:
        raise ValueError(f"cut {cut} is not inside the data ({data_start}, {data_end})")
    q = (cut - data_start) / (data_end - data_start)
    for _ in range(4):  # float rounding can land one second early: step up by ulps
        if eval_cut(ExampleGenConfig(eval_after_time_quantile=q), data_start, data_end) == cut:
            return q
        q = float(np.nextafter(q, 1.0))
    raise ValueError(f"no quantile gives the cut {cut} exactly")


# ------------------------------------------------------------------------------ pipeline side
def _run_home(home: str, seed: int, cut_days: int) -> str:
    return os.path.join(home, f"seed{seed}-cut{cut_days}d")


def run_artifacts(summary: dict) -> dict:
    """URIs of the newest Examples, ItemEmbeddings and Model of a run's own MLMD store (each run
    has its own home, so the newest is that run's, cached or not)."""
    from tfx.orchestration import metadata
    from tfx.types import standard_artifacts

    from pinrank.components.types import ItemEmbeddings
    from pinrank.pipeline.runs import _latest

    paths = summary["paths"]
    conn = metadata.sqlite_metadata_connection_config(paths["metadata_path"])
    node = lambda name: os.path.join(paths["pipeline_root"], name)  # noqa: E731
    with metadata.Metadata(conn) as m:
        out = {key: _latest(m.store, artifact.TYPE_NAME, node(producer))
               for key, artifact, producer in (
                   ("examples", standard_artifacts.Examples, "EventExampleGen"),
                   ("item_embeddings", ItemEmbeddings, "ItemEmbeddingGen"),
                   ("model", standard_artifacts.Model, "ItemAwareTrainer"))}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise RuntimeError(f"{paths['metadata_path']}: no {', '.join(missing)} artifact")
    return {k: v.uri for k, v in out.items()}


def read_user_events(dataset_dir: str):
    """{user_id: column arrays} of the validated events (as EventExampleGen groups them), and
    the data's (first, last) event time."""
    import pandas as pd

    from pinrank.components.data import events as E

    df = pd.concat([d for _, d, _ in E.iter_events(dataset_dir)], ignore_index=True)
    rows = {str(u): {c: g[c].to_numpy() for c in g.columns if c != "user_id"}
            for u, g in df.groupby("user_id", sort=True)}
    return rows, (int(df["timestamp"].min()), int(df["timestamp"].max()))


def uncut_train_positives(user_rows: dict, cfg):
    """(user index, item id, ts) of every training user's positives over the whole data set
    (EventExampleGen.train_positives without a cut): popularity as of any anchor."""
    from pinrank.components.event_example_gen import TRAIN_POS_ITEM, TRAIN_POS_TS, train_positives

    users, items, ts = [], [], []
    for i, (user_id, rows) in enumerate(user_rows.items()):
        for ex in train_positives(user_id, rows, cfg):
            f = ex.features.feature
            items.append(np.asarray(f[TRAIN_POS_ITEM].int64_list.value, np.int64))
            ts.append(np.asarray(f[TRAIN_POS_TS].int64_list.value, np.int64))
            users.append(np.full(len(items[-1]), i, np.int64))
    if not users:
        raise ValueError("no training user has a positive engagement")
    return np.concatenate(users), np.concatenate(items), np.concatenate(ts)


def out_of_time_examples(user_rows: dict, cfg, data_end: int, cut: int):
    """Every user's anchors at or after `cut` (complete 14-day label windows), built by
    EventExampleGen.user_examples as for an eval user: (serialized examples, user ids, held-out
    flags). Held out = the pipeline's eval users (never trained on); the others are training
    users whose timelines the runs cut at their own cut, so their later anchors are out of time
    too."""
    import dataclasses

    from pinrank.components.event_example_gen import split_of, user_examples
    from pinrank.pipeline import features as F

    every = dataclasses.replace(cfg, eval_user_percent=100, valid_user_percent=0,
                                eval_users="test", eval_anchors_per_user=10**9)
    serialized, users, heldout = [], [], []
    for user_id, rows in user_rows.items():
        is_heldout = split_of(user_id, cfg) == "eval"
        for _, ex, _ in user_examples(user_id, rows, every, data_end, cut):
            if ex is None:
                continue
            serialized.append(ex.SerializeToString())
            users.append(ex.features.feature[F.USER_ID].bytes_list.value[0])
            heldout.append(is_heldout)
    return serialized, np.array(users, dtype=object), np.array(heldout, bool)


def embed(model_uri: str, serialized: list, item_ids: np.ndarray):
    """(user embeddings of the serialized examples, item embeddings) through the SavedModel's
    serving signatures, as the RetrievalEvaluator scores it."""
    import tensorflow as tf
    from tfx.utils import path_utils

    from pinrank.components.retrieval_evaluator.component import embed_items, embed_users

    model = tf.saved_model.load(path_utils.serving_model_path(model_uri))
    return embed_users(model, serialized), embed_items(model, item_ids)


def evaluate_windows(seed: int, stale: dict, fresh: dict, examples, *, cut: int, edges_days,
                     ecfg, anchors_per_window: int, uncut_positives, baselines_done: dict,
                     meta: dict):
    """Yields one result row per (age window, population): the stale model, the baselines (as
    of the anchor and frozen at the cut) and the retrained models of `fresh` ({days after the
    cut: artifact URIs}) on the same anchors (`examples`: out_of_time_examples). Populations:
    every user, and the held-out users alone. `baselines_done` caches the baselines across
    seeds (their anchors must then be identical)."""
    import tensorflow as tf

    from pinrank.components.event_example_gen import read_train_positives
    from pinrank.components.retrieval_evaluator import baselines as B
    from pinrank.components.retrieval_evaluator import metrics as M
    from pinrank.components.retrieval_evaluator import report
    from pinrank.components.retrieval_evaluator import stats as S
    from pinrank.components.retrieval_evaluator.component import baseline_metrics, compare_methods, parse_lists
    from pinrank.pipeline import features as F
    from pinrank.pipeline.artifacts import load_item_embeddings
    from pinrank.pipeline.config import DAY_S

    edges_s = [int(d * DAY_S) for d in edges_days]
    serialized, users, heldout = examples
    anchors = np.array([tf.train.Example.FromString(x).features.feature[F.ANCHOR_TS]
                        .int64_list.value[0] for x in serialized], np.int64)
    windows = window_index(anchors, cut, edges_s)
    keep = np.flatnonzero(cap_per_user(users, windows, anchors_per_window,
                                       seed=ecfg.bootstrap_seed))
    serialized, users, heldout = [serialized[i] for i in keep], users[keep], heldout[keep]
    anchors, windows = anchors[keep], windows[keep]
    lists = parse_lists(serialized, (F.HIST_ITEM, F.FUT_ITEM, F.HIST_POS, F.ANCHOR_TS))
    item_ids, _, interests = load_item_embeddings(stale["item_embeddings"])
    u_stale, i_stale = embed(stale["model"], serialized, item_ids)
    fresh_emb = {}
    for d, arts in fresh.items():
        ids, _, _ = load_item_embeddings(arts["item_embeddings"])
        if not np.array_equal(ids, item_ids):
            raise ValueError(f"the run cut at +{d} d has another catalog than the stale run")
        fresh_emb[d] = embed(arts["model"], serialized, item_ids)
    frozen = B.TrainPositives(*read_train_positives(stale["examples"]), item_ids)
    uncut = B.TrainPositives(*uncut_positives, item_ids)

    for w, population in itertools.product(range(len(edges_s) - 1), POPULATIONS):
        idx = np.flatnonzero((windows == w) & (heldout if population == "held-out" else True))
        if len(idx) == 0:
            continue
        sub = {name: [v[i] for i in idx] for name, v in lists.items()}
        lo_d, hi_d = edges_days[w], edges_days[w + 1]
        score = lambda u, i: M.retrieval_metrics(  # noqa: E731
            u[idx], i, item_ids, history=sub[F.HIST_ITEM], positives=sub[F.FUT_ITEM],
            item_interests=interests, k=ecfg.k, entropy_k=ecfg.entropy_k)
        methods = {report.CANDIDATE: score(u_stale, i_stale)}
        if (w, population) not in baselines_done:  # same anchors for every seed
            base = baseline_metrics(uncut, sub, item_ids, interests, ecfg)
            base.update({f"frozen_{k}": v for k, v in
                         baseline_metrics(frozen, sub, item_ids, interests, ecfg).items()})
            baselines_done[w, population] = (anchors[idx], users[idx], base)
        b_anchors, b_users, base = baselines_done[w, population]
        if not (np.array_equal(b_anchors, anchors[idx])
                and np.array_equal(b_users, users[idx])):
            raise ValueError(f"seed {seed}: window {w} has other eval anchors than the "
                             f"seeds before it")
        methods.update(base)
        fresh_name = None
        if lo_d in fresh_emb:
            fresh_name = f"fresh_{lo_d}d"
            methods[fresh_name] = score(*fresh_emb[lo_d])
        comparison = compare_methods(methods, list(users[idx]), ecfg)
        pop = report.strongest_popularity(methods, ecfg.k)
        key = f"recall@{ecfg.k}"
        row = {"seed": seed, "window_days": [lo_d, hi_d], "population": population, "cut": cut,
               "examples": int(len(idx)), "users": int(len(np.unique(users[idx]))),
               "popularity": pop, **meta,
               "recall": {n: {"mean": m[key], "interval": comparison[n]["interval"]}
                          for n, m in methods.items()},
               "lift_vs_popularity": {"lift": comparison[pop]["lift"],
                                      "interval": comparison[pop]["lift_interval"]},
               "lift_vs_cooccurrence": {"lift": comparison["cooccurrence"]["lift"],
                                        "interval": comparison["cooccurrence"][
                                            "lift_interval"]}}
        if fresh_name:
            values = {n: methods[n][M.PER_USER]["recall"] for n in (fresh_name, pop,
                                                                    report.CANDIDATE)}
            fc = S.compare(values, users[idx][methods[fresh_name][M.PER_USER]["user_index"]],
                           fresh_name, n_boot=ecfg.bootstrap_samples,
                           seed=ecfg.bootstrap_seed)
            row["fresh"] = {"name": fresh_name,
                            "lift_vs_popularity": {"lift": fc[pop]["lift"],
                                                   "interval": fc[pop]["lift_interval"]},
                            "vs_stale": {"lift": fc[report.CANDIDATE]["lift"],
                                         "interval": fc[report.CANDIDATE]["lift_interval"],
                                         "diff": fc[report.CANDIDATE]["diff"],
                                         "diff_interval": fc[report.CANDIDATE][
                                             "diff_interval"]}}
        yield row


def cmd_run(args) -> None:
    from pinrank.components.data.sources import prepare_dataset
    from pinrank.pipeline.config import DAY_S, apply_overrides, preset

    base_sets = [f"train.train_steps={args.train_steps}", *args.set]
    cfg = apply_overrides(preset(args.preset, args.source), base_sets)
    ecfg = cfg.eval
    fresh_days = [int(7 * w) for w in args.fresh_weeks]
    for d in fresh_days:
        if d not in args.edges_days[:-1]:
            raise ValueError(f"--fresh-weeks {d // 7}: {d} days is not the start of a window "
                             f"(--edges-days {args.edges_days})")

    data_dir = prepare_dataset(cfg.data, os.path.join(
        _run_home(args.home, args.seeds[0], args.cut_days), "data"))
    user_rows, (start_ts, end_ts) = read_user_events(data_dir)
    uncut_positives = uncut_train_positives(user_rows, cfg.examples)
    cut = start_ts + args.cut_days * DAY_S
    examples = out_of_time_examples(user_rows, cfg.examples, end_ts, cut)
    results: list[dict] = []
    baselines_done: dict = {}
    out = args.out or os.path.join(args.home, "results.json")
    for seed in args.seeds:
        def train(cut_days: int, anchors: int, seed: int = seed) -> dict:
            q = cut_quantile(start_ts, end_ts, start_ts + cut_days * DAY_S)
            start = time.time()
            summary = quality.pipeline_run(
                args.preset, args.source, [f"examples.eval_after_time_quantile={q!r}",
                                           f"examples.eval_anchors_per_user={anchors}",
                                           *base_sets],
                seed, _run_home(args.home, seed, cut_days))
            print(json.dumps({"seed": seed, "cut_days": cut_days,
                              "wall_s": round(time.time() - start, 1)}), flush=True)
            return run_artifacts(summary)

        stale = train(args.cut_days, args.max_eval_anchors)
        fresh = {d: train(args.cut_days + d, 1) for d in fresh_days}

        for row in evaluate_windows(
                seed, stale, fresh, examples, cut=cut, edges_days=args.edges_days, ecfg=ecfg,
                anchors_per_window=args.anchors_per_window, uncut_positives=uncut_positives,
                baselines_done=baselines_done,
                meta={"train_steps": args.train_steps, "preset": args.preset}):
            results.append(row)
            rec = row["recall"]
            print(json.dumps({"seed": seed, "window_days": row["window_days"],
                              "population": row["population"],
                              "examples": row["examples"], "users": row["users"],
                              **{n: round(rec[n]["mean"], 4) for n in rec},
                              "lift": round(row["lift_vs_popularity"]["lift"], 3)}), flush=True)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as fh:  # after every window: a stopped run keeps what it has
                json.dump(results, fh, indent=2)
    print(render_markdown(results))


# ------------------------------------------------------------------------------------- report
def _ci(v: dict, pct: bool = False) -> str:
    lo, hi = v["interval"]
    val = v.get("lift", v.get("mean"))
    if pct:
        return f"{val:+.0%} [{lo:+.0%}, {hi:+.0%}]"
    return f"{val:.3f} [{lo:.3f}, {hi:.3f}]"


def render_markdown(results: list[dict]) -> str:
    lines = ["| model age (days) | users | seed | users / anchors | stale model Recall@10 | "
             "fresh popularity | its Recall@10 | stale lift over it | frozen-at-T popularity "
             "Recall@10 | co-occurrence Recall@10 | retrained model Recall@10 | retrained lift "
             "over popularity | retrained vs stale |", "|" + "---|" * 13]
    for r in sorted(results, key=lambda r: (r["population"], r["window_days"], r["seed"])):
        rec, pop = r["recall"], r["popularity"]
        fresh = r.get("fresh")
        lines.append(
            f"| {r['window_days'][0]}–{r['window_days'][1]} | {r['population']} | {r['seed']} | "
            f"{r['users']} / {r['examples']} | {_ci(rec['candidate'])} | {pop} | "
            f"{_ci(rec[pop])} | {_ci(r['lift_vs_popularity'], True)} | "
            f"{_ci(rec['frozen_' + pop])} | {_ci(rec['cooccurrence'])} | "
            + (f"{_ci(rec[fresh['name']])} | {_ci(fresh['lift_vs_popularity'], True)} | "
               f"{_ci(fresh['vs_stale'], True)} |" if fresh else "— | — | — |"))
    return "\n".join(lines)


def plot(results: list[dict], path: str, population: str = "all") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = [r for r in results if r["population"] == population]
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax_r, ax_l = fig.subplots(1, 2)
    seeds = sorted({r["seed"] for r in results})

    def err(v, x):
        return [[x - v["interval"][0]], [v["interval"][1] - x]]

    for j, seed in enumerate(seeds):
        rows = [r for r in results if r["seed"] == seed]
        off = (j - (len(seeds) - 1) / 2) * 0.25
        for r in rows:
            mid = sum(r["window_days"]) / 2 / 7 + off
            c = r["recall"]["candidate"]
            ax_r.errorbar(mid, c["mean"], yerr=err(c, c["mean"]), fmt="o", color=f"C{j}",
                          capsize=3, label=f"model trained to T (seed {seed})"
                          if r is rows[0] else None)
            lift = r["lift_vs_popularity"]
            ax_l.errorbar(mid, lift["lift"], yerr=err(lift, lift["lift"]), fmt="o",
                          color=f"C{j}", capsize=3,
                          label=f"trained to T (seed {seed})" if r is rows[0] else None)
            if r.get("fresh"):
                first_fresh = r is next(x for x in rows if x.get("fresh"))
                f = r["recall"][r["fresh"]["name"]]
                ax_r.errorbar(mid + 0.35, f["mean"], yerr=err(f, f["mean"]), fmt="s",
                              mfc="none", color=f"C{j}", capsize=3,
                              label=f"retrained at window start (seed {seed})"
                              if first_fresh else None)
                fl = r["fresh"]["lift_vs_popularity"]
                ax_l.errorbar(mid + 0.35, fl["lift"], yerr=err(fl, fl["lift"]), fmt="s",
                              mfc="none", color=f"C{j}", capsize=3,
                              label=f"retrained (seed {seed})" if first_fresh else None)
    first = [r for r in results if r["seed"] == seeds[0]]
    mids = [sum(r["window_days"]) / 2 / 7 for r in first]
    for name, style, label in (("popularity", "k--", "popularity as of the anchor"),
                               ("cooccurrence", "k:", "co-occurrence as of the anchor")):
        vals = [r["recall"][r["popularity"] if name == "popularity" else name]["mean"]
                for r in first]
        ax_r.plot(mids, vals, style, label=label)
    ax_r.set_xlabel("model age: weeks after the training cut T (window midpoints)")
    ax_r.set_ylabel("Recall@10 (95 % CI over users)")
    ax_r.set_title(f"Recall@10 vs model age ({population} users)")
    ax_r.legend(fontsize=7)
    ax_l.axhline(0.0, color="k", lw=0.8)
    ax_l.set_xlabel("model age: weeks after T")
    ax_l.set_ylabel("lift over the strongest popularity (95 % CI)")
    ax_l.set_title("Lift over popularity as of the anchor")
    ax_l.legend(fontsize=7)
    for ax in (ax_r, ax_l):
        ax.set_xticks([e / 7 for e in sorted({d for r in first for d in r["window_days"]})])
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def cmd_report(args) -> None:
    results = [r for p in args.results for r in json.load(open(p))]
    print(render_markdown(results))
    if args.png:
        plot(results, args.png)
        print(args.png)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--preset", default="cpu")
    r.add_argument("--source", default="movielens")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    r.add_argument("--cut-days", type=int, default=91, help="T: days after the data's start")
    r.add_argument("--edges-days", nargs="+", type=int, default=list(DEFAULT_EDGES_DAYS),
                   help="model-age windows after T, in days")
    r.add_argument("--fresh-weeks", nargs="*", type=int, default=[4],
                   help="retrain cut at T + this many weeks, scored on the window starting there")
    r.add_argument("--anchors-per-window", type=int, default=3)
    r.add_argument("--max-eval-anchors", type=int, default=1000,
                   help="examples.eval_anchors_per_user of the stale run (all anchors)")
    r.add_argument("--train-steps", type=int, default=1500)
    r.add_argument("--set", action="append", default=[], help="override for every run")
    r.add_argument("--home", default="runs/staleness")
    r.add_argument("--out", help="results JSON (default <home>/results.json)")
    r.set_defaults(func=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    p.add_argument("--png")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
