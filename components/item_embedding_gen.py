"""ItemEmbeddingGen: frozen PinSage-analogue item embeddings from TRAINING users only.

PinnerFormer consumes frozen item embeddings (PinSage at Pinterest). Our analogue combines a
collaborative part learned from who-engaged-with-what and a content part from the catalog:

  inputs   examples (Examples from EventExampleGen, splits train/eval), items (ItemCatalog),
           config_json (PipelineConfig JSON; its `.items` section is used)
  output   item_embeddings (ItemEmbeddings):
             item_embeddings.npz  item_id [N] int64 (every catalog item, sorted by id),
                                  embedding [N, dim] float32, interests [N, K] int32 (-1 padded)
             meta.json            dim, cf_dim, method, counts (users, cold items, truncation, ...)
           custom properties: num_items, dim, cf_dim, n_cold_items, n_train_users (ints)

Method
  1. Beam: read ONLY `Split-train` (training users). Per example, positive items are the history
     items with hist_pos == 1 plus every fut_item (positives after the anchor), each with its
     timestamp. CombinePerKey(user_id) takes the union across a user's (overlapping) anchors,
     keeping each item's latest timestamp. A user's set is capped at `max_items_per_user`
     (default 256), keeping the most recent items (ties: smaller item id); the number of
     truncated users / dropped items goes into meta.json.
  2. numpy/scipy (components/item_embedding/embedding.py, see its docstring for formulas):
     item-item co-engagement counts (users engaging with both), positive PMI with shift 0 and
     context smoothing alpha = 0.75, truncated SVD (k = cf_dim capped by the matrix; dense
     LAPACK for small matrices, ARPACK `svds` with a seeded v0 otherwise) -> U * sqrt(S),
     L2-normalised rows; items without training signal ("cold") get zeros in this part.
  3. Content part (dim - cf_dim dims): the catalog content vector, seeded Gaussian random
     projection if wider, zero-padded if narrower, L2-normalised.
  4. Final = concat(cf, content), each part scaled to norm 1/sqrt(2) where present.
  Deterministic for a given `items.seed` and input data (user order does not matter).

Leakage guarantee (structural): the executor resolves the URI of the `train` split only
(`artifact_utils.get_split_uris([examples], "train")`) and never computes, lists or opens the
eval split's path. Eval users' histories and labels therefore cannot influence the embeddings
that the model is later evaluated with. tests/unit/test_item_embedding_gen.py checks that
changing (even corrupting) the eval split leaves the output byte-identical.
"""
# No `from __future__ import annotations`: the @component parser needs real annotation objects.
import io
import json
import os
import uuid
from typing import Dict, Iterable, List, Tuple

import apache_beam as beam
import pandas as pd
import tensorflow as tf

# Same objects as `tfx.v1.dsl.components.*` / `tfx.v1.types.standard_artifacts`; importing the
# implementation modules avoids `tfx.v1`'s kfp / aiplatform imports (~15 s per process).
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from pinrank.components.item_embedding.embedding import build_item_embeddings, interests_matrix, sorted_catalog
from pinrank.components.types import ItemCatalog, ItemEmbeddings
from pinrank.pipeline import artifacts, features
from pinrank.pipeline.config import PipelineConfig

TRAIN_SPLIT = "train"
ITEMS_FILE = "items.parquet"


# --- Beam side: per training user, the union of positive items ---------------------------------

def example_positives(serialized: bytes) -> Tuple[bytes, List[Tuple[int, int]]]:
    """A serialized anchor example -> (user_id, [(item_id, timestamp)] of its positives)."""
    f = tf.train.Example.FromString(serialized).features.feature
    user = f[features.USER_ID].bytes_list.value
    if len(user) != 1:
        raise ValueError(f"example needs exactly one {features.USER_ID}, got {len(user)}")
    h_item = f[features.HIST_ITEM].int64_list.value
    h_pos = f[features.HIST_POS].int64_list.value
    h_ts = f[features.HIST_TS].int64_list.value
    fut = f[features.FUT_ITEM].int64_list.value
    fut_ts = f[features.FUT_TS].int64_list.value
    if not len(h_item) == len(h_pos) == len(h_ts):
        raise ValueError(f"user {user[0]!r}: hist_item/hist_pos/hist_ts lengths differ "
                         f"({len(h_item)}, {len(h_pos)}, {len(h_ts)})")
    if len(fut) != len(fut_ts):
        raise ValueError(f"user {user[0]!r}: fut_item/fut_ts lengths differ")
    pos = [(int(i), int(t)) for i, p, t in zip(h_item, h_pos, h_ts) if p == 1]
    pos.extend((int(i), int(t)) for i, t in zip(fut, fut_ts))
    return bytes(user[0]), pos


class LatestPositives(beam.CombineFn):
    """Union of (item, ts) pairs as {item: latest ts}."""

    def create_accumulator(self) -> Dict[int, int]:
        return {}

    def add_input(self, acc: Dict[int, int], pairs: Iterable[Tuple[int, int]]) -> Dict[int, int]:
        for item, ts in pairs:
            if item not in acc or ts > acc[item]:
                acc[item] = ts
        return acc

    def merge_accumulators(self, accs: Iterable[Dict[int, int]]) -> Dict[int, int]:
        accs = iter(accs)
        out = next(accs, {})
        for acc in accs:
            self.add_input(out, acc.items())
        return out

    def extract_output(self, acc: Dict[int, int]) -> Dict[int, int]:
        return acc


def capped_user_record(user_latest: Tuple[bytes, Dict[int, int]], cap: int) -> str:
    """(user, {item: latest ts}) -> JSON line with the (at most `cap`) most recent items."""
    user, latest = user_latest
    ranked = sorted(latest.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = sorted(item for item, _ in ranked[:cap])
    return json.dumps({"user": user.hex(), "items": kept, "dropped": len(ranked) - len(kept)})


def write_user_item_sets(pipeline: beam.Pipeline, train_uri: str, out_prefix: str, cap: int):
    """Adds the train-split read / per-user union / write steps to `pipeline`."""
    pattern = os.path.join(train_uri, "*.gz")
    _ = (pipeline
         | "ReadTrain" >> beam.io.ReadFromTFRecord(
             pattern, compression_type=beam.io.filesystem.CompressionTypes.GZIP)
         | "Positives" >> beam.Map(example_positives)
         | "UnionPerUser" >> beam.CombinePerKey(LatestPositives())
         | "Cap" >> beam.Map(capped_user_record, cap=cap)
         | "Write" >> beam.io.WriteToText(out_prefix, file_name_suffix=".jsonl"))


def read_user_records(prefix: str) -> List[dict]:
    """The JSON lines written by `write_user_item_sets`, sorted by user."""
    records: list = []
    for path in sorted(tf.io.gfile.glob(prefix + "*.jsonl")):
        with tf.io.gfile.GFile(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return sorted(records, key=lambda r: r["user"])


# --- IO helpers ---------------------------------------------------------------------------------

def read_catalog(items_uri: str) -> pd.DataFrame:
    with tf.io.gfile.GFile(os.path.join(items_uri, ITEMS_FILE), "rb") as f:
        return pd.read_parquet(io.BytesIO(f.read()))


# --- The component ------------------------------------------------------------------------------

@component(use_beam=True)
def ItemEmbeddingGen(
    examples: InputArtifact[standard_artifacts.Examples],
    items: InputArtifact[ItemCatalog],
    item_embeddings: OutputArtifact[ItemEmbeddings],
    config_json: Parameter[str],
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Frozen item embeddings (co-engagement PPMI-SVD + content) from the train split only."""
    cfg = PipelineConfig.from_json(config_json).items
    max_items_per_user = cfg.max_items_per_user
    if max_items_per_user < 2:
        raise ValueError(f"max_items_per_user must be >= 2, got {max_items_per_user}")
    # The only split URI ever resolved: the eval split is never read (leakage guarantee).
    train_uri = artifact_utils.get_split_uris([examples], TRAIN_SPLIT)[0]

    tmp_dir = os.path.join(item_embeddings.uri, f"_user_items_{uuid.uuid4().hex}")
    prefix = os.path.join(tmp_dir, "users")
    with beam_pipeline as p:
        write_user_item_sets(p, train_uri, prefix, max_items_per_user)
    records = read_user_records(prefix)
    tf.io.gfile.rmtree(tmp_dir)
    if not records:
        raise ValueError(f"no training examples under {train_uri}")

    catalog = sorted_catalog(read_catalog(items.uri))
    ids, emb, meta = build_item_embeddings((r["items"] for r in records), catalog, cfg)
    dropped = [r["dropped"] for r in records]
    meta.update({
        "source_split": TRAIN_SPLIT,
        "max_items_per_user": max_items_per_user,
        "n_users_truncated": int(sum(d > 0 for d in dropped)),
        "n_items_dropped_by_cap": int(sum(dropped)),
    })
    artifacts.write_item_embeddings(item_embeddings.uri, ids, emb, interests_matrix(catalog), meta)
    for key, value in (("num_items", meta["n_items"]), ("dim", cfg.dim), ("cf_dim", cfg.cf_dim),
                       ("n_cold_items", meta["n_cold_items"]),
                       ("n_train_users", meta["n_train_users"])):
        item_embeddings.set_int_custom_property(key, int(value))
