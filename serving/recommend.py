"""`pinrank recommend --user U`: retrieve with PinnerFormer over gRPC, then rank if a ranker is
served.

1.+2. The user's events strictly before `now` (client.embed_request_from_events) and every item
   in that history as exclusions -> ONE Predict on the `retrieve` signature of `pinnerformer`
   (client.retrieve_versioned): the user embedding and the exact top-N of the catalogue index
   the export saved inside the model. Models exported before that signature existed fall back,
   with a warning, to `embed_raw` + a client-side ItemIndex built over gRPC from the *same*
   model version (or loaded from --index when its version matches): ~28 s per call on
   MovieLens, which is why the index moved into the SavedModel.
3. If a `ranker` model with a `rank` signature is AVAILABLE (GetModelStatus + metadata), its
   per-head scores re-order the N candidates by a weighted utility and the top k are returned
   (mode "ranked"). Otherwise the top k retrieved items are returned as they are and the result
   says so: "retrieval-only (no ranker served)".
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from pipeline import features as F
from serving import constants as C

log = logging.getLogger("serving.recommend")

RETRIEVAL_ONLY = "retrieval-only"
RANKED = "ranked"
RETRIEVAL_ONLY_NOTE = "retrieval-only (no ranker served)"
# Utility over the ranker's heads: placeholders until the ranker's training defines them
# (Homefeed-style: engagement heads add, `hide` subtracts). Heads the ranker lacks are skipped.
DEFAULT_RANK_WEIGHTS = {"repin": 1.0, "closeup": 1.0, "click": 1.0, "hide": -1.0}
DEFAULT_MAX_LEN = 512
NO_RETRIEVE_WARNING = ("%s v%s has no %r signature (exported before the catalogue index moved "
                       "into the SavedModel): building the item index client-side over gRPC")


@dataclasses.dataclass
class Recommendation:
    user_id: str
    item_ids: List[int]
    retrieval_scores: List[float]  # inner product with the user embedding, per returned item
    mode: str  # RANKED or RETRIEVAL_ONLY
    note: str
    embedding_version: int
    history_len: int  # actions in the embed request
    excluded: int  # distinct history items excluded from retrieval
    num_candidates: int  # items retrieved (and ranked, in RANKED mode)
    ranker_version: Optional[int] = None
    rank_scores: Optional[Dict[str, List[float]]] = None  # per head, per returned item
    utility: Optional[List[float]] = None  # weighted head sum, per returned item

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def available_version(client, model: str) -> Optional[int]:
    """Newest AVAILABLE version of `model`, or None when the server does not serve it."""
    import grpc

    from serving.client import ServingError

    try:
        st = client.status(model)
    except ServingError as e:
        if e.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
            return None
        raise
    avail = [s.version for s in st if s.state == "AVAILABLE"]
    return max(avail) if avail else None


def served_ranker(client, model: str = C.RANKER):
    """(version, rank SignatureDef) of a served ranker, or None."""
    version = available_version(client, model)
    if version is None:
        return None
    sigs = client.metadata(model, version)
    if C.RANK not in sigs:
        log.warning("%s v%d has no %r signature (has %s): not ranking", model, version, C.RANK,
                    sorted(sigs))
        return None
    return version, sigs[C.RANK]


def user_events(dataset_dir: str, user_id: str):
    """The user's rows of the canonical event log (validated, canonical dtypes)."""
    from components.data import events as ev
    from serving.cli import read_events

    df = read_events(dataset_dir, [user_id])
    clean, _ = ev.validate_events(df.reset_index(drop=True), None, where=f"{dataset_dir} "
                                  f"(user {user_id})", drop_invalid=False)
    return clean


def _width(sig, max_len: Optional[int], n_history: int) -> int:
    from serving.batch_embeddings import fixed_history_len

    fixed = fixed_history_len(sig)
    if fixed is not None:
        if max_len is not None and max_len != fixed:
            raise ValueError(f"max_len={max_len} but the signature fixes L={fixed}")
        return fixed
    if max_len is not None:
        return int(max_len)
    # Dynamic L: the Transform keeps the model's M most recent, so any width >= M is exact.
    return max(1, min(DEFAULT_MAX_LEN, n_history))


def _cast(inputs: Dict[str, Any], sig) -> Dict[str, Any]:
    from serving.cli import _cast_to_signature

    return _cast_to_signature({k: inputs[k] for k in sig.inputs}, sig)


def recommend(client, user_id: str, events, *, k: int = 10, num_candidates: Optional[int] = None,
              now_ts: Optional[int] = None, max_len: Optional[int] = None, index=None,
              item_ids=None, rank_weights: Optional[Dict[str, float]] = None,
              model: str = C.PINNERFORMER, ranker_model: str = C.RANKER) -> Recommendation:
    """Recommendations for one user (see the module docstring).

    client: serving.client.ServingClient. events: the canonical event rows (at least this
    user's). index: None to retrieve with the served model's `retrieve` signature (one RPC;
    for models exported without it, an ItemIndex is built over gRPC from `item_ids`), or an
    ItemIndex to search client-side (its model_version must be served). num_candidates: items
    retrieved (and ranked); default k."""
    from serving.client import embed_request_from_events, rank_request_inputs
    from serving.item_index import PAD_ID, ItemIndex

    if k < 1:
        raise ValueError("k must be >= 1")
    n_cand = max(k, int(num_candidates or k))
    now = int(now_ts if now_ts is not None else time.time())
    mine = events[(events["user_id"].to_numpy() == user_id)
                  & (events["timestamp"].to_numpy(np.int64) < now)]
    if not len(mine):
        raise LookupError(f"user {user_id!r} has no events before {now}")

    version = None
    if index is not None and index.model_version and index.model_version.isdigit():
        version = int(index.model_version)
    if version is None:
        version = available_version(client, model)
        if version is None:
            raise RuntimeError(f"no AVAILABLE version of {model!r} on {client.target}")
    sigs = client.metadata(model, version)
    sig = sigs.get(C.EMBED_RAW)
    if sig is None:
        raise RuntimeError(f"{model} v{version} has no {C.EMBED_RAW!r} signature")
    req = embed_request_from_events(mine, [user_id], _width(sig, max_len, len(mine)), now)
    history_items = np.unique(mine["item_id"].to_numpy(np.int64))
    if index is None and C.RETRIEVE in sigs:  # the model's own index: one RPC
        out, served = client.retrieve_versioned(n_cand, history=_cast(req, sig),
                                                exclude=[history_items], model=model,
                                                version=version)
        user_emb = np.asarray(out[C.EMBEDDING], np.float32)
        ids, scores = out[C.ITEM_IDS], out[C.SCORES]
    else:
        out, served = client.predict_versioned(model, C.EMBED_RAW, _cast(req, sig), version)
        user_emb = np.asarray(out[C.EMBEDDING], np.float32)
        if index is None:
            if item_ids is None:
                raise ValueError("pass an ItemIndex or the catalog's item_ids")
            log.warning(NO_RETRIEVE_WARNING, model, served, C.RETRIEVE)
            index = ItemIndex.build(client, item_ids, model=model, version=served)
        ids, scores = index.search(user_emb, n_cand, exclude=[history_items])
    keep = ids[0] != PAD_ID
    cand, cand_scores = ids[0][keep], scores[0][keep]

    common: Dict[str, Any] = dict(user_id=user_id, embedding_version=int(served),
                  history_len=int(req[C.HIST_LEN][0]), excluded=int(len(history_items)),
                  num_candidates=int(len(cand)))
    ranker = served_ranker(client, ranker_model) if len(cand) else None
    if ranker is None:
        return Recommendation(item_ids=cand[:k].tolist(),
                              retrieval_scores=cand_scores[:k].astype(float).tolist(),
                              mode=RETRIEVAL_ONLY, note=RETRIEVAL_ONLY_NOTE, **common)

    rversion, rsig = ranker
    rwidth = _width(rsig, None, len(mine)) if F.HIST_ITEM in rsig.inputs else 1
    history = embed_request_from_events(mine, [user_id], rwidth, now)
    # The batch job would supply yesterday's embedding; online we have today's at hand.
    inputs = rank_request_inputs(history, cand.tolist(), request_ts=now,
                                 pf_embedding=user_emb[0])
    head_out, rserved = client.predict_versioned(ranker_model, C.RANK, _cast(inputs, rsig),
                                                 rversion)
    heads = {h: np.reshape(np.asarray(v, np.float64), (-1,)) for h, v in head_out.items()}
    weights = rank_weights or DEFAULT_RANK_WEIGHTS
    used = {h: w for h, w in weights.items() if h in heads}
    if not used:
        raise RuntimeError(f"ranker outputs {sorted(heads)} match none of the weighted heads "
                           f"{sorted(weights)}")
    utility = np.sum([w * heads[h] for h, w in used.items()], axis=0)
    order = np.lexsort((cand, -utility))[:k]  # utility desc, then item id
    return Recommendation(
        item_ids=cand[order].tolist(), retrieval_scores=cand_scores[order].astype(float).tolist(),
        mode=RANKED, note=f"ranked by {ranker_model} v{rserved} (utility = "
                          + " + ".join(f"{w:g}*{h}" for h, w in used.items()) + ")",
        ranker_version=int(rserved), rank_scores={h: v[order].tolist() for h, v in heads.items()},
        utility=utility[order].tolist(), **common)


def recommend_from_dataset(target: str, user_id: str, dataset_dir: str, *, k: int = 10,
                           num_candidates: Optional[int] = None, now_ts: Optional[int] = None,
                           max_len: Optional[int] = None, index_path: Optional[str] = None,
                           timeout_s: float = 10.0, retries: int = 3) -> Recommendation:
    """recommend() with events and catalog read from a canonical dataset dir. index_path (used
    only when the served model has no `retrieve` signature): an .npz ItemIndex, reused when
    built from the served model version, else (re)built and saved there."""
    from components.data import events as ev
    from serving.client import ServingClient
    from serving.item_index import ItemIndex

    events = user_events(dataset_dir, user_id)
    with ServingClient(target, timeout_s=timeout_s, retries=retries) as client:
        index = None
        version = available_version(client, C.PINNERFORMER)
        if version is not None and C.RETRIEVE in client.metadata(C.PINNERFORMER, version):
            # The served model retrieves from its own index: no catalogue, no --index file.
            return recommend(client, user_id, events, k=k, num_candidates=num_candidates,
                             now_ts=now_ts, max_len=max_len)
        if index_path:
            if version is not None:
                log.warning(NO_RETRIEVE_WARNING, C.PINNERFORMER, version, C.RETRIEVE)
            if os.path.exists(index_path):
                index = ItemIndex.load(index_path)
                if index.model_version != (None if version is None else str(version)):
                    log.warning("%s was built from %s v%s, serving v%s: rebuilding", index_path,
                                C.PINNERFORMER, index.model_version, version)
                    index = None
            if index is None:
                index = ItemIndex.build(client, ev.item_arrays(dataset_dir)[0], version=version)
                index.save(index_path)
        item_ids = None if index is not None else ev.item_arrays(dataset_dir)[0]
        return recommend(client, user_id, events, k=k, num_candidates=num_candidates,
                         now_ts=now_ts, max_len=max_len, index=index, item_ids=item_ids)
