"""RetrievalEvaluator: PinnerFormer's offline protocol as a blessing component.

For every eval-split user (disjoint from training users) the candidate SavedModel embeds the
history before the anchor through its own `serving_default` signature (the exact serving path),
the pin tower embeds the whole catalog through `item_embedding`, and metrics.py scores Recall@k,
P90 coverage@k and interest entropy@50 (docs/protocol.md, "Retrieval evaluation
(RetrievalEvaluator)"). The same is done for the last blessed model when the
LatestBlessedModelStrategy resolver provides one, on the same users, in the same run.

The ModelBlessing carries the custom properties that Pusher (`blessed`) and
LatestBlessedModelStrategy (`blessed`, `current_model_id`) read, like the stock Evaluator's.
"""

import json
import os
from typing import Dict, Iterable, List

import numpy as np
import tensorflow as tf
from absl import logging
from tfx import v1 as tfx
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from pinrank.components.data import events as E
from pinrank.components.event_example_gen import read_train_positives
from pinrank.components.retrieval_evaluator import baselines as B
from pinrank.components.retrieval_evaluator import metrics as M
from pinrank.components.retrieval_evaluator import report
from pinrank.components.retrieval_evaluator import slices as SL
from pinrank.components.retrieval_evaluator import stats as S
from pinrank.components.types import EventLog, ItemEmbeddings
from pinrank.pipeline import features as F
from pinrank.pipeline.artifacts import PINNERFORMER, load_item_embeddings, set_blessing_properties
from pinrank.pipeline.config import PipelineConfig

BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"


def read_examples(files: Iterable[str]) -> List[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(list(files), compression_type="GZIP")]


def parse_lists(serialized: List[bytes], names: Iterable[str]) -> Dict[str, List[np.ndarray]]:
    """Per-example int64 lists of the given features, without TF batching overhead."""
    out: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    for s in serialized:
        ex = tf.train.Example.FromString(s)
        for n in out:
            out[n].append(np.asarray(ex.features.feature[n].int64_list.value, dtype=np.int64))
    return out


def embed_users(model, serialized: List[bytes], batch_size: int = 256) -> np.ndarray:
    fn = model.signatures["serving_default"]
    parts = [fn(examples=tf.constant(serialized[i:i + batch_size]))["embedding"].numpy()
             for i in range(0, len(serialized), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def embed_items(model, item_ids: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    fn = model.signatures["item_embedding"]
    parts = [fn(item_id=tf.constant(item_ids[i:i + batch_size]))["embedding"].numpy()
             for i in range(0, len(item_ids), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def evaluate_saved_model(model_dir: str, serialized: List[bytes], lists: Dict[str, list],
                         item_ids: np.ndarray, interests: np.ndarray, k: int,
                         entropy_k: int) -> Dict:
    model = tf.saved_model.load(model_dir)
    return M.retrieval_metrics(
        embed_users(model, serialized), embed_items(model, item_ids), item_ids,
        history=lists[F.HIST_ITEM], positives=lists[F.FUT_ITEM], item_interests=interests,
        k=k, entropy_k=entropy_k)


def evaluate_baselines(examples_uri: str, lists: Dict[str, list], item_ids: np.ndarray,
                       interests, cfg) -> Dict[str, Dict]:
    """Metrics of the non-learned baselines (baselines.py) on the same eval examples."""
    users, items, ts = read_train_positives(examples_uri)
    return baseline_metrics(B.TrainPositives(users, items, ts, item_ids), lists, item_ids,
                            interests, cfg)


def baseline_metrics(train: B.TrainPositives, lists: Dict[str, list], item_ids: np.ndarray,
                     interests, cfg) -> Dict[str, Dict]:
    """Same, counting the given training positives (benchmarks/staleness.py passes uncut ones)."""
    anchors = np.array([a[0] for a in lists[F.ANCHOR_TS]], np.int64)
    recent = B.recent_positive_positions(lists[F.HIST_ITEM], lists[F.HIST_POS], item_ids,
                                         cfg.cooccurrence_history)
    scorers = B.baseline_scorers(train, anchors, recent, (cfg.popularity_window_days,),
                                 seed=cfg.bootstrap_seed)
    out = {}
    for name, score_batch in scorers.items():
        logging.info("RetrievalEvaluator: baseline %s", name)
        out[name] = M.scored_metrics(score_batch, len(anchors), item_ids, lists[F.HIST_ITEM],
                                     lists[F.FUT_ITEM], interests, k=cfg.k,
                                     entropy_k=cfg.entropy_k, batch_size=64)
    return out


def compare_methods(methods: Dict[str, Dict], users: List[bytes], cfg) -> Dict[str, dict]:
    """Paired cluster bootstrap (over users) of every method's per-user recall@k."""
    index = methods[report.CANDIDATE][M.PER_USER]["user_index"]
    for name, m in methods.items():
        if not np.array_equal(m[M.PER_USER]["user_index"], index):
            raise ValueError(f"{name} was scored on other users than the candidate")
    values = {name: m[M.PER_USER]["recall"] for name, m in methods.items()}
    return S.compare(values, np.asarray(users, dtype=object)[index], report.CANDIDATE,
                     n_boot=cfg.bootstrap_samples, confidence=cfg.gate_confidence,
                     seed=cfg.bootstrap_seed)


def evaluate_slices(methods: Dict[str, Dict], users: List[bytes], hist_items: List[np.ndarray],
                    user_table, cfg) -> dict:
    """slices.slice_report on history length and every user attribute of `user_table`
    (events.read_users; None: no demographic slices), against the strongest popularity."""
    families = {SL.HISTORY_LENGTH: SL.history_labels([len(h) for h in hist_items],
                                                     cfg.history_length_edges)}
    families.update(SL.attribute_labels(users, user_table))
    return SL.slice_report(methods, users, families, candidate=report.CANDIDATE,
                           popularity=report.strongest_popularity(methods, cfg.k),
                           min_users=cfg.min_slice_users, n_boot=cfg.bootstrap_samples,
                           seed=cfg.bootstrap_seed)


@tfx.dsl.components.component
def RetrievalEvaluator(
    model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples],
    item_embeddings: tfx.dsl.components.InputArtifact[ItemEmbeddings],
    evaluation: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelBlessing],
    events: tfx.dsl.components.InputArtifact[EventLog],
    config_json: tfx.dsl.components.Parameter[str],
    baseline_model: tfx.dsl.components.InputArtifact[standard_artifacts.Model] = None,
) -> None:
    """events: the canonical dataset, read only for its optional user attributes
    (users.parquet -> demographic slices)."""
    input_base = events.uri
    cfg = PipelineConfig.from_json(config_json).eval
    files = tf.io.gfile.glob(os.path.join(examples.uri, "Split-eval", "*"))
    serialized = read_examples(files)
    if not serialized:
        raise ValueError(f"no eval examples under {examples.uri}/Split-eval")
    lists = parse_lists(serialized, (F.HIST_ITEM, F.FUT_ITEM, F.HIST_POS, F.ANCHOR_TS))
    users = [tf.train.Example.FromString(s).features.feature[F.USER_ID].bytes_list.value[0]
             for s in serialized]
    item_ids, _, interests = load_item_embeddings(item_embeddings.uri)

    def run(artifact) -> Dict:
        path = path_utils.serving_model_path(artifact.uri)
        logging.info("RetrievalEvaluator: scoring %d eval examples against %d items with %s",
                     len(serialized), len(item_ids), path)
        return evaluate_saved_model(path, serialized, lists, item_ids, interests, cfg.k,
                                    cfg.entropy_k)

    methods = {report.CANDIDATE: run(model)}
    if baseline_model is not None:
        methods[report.LAST_BLESSED] = run(baseline_model)
    methods.update(evaluate_baselines(examples.uri, lists, item_ids, interests, cfg))
    comparison = compare_methods(methods, users, cfg)
    slices = evaluate_slices(methods, users, lists[F.HIST_ITEM], E.read_users(input_base), cfg)
    gate = report.gate_decision(methods, comparison, k=cfg.k, min_recall=cfg.min_recall,
                                min_coverage=cfg.min_coverage,
                                max_recall_drop=cfg.max_recall_drop,
                                min_lift_over_popularity=(cfg.min_lift_over_popularity
                                                          if cfg.require_beating_popularity
                                                          else None),
                                confidence=cfg.gate_confidence, slices=slices,
                                gate_slices=cfg.gate_slices,
                                min_slice_lift_over_popularity=(
                                    cfg.min_slice_lift_over_popularity
                                    if cfg.require_beating_popularity else None))
    report.write_report(evaluation.uri, methods, comparison, gate, slices)
    logging.info("RetrievalEvaluator: %s; %s", "blessed" if gate["blessed"] else "NOT blessed",
                 "; ".join(gate["reasons"]) or "all checks pass")

    blessed = bool(gate["blessed"])
    set_blessing_properties(blessing, model, blessed, PINNERFORMER, baseline_model)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE),
                           "w") as fh:
        fh.write(json.dumps(gate))
    metrics = methods[report.CANDIDATE]
    for key in (f"recall@{cfg.k}", f"p90_coverage@{cfg.k}", f"interest_entropy@{cfg.entropy_k}"):
        if key in metrics:
            evaluation.set_float_custom_property(key, float(metrics[key]))
    pop = gate.get("popularity")
    if pop:
        evaluation.set_float_custom_property("lift_over_popularity",
                                             float(comparison[pop]["lift"]))
