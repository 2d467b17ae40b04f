"""RankerBaselineCheck: the ranker must beat non-learned rankers on the same requests.

TFMA's Evaluator gates the ranker on value thresholds and on the last blessed ranker; it cannot
say whether a learned ranker is better than a count. This component scores the eval split's
requests with
- the candidate ranker (its `serving_default` signature, the path TFMA uses),
- popularity as of the request: positive engagements of every user strictly before the request
  time, over all time and over the trailing `popularity_window_days` (the stronger of the two is
  "popularity"),
- the PinnerFormer dot product alone: <pf_embedding as of the previous day, item tower(candidate)>
  from the PinnerFormer model that built the examples,
and blesses only when TFMA blessed the candidate (value thresholds) *and* it beats both
non-learned rankers on HIT@k/repin and AUC/repin by more than
`ranker_eval.min_lift_over_baselines` (relative) *and* it is not worse than the last blessed
ranker. That last check is paired, over requests: both rankers score the same eval requests, a
bootstrap over requests gives the difference's distribution, and the candidate is refused only
when, with `gate_confidence`, its HIT@k/repin is below the last blessed one's by more than
`max_hit_drop` or its AUC on some head by more than `max_auc_drop` (a point difference of two
equally good models is noise; docs/protocol.md). With `ranker_eval.baselines_per_pf_present`
the non-learned rankers must also be beaten on each pf_present slice (requests of users with
and without a PinnerFormer embedding; the dot product only where there is one). Pusher and the
next run's baseline resolver read this component's blessing, so "blessed" means the whole gate
passed. `metrics.json` and `summary.html` explain the verdict.
"""
# No `from __future__ import annotations`: the @component parser needs real annotation objects.
import html
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from pinrank.components.data import events as ev
from pinrank.components.retrieval_evaluator import stats
from pinrank.components.retrieval_evaluator.baselines import TrainPositives
from pinrank.components.types import EventLog, ItemEmbeddings
from pinrank.models.realtime import metrics as RM
from pinrank.pipeline import features as F
from pinrank.pipeline.artifacts import RANKER, load_item_embeddings, set_blessing_properties
from pinrank.pipeline.config import DAY_S, PipelineConfig

HEAD = "repin"
BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"


def split_records(examples_uri: str, split: str = "eval") -> tf.data.Dataset:
    """The serialized examples of one split of RankingExampleGen's output."""
    files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
    return tf.data.TFRecordDataset(files, compression_type="GZIP")


def read_requests(examples_uri: str, split: str = "eval") -> Dict[str, Any]:
    """Serialized examples and the fields the non-learned rankers need, one row per example."""
    rows = [r.numpy() for r in split_records(examples_uri, split)]
    if not rows:
        raise ValueError(f"no {split} examples under {examples_uri}/Split-{split}")
    return requests_of(rows)


def requests_of(rows: List[bytes]) -> Dict[str, Any]:
    """`read_requests`' fields of these serialized examples."""
    feats = [tf.train.Example.FromString(r).features.feature for r in rows]
    labels = np.array([[f[F.label_key(h)].int64_list.value[0] for h in F.HEADS] for f in feats],
                      np.int64)
    return {
        "serialized": rows,
        "request_id": np.array([f[F.REQUEST_ID].bytes_list.value[0] for f in feats], object),
        "request_ts": np.array([f[F.REQUEST_TS].int64_list.value[0] for f in feats], np.int64),
        "cand_item": np.array([f[F.CAND_ITEM].int64_list.value[0] for f in feats], np.int64),
        "pf_embedding": np.array([list(f[F.PF_EMBEDDING].float_list.value) for f in feats],
                                 np.float32),
        "pf_present": np.array([f[F.PF_PRESENT].int64_list.value[0] for f in feats], np.int64),
        "labels": labels,  # [N, len(HEADS)]
        "label": labels[:, F.HEADS.index(HEAD)],
    }


def read_positives(input_base: str, item_ids: np.ndarray) -> TrainPositives:
    """Every user's positive engagements in the dataset, for popularity as of a time."""
    items, ts = [], []
    for path in ev.event_shards(input_base):
        df = ev.read_event_shard(path)
        pos = ev.is_positive(df["action"].to_numpy(), df["duration"].to_numpy())
        items.append(df["item_id"].to_numpy(np.int64)[pos])
        ts.append(df["timestamp"].to_numpy(np.int64)[pos])
    items, ts = np.concatenate(items), np.concatenate(ts)
    return TrainPositives(np.zeros(len(items), np.int64), items, ts, item_ids)


def popularity_scores(pos: TrainPositives, item_ids: np.ndarray, request_ts: np.ndarray,
                      cand_item: np.ndarray, window_days: int) -> Dict[str, np.ndarray]:
    """Per example: the candidate's engagement count before the request (all time / window).
    Computed once per distinct request time."""
    sort_idx = np.argsort(item_ids, kind="stable")
    at = np.minimum(np.searchsorted(item_ids[sort_idx], cand_item), len(item_ids) - 1)
    known = item_ids[sort_idx][at] == cand_item
    col = sort_idx[at]
    out = {"popularity_all": np.zeros(len(cand_item)),
           f"popularity_{window_days}d": np.zeros(len(cand_item))}
    for t in np.unique(request_ts):
        rows = np.flatnonzero(request_ts == t)
        all_time = pos.counts_before(int(t))
        window = pos.counts_before(int(t), int(t) - window_days * DAY_S)
        out["popularity_all"][rows] = np.where(known[rows], all_time[col[rows]], 0.0)
        # ties in the window broken by all-time counts (< 1 apart, never reorders counts)
        sec = all_time[col[rows]] / (all_time.max() + 1.0)
        out[f"popularity_{window_days}d"][rows] = np.where(known[rows],
                                                           window[col[rows]] + 0.5 * sec, 0.0)
    return out


def _batched(fn, inputs: Dict[str, np.ndarray], n: int, batch: int = 2048) -> np.ndarray:
    return np.concatenate([fn(**{k: tf.constant(v[i:i + batch]) for k, v in inputs.items()})
                           for i in range(0, n, batch)])


def score_heads(ranker_dir: str, req: Dict[str, np.ndarray]) -> np.ndarray:
    """[N, len(HEADS)] scores of a ranker's `serving_default` signature, the path TFMA uses."""
    return score_signature(tf.saved_model.load(ranker_dir).signatures["serving_default"], req)


def score_signature(serving_default, req: Dict[str, np.ndarray]) -> np.ndarray:
    """`score_heads` with the signature in hand (a SavedModel's, or serving_model.signatures')."""
    def heads(examples):
        out = serving_default(examples=examples)
        return np.stack([out[h].numpy().reshape(-1) for h in F.HEADS], axis=1)
    return _batched(heads, {"examples": np.array(req["serialized"], object)}, len(req["label"]))


def score_all(candidate_heads: np.ndarray, pinnerformer_dir: str, req: Dict[str, np.ndarray],
              positives: TrainPositives, item_ids: np.ndarray, window_days: int
              ) -> Dict[str, np.ndarray]:
    n = len(req["label"])
    scores = {"candidate": candidate_heads[:, F.HEADS.index(HEAD)]}
    pf = tf.saved_model.load(pinnerformer_dir).signatures["item_embedding"]
    cand_emb = _batched(lambda item_id: pf(item_id=item_id)["embedding"].numpy(),
                        {"item_id": req["cand_item"]}, n)
    scores["pinnerformer_dot"] = np.sum(cand_emb * req["pf_embedding"], axis=1)
    scores.update(popularity_scores(positives, item_ids, req["request_ts"], req["cand_item"],
                                    window_days))
    return scores


def compare(scores: Dict[str, np.ndarray], labels: np.ndarray, request_id: np.ndarray,
            k: int) -> Dict[str, Dict[str, float]]:
    return {name: {f"hit@{k}": float(RM.hit_at_k(s, labels, request_id, k=k)[0]),
                   "auc": float(RM.auc(s, labels))} for name, s in scores.items()}


def compare_pf_present(scores: Dict[str, np.ndarray], labels: np.ndarray,
                       request_id: np.ndarray, pf_present: np.ndarray, k: int
                       ) -> Dict[str, Dict[str, Dict[str, float]]]:
    """`compare` on each pf_present slice ("pf_present=0", "pf_present=1"; a value absent from
    the requests has no entry). pf_present is per request, so a slice holds whole requests.
    Without an embedding the PinnerFormer dot product is 0 for every candidate (no ranking at
    all), so on pf_present=0 it is left out."""
    out = {}
    for v in np.unique(pf_present):
        rows = pf_present == v
        sliced = {n: s[rows] for n, s in scores.items() if v or n != "pinnerformer_dot"}
        out[f"{F.PF_PRESENT}={int(v)}"] = compare(sliced, labels[rows], request_id[rows], k)
    return out


def vs_last_blessed(candidate: np.ndarray, baseline: np.ndarray, labels: np.ndarray,
                    request_id: np.ndarray, k: int, max_hit_drop: float, max_auc_drop: float,
                    confidence: float = 0.95, n_boot: int = 1000, seed: int = 0) -> dict:
    """Paired comparison with the last blessed ranker on the same requests.

    candidate / baseline / labels: [N, len(HEADS)]. HIT@k of the gate head is a per-request
    mean (cluster bootstrap of the per-request values); AUC of every head pools the examples,
    and its bootstrap resamples whole requests. A metric refuses when the one-sided
    `confidence` upper bound of (candidate - baseline) is below -max_drop."""
    rows, reasons = {}, []
    h = F.HEADS.index(HEAD)
    cand_hit, keys = RM.hit_at_k_per_query(candidate[:, h], labels[:, h], request_id, k)
    base_hit, _ = RM.hit_at_k_per_query(baseline[:, h], labels[:, h], request_id, k)
    c = stats.compare({"candidate": cand_hit[:, 0], "last_blessed": base_hit[:, 0]}, keys,
                      "candidate", n_boot=n_boot, confidence=confidence, seed=seed)["last_blessed"]
    checks: List[tuple] = [(f"hit@{k}/{HEAD}", float(cand_hit.mean()), float(base_hit.mean()),
               c["diff_interval"], c["diff_upper"], max_hit_drop)]
    for j, head in enumerate(F.HEADS):
        if (labels[:, j] > 0).all() or not (labels[:, j] > 0).any():
            continue  # AUC undefined without both classes
        a, b = RM.auc(candidate[:, j], labels[:, j]), RM.auc(baseline[:, j], labels[:, j])
        reps = stats.paired_auc_replicates(candidate[:, j], baseline[:, j], labels[:, j],
                                           request_id, n_boot, seed)
        checks.append((f"auc/{head}", a, b, stats.interval(reps),
                       float(np.nanquantile(reps, confidence)), max_auc_drop))
    for name, cand, base, interval, upper, drop in checks:
        rows[name] = {"candidate": cand, "last_blessed": base, "diff": cand - base,
                      "diff_interval": interval, "diff_upper": upper, "max_drop": drop}
        if upper < -drop:
            reasons.append(f"{name} {cand:.4f} is below the last blessed ranker's {base:.4f} by more "
                           f"than {drop} with {confidence:.0%} confidence (upper bound of the "
                           f"paired difference {upper:+.4f})")
    return {"metrics": rows, "reasons": reasons, "confidence": confidence,
            "rule": "refused when the one-sided upper bound of candidate - last blessed < -max_drop "
                    "(paired bootstrap over requests)"}


def _lifts(metrics: Dict[str, Dict[str, float]], k: int, min_lift: float, where: str = ""
           ) -> tuple:
    """(stronger popularity, {"<metric> vs <baseline>": lift}, reasons) of the candidate against
    the stronger popularity ranker (by HIT@k) and, when present, the PinnerFormer dot product."""
    pops = [n for n in metrics if n.startswith("popularity_")]
    pop = max(pops, key=lambda n: metrics[n][f"hit@{k}"])
    cand = metrics["candidate"]
    lifts, reasons = {}, []
    for name in [n for n in (pop, "pinnerformer_dot") if n in metrics]:
        for key in (f"hit@{k}", "auc"):
            base = metrics[name][key]
            lift = cand[key] / base - 1.0 if base > 0 else float("inf")
            lifts[f"{key} vs {name}"] = lift
            if not lift > min_lift:
                reasons.append(f"{key}/{HEAD}{where} {cand[key]:.4f} does not beat {name}'s "
                               f"{base:.4f} (lift {lift:+.1%} <= {min_lift:+.1%})")
    return pop, lifts, reasons


def decide(metrics: Dict[str, Dict[str, float]], k: int, min_lift: float,
           tfma_blessed: bool, required: bool = True, last_blessed: Optional[dict] = None,
           slices: Optional[Dict[str, Dict[str, Dict[str, float]]]] = None) -> dict:
    """Blessed iff TFMA blessed, the candidate is not confidently worse than the last blessed
    ranker (`last_blessed`, from vs_last_blessed; None on a first run), and it beats popularity
    (the stronger of the popularity rankers by HIT@k) and the PinnerFormer dot product on HIT@k
    and AUC, overall and on each slice of `slices` (compare_pf_present; its own stronger
    popularity per slice). The baseline checks gate only when `required`; the lifts are
    reported either way."""
    reasons = [] if tfma_blessed else ["TFMA Evaluator did not bless the candidate "
                                       "(value thresholds)"]
    if last_blessed is not None:
        reasons += last_blessed["reasons"]
    pop, lifts, lost = _lifts(metrics, k, min_lift)
    slice_lifts = {}
    for name, m in (slices or {}).items():
        slice_pop, lifted, slice_lost = _lifts(m, k, min_lift, f" on {name}")
        slice_lifts[name] = {"popularity": slice_pop, "lifts": lifted}
        lost += slice_lost
    if required:
        reasons += lost
    return {"blessed": not reasons, "reasons": reasons, "popularity": pop, "lifts": lifts,
            "slice_lifts": slice_lifts, "last_blessed": last_blessed,
            "thresholds": {"k": k, "min_lift_over_baselines": min_lift if required else None}}


def _table(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(
        f"<td>{v:.4f}</td>" for v in m.values()) + "</tr>" for n, m in metrics.items())
    head = "".join(f"<th>{html.escape(key)}/{HEAD}</th>" for key in next(iter(metrics.values())))
    return (f'<table border="1" cellpadding="4"><tr><th>ranker</th>{head}</tr>{rows}</table>')


def write_report(out_dir: str, metrics: dict, gate: dict, num_requests: int,
                 slices: Optional[dict] = None) -> None:
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(os.path.join(out_dir, "metrics.json"), "w") as fh:
        fh.write(json.dumps({"methods": metrics, "gate": gate, "num_requests": num_requests,
                             "slices": slices or {}}, indent=2, sort_keys=True))
    sliced = "".join(f"<h2>{html.escape(name)}</h2>{_table(m)}"
                     for name, m in (slices or {}).items())
    verdict = "BLESSED" if gate["blessed"] else "NOT BLESSED"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in gate["reasons"])
    last = gate.get("last_blessed")
    paired = "<p>First ranker: no last blessed ranker to compare with.</p>" if last is None else (
        f"<h2>vs the last blessed ranker (paired, same requests)</h2><p>{html.escape(last['rule'])}"
        f", confidence {last['confidence']:.0%}</p><table border=\"1\" cellpadding=\"4\"><tr>"
        "<th>metric</th><th>candidate</th><th>last blessed</th><th>difference [95% interval]</th>"
        "<th>upper bound</th><th>max drop</th></tr>" + "".join(
            f"<tr><td>{html.escape(n)}</td><td>{r['candidate']:.4f}</td><td>{r['last_blessed']:.4f}"
            f"</td><td>{r['diff']:+.4f} [{r['diff_interval'][0]:+.4f}, {r['diff_interval'][1]:+.4f}]"
            f"</td><td>{r['diff_upper']:+.4f}</td><td>{r['max_drop']}</td></tr>"
            for n, r in last["metrics"].items()) + "</table>")
    with tf.io.gfile.GFile(os.path.join(out_dir, "summary.html"), "w") as fh:
        fh.write(f"""<!DOCTYPE html><html><head><meta charset="utf-8">
<title>Ranker vs non-learned rankers</title></head><body style="font-family:sans-serif">
<h1>Ranker vs non-learned rankers ({num_requests} eval requests)</h1><h2>{verdict}</h2>
<ul>{reasons}</ul>{_table(metrics)}
{sliced}{paired}</body></html>""")


@component
def RankerBaselineCheck(
    examples: InputArtifact[standard_artifacts.Examples],
    model: InputArtifact[standard_artifacts.Model],
    pinnerformer: InputArtifact[standard_artifacts.Model],
    tfma_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    item_embeddings: InputArtifact[ItemEmbeddings],
    evaluation: OutputArtifact[standard_artifacts.ModelEvaluation],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    events: InputArtifact[EventLog],
    config_json: Parameter[str],
    baseline_model: InputArtifact[standard_artifacts.Model] = None,
) -> None:
    """Ranking Examples (eval split), candidate ranker, the PinnerFormer that built the
    examples, TFMA's blessing, the catalog (ItemEmbeddings), the dataset's events and the last
    blessed ranker (absent on a first run) -> the final ranker blessing."""
    input_base = events.uri
    cfg = PipelineConfig.from_json(config_json).ranker_eval
    req = read_requests(examples.uri)
    pf_dir = path_utils.serving_model_path(pinnerformer.uri)
    item_ids = load_item_embeddings(item_embeddings.uri)[0]
    cand_heads = score_heads(path_utils.serving_model_path(model.uri), req)
    scores = score_all(cand_heads, pf_dir, req, read_positives(input_base, item_ids), item_ids,
                       cfg.popularity_window_days)
    metrics = compare(scores, req["label"], req["request_id"], cfg.hit_k)
    slices = (compare_pf_present(scores, req["label"], req["request_id"], req["pf_present"],
                                 cfg.hit_k) if cfg.baselines_per_pf_present else None)
    tfma_blessed = tf.io.gfile.exists(os.path.join(tfma_blessing.uri, BLESSED_FILE))
    last = None
    if baseline_model is not None and baseline_model.uri != model.uri:
        base_heads = score_heads(path_utils.serving_model_path(baseline_model.uri), req)
        last = vs_last_blessed(cand_heads, base_heads, req["labels"], req["request_id"],
                               cfg.hit_k, cfg.max_hit_drop, cfg.max_auc_drop, cfg.gate_confidence,
                               cfg.bootstrap_samples, cfg.bootstrap_seed)
    gate = decide(metrics, cfg.hit_k, cfg.min_lift_over_baselines, tfma_blessed,
                  required=cfg.require_beating_baselines, last_blessed=last, slices=slices)
    write_report(evaluation.uri, metrics, gate, len(np.unique(req["request_id"])), slices)
    blessed = bool(gate["blessed"])
    set_blessing_properties(blessing, model, blessed, RANKER, baseline_model)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE),
                           "w") as fh:
        fh.write(json.dumps(gate))
