"""`embed-users` and `recommend` sub-commands (wired into the `pinrank` CLI via add_subcommands).

  pinrank embed-users --model runs/.../serving --data DATASET_DIR --out SNAPSHOT_ROOT \
      --as-of 1700000000 [--since TS] [--max-len M] [--kv-sqlite users.db] [--store URL]
  pinrank recommend --user u000001 --data DATASET_DIR [--target 127.0.0.1:8500] [--k 10]

Heavy imports (TensorFlow, Beam) happen inside the commands so that building the `pinrank`
parser stays fast.
"""
from __future__ import annotations

import json
import os
import sys

from serving import constants as C


def add_subcommands(subparsers) -> None:
    """Registers `embed-users` and `recommend` on an argparse sub-parsers object
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

    r = subparsers.add_parser(
        "recommend", help="retrieve top-k with PinnerFormer over gRPC, rank if a ranker is served",
        description="Embeds the user from their events (embed_raw over gRPC), retrieves the "
                    "top items by inner product with the catalog's pin-tower embeddings "
                    "(history excluded) and ranks them with the `ranker` model's `rank` "
                    "signature when one is served; otherwise the output is marked "
                    "retrieval-only.")
    r.add_argument("--user", required=True, help="user id")
    r.add_argument("--data", required=True, help="canonical dataset dir (events + item catalog)")
    r.add_argument("--target", default=C.DEFAULT_TARGET, help="host:port of the gRPC API")
    r.add_argument("--k", type=int, default=10, help="items to return")
    r.add_argument("--candidates", type=int, dest="num_candidates",
                   help="items retrieved and passed to the ranker (default: k)")
    r.add_argument("--now-ts", type=int, help="history strictly before this time (default: now)")
    r.add_argument("--max-len", type=int, help="history length L (default: the signature's)")
    r.add_argument("--index", metavar="FILE.npz",
                   help="item index cache: reused if built from the served version, else "
                        "rebuilt and saved here (default: built over gRPC on every call)")
    r.add_argument("--timeout", type=float, default=10.0, help="deadline per attempt (s)")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=cmd_recommend)


def cmd_embed_users(args) -> int:
    import logging

    from serving import batch_embeddings as B

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(B.log.name).setLevel(logging.INFO)  # Beam's INFO chatter stays off
    store = None
    if args.store:  # checked before the job: an unreachable store fails in a second, not after
        from serving import action_store as S
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
        from serving.action_store import StoreUnavailableError
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


def format_recommendation(rec) -> str:
    lines = [f"user {rec.user_id}: {len(rec.item_ids)} items from pinnerformer "
             f"v{rec.embedding_version} ({rec.history_len} actions sent, {rec.excluded} history "
             f"items excluded, {rec.num_candidates} candidates)",
             rec.note]
    heads = sorted(rec.rank_scores) if rec.rank_scores else []
    header = ["rank", "item_id", "retrieval"] + (["utility"] + heads if heads else [])
    lines.append("  ".join(f"{h:>10}" for h in header))
    for i, item in enumerate(rec.item_ids):
        row = [str(i + 1), str(item), f"{rec.retrieval_scores[i]:.4f}"]
        if heads:
            row += [f"{rec.utility[i]:.4f}"] + [f"{rec.rank_scores[h][i]:.4f}" for h in heads]
        lines.append("  ".join(f"{c:>10}" for c in row))
    return "\n".join(lines)


def cmd_recommend(args) -> int:
    from serving.client import ServingError
    from serving.recommend import recommend_from_dataset

    try:
        rec = recommend_from_dataset(args.target, args.user, args.data, k=args.k,
                                     num_candidates=args.num_candidates, now_ts=args.now_ts,
                                     max_len=args.max_len, index_path=args.index,
                                     timeout_s=args.timeout)
    except ServingError as e:
        print(f"error: {e.code.name}: {e.details}", file=sys.stderr)
        return 2
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(rec.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_recommendation(rec))
    return 0
