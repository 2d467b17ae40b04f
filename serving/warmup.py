"""TF Serving's model warmup file: `<version>/assets.extra/tf_serving_warmup_requests`, a TFRecord
of tensorflow.serving.PredictionLog (https://www.tensorflow.org/tfx/serving/saved_model_warmup).

With --enable_model_warmup (serving/deploy passes it) TF Serving replays every record's request
on the freshly loaded version before marking it AVAILABLE; a failing request fails the load, so
the previous version keeps serving. `replay` is that step for the local server
(serving/local_server.py) and for AtomicPusher's canary (serving/canary.py), which also
refuses non-finite outputs (TF Serving does not look at them).

No TensorFlow at module level (serving/local_server.py's rule)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from pinrank.serving import constants as C


class WarmupError(Exception):
    """A warmup file that cannot be read, or a request in it that fails (one line)."""


def path(version_dir: str) -> str:
    return os.path.join(version_dir, C.WARMUP_DIR, C.WARMUP_FILE)


def write(version_dir: str, requests: Sequence[Any]) -> str:
    """Writes PredictRequests as PredictionLog records; returns the file's path."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    if len(requests) > C.WARMUP_MAX_RECORDS:
        raise WarmupError(f"{len(requests)} warmup requests, TF Serving reads at most "
                          f"{C.WARMUP_MAX_RECORDS}")
    out = path(version_dir)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with tf.io.TFRecordWriter(out) as w:
        for req in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(req)
            w.write(log.SerializeToString())
    return out


def read(version_dir: str) -> Optional[List[Any]]:
    """The PredictRequests of a version's warmup file, None if it has none. Like TF Serving:
    more than WARMUP_MAX_RECORDS records, an unparsable record or a log that is not a
    predict_log (the only kind pinrank's models answer) is an error."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    p = path(version_dir)
    if not os.path.exists(p):
        return None
    out = []
    try:
        for i, raw in enumerate(tf.data.TFRecordDataset(p)):
            if i >= C.WARMUP_MAX_RECORDS:
                raise WarmupError(f"{p}: more than {C.WARMUP_MAX_RECORDS} records")
            log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise WarmupError(f"{p}: record {i} is a {log.WhichOneof('log_type')}, "
                                  "not a predict_log")
            out.append(log.predict_log.request)
    except tf.errors.OpError as e:
        raise WarmupError(f"{p}: not a TFRecord file: {e.message}") from None
    except Exception as e:  # a record that is not a PredictionLog (protobuf DecodeError)
        if isinstance(e, WarmupError):
            raise
        raise WarmupError(f"{p}: unreadable record: {e}") from None
    return out


def non_finite(outputs: Dict[str, np.ndarray]) -> Optional[str]:
    """The first output holding NaN or ±inf, None if all are finite. `scores` may be -inf
    where `item_ids` is PAD_ITEM: that is retrieve's padding for rows with fewer than k
    eligible items (serving/constants.py)."""
    for name in sorted(outputs):
        arr = np.asarray(outputs[name])
        if arr.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(arr)
        if name == C.SCORES and C.ITEM_IDS in outputs:
            bad &= ~((np.asarray(outputs[C.ITEM_IDS]) == C.PAD_ITEM) & (arr == -np.inf))
        if bad.any():
            return name
    return None


def replay(servable, requests: Sequence[Any], require_finite: bool = False
           ) -> List[Dict[str, np.ndarray]]:
    """Runs each request on `servable` (serving.local_server.Servable) with the checks a
    Predict call gets; returns the outputs. WarmupError names the first failing request."""
    from pinrank.serving.local_server import RequestError, check_inputs

    results = []
    for i, req in enumerate(requests):
        signature = req.model_spec.signature_name or C.SERVING_DEFAULT
        where = f"warmup request {i} ({signature})"
        sig_def = servable.signature_defs.get(signature)
        if sig_def is None or signature not in servable.functions:
            raise WarmupError(f"{where}: the model has no signature {signature!r}")
        try:
            out = servable.run(signature, check_inputs(sig_def, req.inputs))
        except RequestError as e:
            raise WarmupError(f"{where}: {e.code.name}: {' '.join(e.message.split())}") from None
        if require_finite:
            bad = non_finite(out)
            if bad is not None:
                raise WarmupError(f"{where}: output {bad!r} is not finite")
        results.append(out)
    return results
