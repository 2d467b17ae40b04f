"""The canary AtomicPusher runs on a candidate version before making it visible
(components/atomic_pusher.py starts `python -m pinrank.serving.canary` in a fresh process, so that
nothing the pipeline process has loaded (TF functions, op registrations, resources) can hide a
broken export). Like a server would, it:

1. loads the version with the local server's loader (serving.local_server.Servable);
2. builds WARMUP_REQUESTS_PER_SIGNATURE Predict requests for every signature the model serves
   from the eval split of the examples the model was evaluated on: one eval user per request
   for PinnerFormer (serving_default, embed_raw, item_embedding, retrieve, retrieve_embedding, the
   last fed with embed_raw's output for the same user), one eval request with all its candidates
   for the ranker (serving_default, rank), shaped as serving/client.py sends them;
3. writes them as the version's TF Serving warmup file (serving/warmup.py), reads it back and
   replays it, refusing a request that fails or any non-finite output.

Without examples only the load is checked and no warmup file is written. The outcome goes to the
`--result` JSON file: {"requests": n} or {"error": one line}.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from pinrank.components.data import ranking_features as rf
from pinrank.pipeline import features as F
from pinrank.serving import constants as C


class CanaryError(Exception):
    """The candidate failed its canary: it did not load, a request failed or gave NaN/inf."""


# ------------------------------------------------------------------------------ requests


def read_examples(files: Sequence[str]) -> Iterator[bytes]:
    """Serialized tf.Examples of TFRecord files (GZIP if named *.gz, as ExampleGen writes)."""
    import tensorflow as tf

    for f in sorted(files):
        ds = tf.data.TFRecordDataset(f, compression_type="GZIP" if f.endswith(".gz") else "")
        for r in ds:
            yield r.numpy()


def _feature(ex, name: str) -> np.ndarray:
    f = ex.features.feature[name]
    kind = f.WhichOneof("kind")
    if kind == "int64_list":
        return np.asarray(f.int64_list.value, np.int64)
    if kind == "float_list":
        return np.asarray(f.float_list.value, np.float32)
    if kind == "bytes_list":
        return np.asarray(list(f.bytes_list.value), object)
    return np.zeros(0, rf.HIST_DTYPES.get(name, np.int64))


class _Unit:
    """One eval user (PinnerFormer) or one eval request with its candidates (ranker)."""

    def __init__(self, serialized: List[bytes], examples: List[Any]):
        self.serialized = serialized  # as written, for the tf.Example signatures
        self.example = examples[0]  # request-level features are on every candidate's example
        self.hist = {n: _feature(self.example, n) for n in rf.HIST_FEATURES}
        self.cands = np.concatenate([np.zeros(0, np.int64)]
                                    + [_feature(e, F.CAND_ITEM) for e in examples])


def units(examples: Iterator[bytes], ranker: bool, n: int) -> List[_Unit]:
    """The first `n` users (one example each), or the first `n` ranking requests in file order
    with all their candidates (every example of the split is read: a request's examples need
    not be adjacent in Beam's output)."""
    import tensorflow as tf

    if not ranker:
        out = []
        for s in examples:
            out.append(_Unit([s], [tf.train.Example.FromString(s)]))
            if len(out) >= n:
                break
        return out
    groups: Dict[bytes, List[Any]] = {}  # request_id -> [(serialized, Example)]
    for s in examples:
        ex = tf.train.Example.FromString(s)
        rid = ex.features.feature[F.REQUEST_ID].bytes_list.value
        key = rid[0] if rid else b""
        if key in groups or len(groups) < n:
            groups.setdefault(key, []).append((s, ex))
    return [_Unit([s for s, _ in g], [e for _, e in g]) for g in groups.values()]


def _width(sig_def, name: str) -> Optional[int]:
    """A fixed inner dimension of input `name`, None if variable or absent."""
    if name not in sig_def.inputs:  # (indexing a protobuf map would insert the key)
        return None
    dims = sig_def.inputs[name].tensor_shape.dim
    return int(dims[1].size) if len(dims) > 1 and dims[1].size >= 0 else None


def _history(u: _Unit, sig_def) -> Dict[str, np.ndarray]:
    return rf.pad_histories([u.hist], _width(sig_def, F.HIST_ITEM))


def _query(u: _Unit) -> Dict[str, np.ndarray]:
    """retrieve's exclusions and k as ServingClient.retrieve sends them: the user's own
    history excluded, padded to RETRIEVE_EXCLUDE_WIDTH."""
    seen = np.unique(u.hist[F.HIST_ITEM])[:C.RETRIEVE_EXCLUDE_WIDTH]
    exclude = np.full((1, C.RETRIEVE_EXCLUDE_WIDTH), C.PAD_ITEM, np.int64)
    exclude[0, :len(seen)] = seen
    return {C.EXCLUDE_ITEMS: exclude, C.K: np.array([C.WARMUP_RETRIEVE_K], np.int32)}


def _build(signature: str, sig_defs: Dict[str, Any], u: _Unit,
           run: Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]
           ) -> Optional[Dict[str, np.ndarray]]:
    """Inputs of one request of `signature` from unit `u`; None if `u` cannot make one."""
    sig_def = sig_defs[signature]
    if signature == C.SERVING_DEFAULT:
        return {C.EXAMPLES: np.asarray(u.serialized, object)}
    if signature == C.EMBED_RAW:
        return _history(u, sig_def)
    if signature == C.RETRIEVE:
        return {**_history(u, sig_def), **_query(u)}
    if signature == C.RETRIEVE_EMBEDDING:  # the daily job's path: embed_raw's output, then top-k
        if C.EMBED_RAW not in sig_defs:
            raise CanaryError(f"{C.RETRIEVE_EMBEDDING} needs {C.EMBED_RAW} for its input")
        emb = run(C.EMBED_RAW, _history(u, sig_defs[C.EMBED_RAW]))[C.EMBEDDING]
        return {C.EMBEDDING: emb, **_query(u)}
    if signature == C.ITEM_EMBEDDING:
        items = np.unique(np.concatenate([u.hist[F.HIST_ITEM], u.cands]))
        items = items[items != C.PAD_ITEM]
        return {C.ITEM_ID: items} if items.size else None
    if signature == C.RANK:
        from pinrank.serving.client import rank_request_inputs

        if not u.cands.size:
            return None
        present = _feature(u.example, F.PF_PRESENT)
        emb = _feature(u.example, F.PF_EMBEDDING)
        return rank_request_inputs(
            rf.pad_histories([u.hist], _width(sig_def, F.HIST_ITEM)), u.cands.tolist(),
            request_ts=int(_feature(u.example, F.REQUEST_TS)[0]),
            surface=_feature(u.example, F.SURFACE)[0].decode(),
            pf_embedding=emb if present.size and present[0] else None)
    raise CanaryError(f"no canary request for signature {signature!r}: add one to "
                      "serving/canary.py")


def build_requests(servable, example_stream: Iterator[bytes], n: int) -> List[Any]:
    """PredictRequests for every signature of `servable` (serving.local_server.Servable)."""
    from tensorflow_serving.apis import predict_pb2

    from pinrank.serving.client import to_tensor_proto

    signatures = sorted(s for s in servable.signature_defs if s != C.SAVED_MODEL_INIT_OP)
    ranker = C.RANK in signatures
    us = units(example_stream, ranker, n)
    if not us:
        raise CanaryError("the eval split has no examples to build canary requests from")
    model = C.RANKER if ranker else C.PINNERFORMER
    requests = []
    for sig in signatures:
        made = 0
        for u in us:
            inputs = _build(sig, servable.signature_defs, u, servable.run)
            if inputs is None:
                continue
            req = predict_pb2.PredictRequest()
            req.model_spec.name, req.model_spec.signature_name = model, sig
            for k, v in inputs.items():
                req.inputs[k].CopyFrom(to_tensor_proto(v))
            requests.append(req)
            made += 1
        if not made:
            raise CanaryError(f"no eval example gives a {sig!r} request")
    return requests


# ------------------------------------------------------------------------------ child side


def _canary(model_dir: str, example_files: Sequence[str], n: int) -> int:
    from pinrank.serving import local_server as LS
    from pinrank.serving import warmup as W

    try:
        servable = LS.Servable("candidate", 0, model_dir)
    except Exception as e:
        raise CanaryError(f"the SavedModel does not load: {type(e).__name__}: {e}") from None
    if not example_files:
        return 0
    try:
        requests = build_requests(servable, read_examples(example_files), n)
    except LS.RequestError as e:  # embed_raw, run for retrieve_embedding's input, failed
        raise CanaryError(f"{C.EMBED_RAW}: {e.code.name}: {e.message}") from None
    W.write(model_dir, requests)
    replayed = W.read(model_dir) or []  # what a server will read
    W.replay(servable, replayed, require_finite=True)
    return len(replayed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pinrank.serving.warmup import WarmupError

    p = argparse.ArgumentParser(prog="python -m pinrank.serving.canary", description=__doc__)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--examples", action="append", default=[])
    p.add_argument("--requests", type=int, default=C.WARMUP_REQUESTS_PER_SIGNATURE)
    p.add_argument("--result", required=True, help="JSON file: {requests} or {error}")
    args = p.parse_args(argv)
    try:
        outcome: Dict[str, Any] = {"requests": _canary(args.model_dir, args.examples,
                                                       args.requests)}
    except (CanaryError, WarmupError) as e:
        outcome = {"error": " ".join(str(e).split())}
    with open(args.result, "w") as f:
        json.dump(outcome, f)
    return 1 if "error" in outcome else 0


if __name__ == "__main__":
    sys.exit(main())
