"""`serve` and `query` sub-commands (wired into the `pinrank` CLI via add_subcommands).

  pinrank serve --model_base_path runs/<pipeline>/serving --port 8500
  pinrank query status --model pinnerformer --require-available
  pinrank query status --model ranker --max-age-hours 48     # staleness monitor (exit 1)
  pinrank query snapshot --store redis://HOST:6379/0 --max-age-hours 26   # the daily snapshot
  pinrank query metadata --model pinnerformer
  pinrank query embed --data DATASET_DIR --user u1 --user u2
  pinrank query rank --data DATASET_DIR --user u1 --candidates 11,12,13

`query` talks gRPC to TF Serving or the local stand-in alike; `query snapshot` reads the action
store (serving/action_store.py). Heavy imports (TensorFlow) happen
inside the commands so that building the `pinrank` parser stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

from pinrank.pipeline import features as F
from pinrank.serving import constants as C


def add_subcommands(subparsers) -> None:
    """Registers `serve` and `query` on an argparse sub-parsers object (func -> exit code)."""
    from pinrank.serving.local_server import DESCRIPTION, add_serve_arguments

    p = subparsers.add_parser("serve", help="run the local TF-Serving stand-in (development)",
                              description=DESCRIPTION)
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    q = subparsers.add_parser("query", help="query TF Serving (or the local stand-in) over gRPC")
    qs = q.add_subparsers(dest="query_command", required=True)

    def common(sp: argparse.ArgumentParser, model: str) -> None:
        sp.add_argument("--target", default=C.DEFAULT_TARGET, help="host:port of the gRPC API")
        sp.add_argument("--timeout", type=float, default=10.0, help="deadline per attempt (s)")
        sp.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE")
        sp.add_argument("--model", default=model)
        sp.add_argument("--version", type=int, help="pin a version (default: latest)")

    sp = qs.add_parser("status", help="GetModelStatus")
    common(sp, C.PINNERFORMER)
    sp.add_argument("--require-available", action="store_true",
                    help="exit 1 unless a version is AVAILABLE (for scripts/probes)")
    sp.add_argument("--max-age-hours", type=float, metavar="H",
                    help="staleness monitor: exit 1 unless the newest AVAILABLE version was "
                         "pushed within H hours (versions are the Pusher's unix seconds)")
    sp.set_defaults(func=cmd_query_status)

    sp = qs.add_parser("snapshot", help="the daily user-embedding snapshots held by the action "
                                        "store (versions, newest meta, age)")
    sp.add_argument("--store", required=True, metavar="URL",
                    help="action store: sqlite:///PATH.db or redis://HOST:PORT/DB")
    sp.add_argument("--max-age-hours", type=float, metavar="H",
                    help="staleness monitor: exit 1 unless the newest snapshot's --as-of is "
                         "within H hours (a daily job at 00:10: 24 h plus the job's run time)")
    sp.add_argument("--now-ts", type=int, help="the time ages are measured at (default: now)")
    sp.set_defaults(func=cmd_query_snapshot)

    sp = qs.add_parser("metadata", help="GetModelMetadata: signatures, input/output dtypes+shapes")
    common(sp, C.PINNERFORMER)
    sp.set_defaults(func=cmd_query_metadata)

    def events_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", required=True,
                        help="dataset dir (<dir>/events/part-*.parquet), a .parquet or a .csv with "
                             "columns " + ",".join(F.EVENT_COLUMNS))
        sp.add_argument("--user", action="append", required=True, dest="user_ids",
                        metavar="USER_ID", help="user id; repeat for several users (embed)")
        sp.add_argument("--now-ts", type=int, help="history strictly before this unix time "
                                                   "(default: now)")
        sp.add_argument("--max-len", type=int,
                        help="history length L (default: the signature's fixed L)")

    sp = qs.add_parser("embed", help="user embeddings from raw history (embed_raw)")
    common(sp, C.PINNERFORMER)
    sp.add_argument("--signature", default=C.EMBED_RAW)
    events_args(sp)
    sp.set_defaults(func=cmd_query_embed)

    sp = qs.add_parser("rank", help="score candidates for one user (per-head scores)")
    common(sp, C.RANKER)
    sp.add_argument("--signature", default=C.RANK)
    events_args(sp)
    sp.add_argument("--candidates", required=True, help="comma-separated item ids")
    sp.add_argument("--surface", default="homefeed", help="request surface")
    sp.add_argument("--pf-model", default=C.PINNERFORMER,
                    help="PinnerFormer model for the user embedding ('' to send none)")
    sp.set_defaults(func=cmd_query_rank)


def _client(args):
    from pinrank.serving.client import ServingClient

    return ServingClient(args.target, timeout_s=args.timeout, retries=args.retries)


def _print(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1, default=_json_default)
    sys.stdout.write("\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    raise TypeError(type(o))


def _run(fn, args) -> int:
    from pinrank.serving.client import ServingError

    try:
        return fn(args)
    except ServingError as e:
        print(f"error: {e.code.name}: {e.details}", file=sys.stderr)
        return 2


def cmd_serve(args) -> int:
    import logging

    from pinrank.serving.local_server import serve_from_args

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_from_args(args)


def staleness_error(model: str, statuses, max_age_hours: float,
                    now: Optional[float] = None) -> Optional[str]:
    """Why `model` is too stale to serve, or None. The Pusher names versions by push time (unix
    seconds), so a version's age is now - version; a hand-numbered version (1, 2, ...) reads
    as decades old and fails, on purpose: its age is unknown."""
    now = time.time() if now is None else now
    available = [s.version for s in statuses if s.state == "AVAILABLE"]
    if not available:
        return f"model {model} has no AVAILABLE version"
    age_h = (now - max(available)) / 3600
    if age_h > max_age_hours:
        return (f"model {model}: newest AVAILABLE version {max(available)} was pushed "
                f"{age_h:.1f} h ago (> --max-age-hours {max_age_hours:g})")
    return None


def snapshot_staleness_error(versions: Sequence[int], max_age_hours: float,
                             now: Optional[float] = None) -> Optional[str]:
    """Why the store's newest daily snapshot is too old, or None. Its version is its as-of (unix
    seconds, the cut-off of the actions it embeds), so the age is now - as_of."""
    now = time.time() if now is None else now
    if not versions:
        return "the action store holds no user-embedding snapshot"
    age_h = (now - max(versions)) / 3600
    if age_h > max_age_hours:
        return (f"newest user-embedding snapshot, as of {max(versions)}, is {age_h:.1f} h old "
                f"(> --max-age-hours {max_age_hours:g})")
    return None


def cmd_query_snapshot(args) -> int:
    from pinrank.serving import action_store as S

    now = time.time() if args.now_ts is None else float(args.now_ts)
    try:
        with S.open_store(args.store) as store:
            versions = store.snapshot_versions()
            meta = store.snapshot_meta(versions[-1]) if versions else None
            url = store.url
    except S.StoreUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except S.StoreError as e:  # a malformed URL: usage
        raise SystemExit(str(e)) from None
    _print({"store": S.mask_url(url), "versions": versions,
            "newest": meta, "age_hours": round((now - versions[-1]) / 3600, 2)
            if versions else None})
    if args.max_age_hours is not None:
        err = snapshot_staleness_error(versions, args.max_age_hours, now)
        if err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


def cmd_query_status(args) -> int:
    def run(args):
        with _client(args) as c:
            st = c.status(args.model, args.version)
        _print([dataclasses.asdict(s) for s in st])
        if args.max_age_hours is not None:
            err = staleness_error(args.model, st, args.max_age_hours)
            if err:
                print(f"error: {err}", file=sys.stderr)
                return 1
        return 1 if args.require_available and not any(s.state == "AVAILABLE" for s in st) else 0

    return _run(run, args)


def describe_signatures(sig_defs: Dict[str, Any]) -> Dict[str, Any]:
    """SignatureDefs -> JSON-able {name: {method, inputs/outputs: {tensor: {dtype, shape}}}}."""
    from tensorflow.core.framework import types_pb2

    def tensors(m):
        return {k: {"dtype": types_pb2.DataType.Name(v.dtype),
                    "shape": None if v.tensor_shape.unknown_rank else
                    [d.size for d in v.tensor_shape.dim]} for k, v in sorted(m.items())}

    return {name: {"method_name": s.method_name, "inputs": tensors(s.inputs),
                   "outputs": tensors(s.outputs)} for name, s in sorted(sig_defs.items())}


def cmd_query_metadata(args) -> int:
    def run(args):
        with _client(args) as c:
            _print(describe_signatures(c.metadata(args.model, args.version)))
        return 0

    return _run(run, args)


def read_events(path: str, user_ids: Sequence[str]):
    """Events of `user_ids` from a dataset dir, a parquet shard or a csv (canonical columns)."""
    import pandas as pd

    from pinrank.components.data import events as ev

    if os.path.isdir(path):
        shards = ev.event_shards(path)
        frames = [ev.read_event_shard(s) for s in shards]
    elif path.endswith(".parquet"):
        frames = [ev.read_event_shard(path)]
    else:
        frames = [pd.read_csv(path, dtype={"user_id": str})]
    frames = [f[f["user_id"].isin(list(user_ids))] for f in frames]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=list(F.EVENT_COLUMNS))


def _signature(client, args):
    from pinrank.serving.client import ServingError

    sigs = client.metadata(args.model, args.version)
    if args.signature not in sigs:
        import grpc

        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model {args.model} has no signature {args.signature!r} "
                           f"(has {sorted(sigs)})", "GetModelMetadata")
    return sigs[args.signature]


def _history_len(sig, args) -> int:
    """--max-len, else the fixed L of the signature's hist_item input."""
    info = sig.inputs.get(F.HIST_ITEM)
    fixed = (info.tensor_shape.dim[1].size if info is not None and not
             info.tensor_shape.unknown_rank and len(info.tensor_shape.dim) == 2 else -1)
    if args.max_len is not None:
        if fixed > 0 and args.max_len != fixed:
            raise SystemExit(f"--max-len {args.max_len} != the signature's L={fixed}")
        return args.max_len
    if fixed <= 0:
        raise SystemExit("the signature has no fixed history length: pass --max-len")
    return fixed


def _cast_to_signature(inputs: Dict[str, Any], sig) -> Dict[str, Any]:
    import numpy as np
    import tensorflow as tf

    out = {}
    for k, v in inputs.items():
        want = tf.dtypes.as_dtype(sig.inputs[k].dtype)
        out[k] = v if want == tf.string else np.asarray(v).astype(want.as_numpy_dtype)
    return out


def _history_inputs(client, args):
    from pinrank.serving.client import embed_request_from_events

    sig = _signature(client, args)
    now_ts = args.now_ts if args.now_ts is not None else int(time.time())
    events = read_events(args.data, args.user_ids)
    return sig, embed_request_from_events(events, args.user_ids, _history_len(sig, args), now_ts)


def cmd_query_embed(args) -> int:
    def run(args):
        with _client(args) as c:
            sig, inputs = _history_inputs(c, args)
            unknown = set(sig.inputs) - set(inputs)
            if unknown:
                raise SystemExit(f"cannot fill signature inputs {sorted(unknown)}")
            outputs, version = c.predict_versioned(
                args.model, args.signature,
                _cast_to_signature({k: inputs[k] for k in sig.inputs}, sig), args.version)
        _print({"model": args.model, "version": version,
                "hist_len": dict(zip(args.user_ids, inputs[C.HIST_LEN].tolist())),
                "outputs": {name: dict(zip(args.user_ids, value.tolist()))
                            for name, value in outputs.items()}})
        return 0

    return _run(run, args)


def cmd_query_rank(args) -> int:
    def run(args):
        import numpy as np

        if len(args.user_ids) != 1:
            raise SystemExit("query rank takes exactly one --user")
        candidates = [int(x) for x in args.candidates.split(",") if x.strip()]
        with _client(args) as c:
            from pinrank.serving.client import embed_request_from_events, rank_request_inputs

            sig = _signature(client=c, args=args)
            now_ts = args.now_ts if args.now_ts is not None else int(time.time())
            events = read_events(args.data, args.user_ids)
            pf_sig = c.metadata(args.pf_model).get(C.EMBED_RAW) if args.pf_model else None
            width = _history_len(pf_sig, args) if pf_sig is not None else (args.max_len or 512)
            history = embed_request_from_events(events, args.user_ids, width, now_ts)
            pf = None
            if pf_sig is not None:  # the user's PinnerFormer embedding from the served model
                pf = c.predict(args.pf_model, C.EMBED_RAW,
                               _cast_to_signature(history, pf_sig))[C.EMBEDDING][0]
            inputs = rank_request_inputs(history, candidates, request_ts=now_ts,
                                         surface=args.surface, pf_embedding=pf)
            outputs, version = c.predict_versioned(args.model, args.signature,
                                                   _cast_to_signature(inputs, sig), args.version)
        _print({"model": args.model, "version": version, "user_id": args.user_ids[0],
                "candidates": candidates,
                "scores": {k: np.reshape(v, (-1,)).tolist() for k, v in outputs.items()}})
        return 0

    return _run(run, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pinrank.serving.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
