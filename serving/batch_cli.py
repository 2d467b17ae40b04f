"""`embed-users` sub-command (wired into the `pinrank` CLI via add_subcommands).

  pinrank embed-users --model runs/.../serving --data DATASET_DIR --out SNAPSHOT_ROOT \
      --as-of 1700000000 [--since TS] [--max-len M] [--kv-sqlite users.db] [--store URL]

Heavy imports (TensorFlow, Beam) happen inside the commands so that building the `pinrank`
parser stays fast.
"""
from __future__ import annotations

import json
import os
import sys


def add_subcommands(subparsers) -> None:
    """Registers `embed-users` on an argparse sub-parsers object
    (args.func(args) -> exit code)."""
    p = subparsers.add_parser(
        "embed-users", help="daily incremental user-embedding snapshot (Beam)",
        description="Embeds users active since the previous snapshot from their M most recent "
                    "actions before --as-of, merges with the previous snapshot and writes "
                    "<out>/<as-of>/ (embeddings.parquet, manifest.json, _SUCCESS). Invalid or "
                    "missing inputs fail the run without touching existing snapshots.")
    p.add_argument("--model", required=True,
                   help="SavedModel dir, model base (<dir>/<version>/) or serving dir")
    p.add_argument("--data", required=True, help="canonical dataset dir (events/, items.parquet)")
    p.add_argument("--out", required=True, help="snapshot root")
    p.add_argument("--as-of", type=int, required=True, dest="as_of",
                   help="cut-off (unix s): only actions strictly before it count")
    p.add_argument("--since", type=int, help="re-embed users with an action in [since, as-of) "
                                             "(default: the previous snapshot's as-of)")
    p.add_argument("--max-len", type=int, help="M most recent actions (default: the model's)")
    p.add_argument("--batch-size", type=int, default=256, help="users per embed_raw call")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild a snapshot that already exists for --as-of")
    p.add_argument("--kv-sqlite", metavar="FILE",
                   help="afterwards, load the snapshot into this sqlite key-value store")
    p.add_argument("--store", metavar="URL",
                   help="afterwards, load the snapshot into this action store as version "
                        "--as-of (sqlite:///PATH.db or redis://HOST:PORT/DB; checked first)")
    p.add_argument("--beam-arg", action="append", dest="beam_args", metavar="ARG",
                   help="Beam pipeline option (repeat); default: in-memory DirectRunner")
    p.set_defaults(func=cmd_embed_users)


def cmd_embed_users(args) -> int:
    import logging

    from pinrank.serving import batch_embeddings as B

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(B.log.name).setLevel(logging.INFO)  # Beam's INFO chatter stays off
    store = None
    if args.store:  # checked before the job: an unreachable store fails in a second, not after
        from pinrank.serving import action_store as S
        try:
            store = S.open_store(args.store)
        except S.StoreUnavailableError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except S.StoreError as e:  # a malformed URL: usage
            raise SystemExit(str(e)) from None
    try:
        return _embed_users(args, B, store)
    finally:
        if store is not None:
            store.close()


def _embed_users(args, B, store) -> int:
    path = B.run_daily_embeddings(args.model, args.data, args.out, args.as_of,
                                  since_ts=args.since, max_len=args.max_len,
                                  beam_args=args.beam_args, batch_size=args.batch_size,
                                  overwrite=args.overwrite)
    manifest = B.read_manifest(path)
    out = {"snapshot": path, "counts": manifest["counts"], "since": manifest["since"],
           "full_refresh": manifest["full_refresh"], "model_version": manifest["model_version"]}
    if args.kv_sqlite:
        with B.SqliteKV(args.kv_sqlite) as kv:
            out["kv_loaded"] = B.load_into_kv(path, kv)
            out["kv"] = os.path.abspath(args.kv_sqlite)
    if store is not None:
        from pinrank.serving.action_store import StoreUnavailableError
        try:
            out["store_loaded"] = B.load_snapshot_into_store(path, store)
        except StoreUnavailableError as e:
            print(f"error: {e} (snapshot {path} written, not loaded)", file=sys.stderr)
            return 1
        out["store"] = store.url
        out["store_versions"] = store.snapshot_versions()
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
