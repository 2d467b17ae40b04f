"""`serve-recs` and `recommend` sub-commands: the online request path (serving/service.py).

  pinrank serve-recs --data DATASET_DIR [--target 127.0.0.1:8500] [--port 8080]
      [--set online.store=redis://127.0.0.1:6379/0]
  pinrank recommend --user 1 --data DATASET_DIR [--now-ts TS] [--k 10] [--json]
  pinrank explain --user 1 --data DATASET_DIR [--item 50] [--now-ts TS] [--actions 20] [--json]

Both build the same Recommender: the action store and snapshot store of `online.*`, the models
on TF Serving (--target), titles and the cold-start list from the dataset. `recommend` answers
one request in-process; `serve-recs` answers HTTP; `explain` repeats one request without parts of
its input (serving/explain.py). Heavy imports happen inside the commands.
"""
from __future__ import annotations

import json
import sys

from pinrank.pipeline.config_args import add_config_args, config_from_args
from pinrank.serving import constants as C


def _common(p) -> None:
    p.add_argument("--data", required=True,
                   help="canonical dataset dir: titles and the cold-start list")
    p.add_argument("--target", default=C.DEFAULT_TARGET, help="host:port of TF Serving's gRPC API")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline per model call (s)")
    add_config_args(p)


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "serve-recs", help="the recommendation service (HTTP/JSON): store -> snapshot -> "
                           "retrieve -> rank",
        description="GET /v1/recommendations/{user_id}?k=&surface=&now=, /healthz, "
                    "/openapi.json. Reads the realtime history from online.store (fed by "
                    "`pinrank ingest`) and yesterday's embedding from its snapshot (written "
                    "by `pinrank embed-users --store`); both models answer over gRPC.")
    _common(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_serve_recs)

    r = subparsers.add_parser(
        "recommend", help="one user's recommendations through the service's request path",
        description="The same request path as serve-recs, for one request, printed.")
    r.add_argument("--user", required=True, help="user id")
    _common(r)
    r.add_argument("--k", type=int, help="items to answer (default online.k)")
    r.add_argument("--surface", help="request surface (default online.surface)")
    r.add_argument("--now-ts", type=int, help="request time, unix s (default: now)")
    r.add_argument("--json", action="store_true", help="print the response as JSON")
    r.set_defaults(func=cmd_recommend)

    x = subparsers.add_parser(
        "explain", help="why a user gets an item: the request again without each feature "
                        "group and without each recent action",
        description="Runs the request, then repeats it through the served models without the "
                    "PinnerFormer embedding, without the realtime actions, and without each of "
                    "the newest actions: the item's utility and retrieval rank each time.")
    x.add_argument("--user", required=True, help="user id")
    x.add_argument("--item", type=int, help="item to explain (default: the top answer)")
    _common(x)
    x.add_argument("--surface", help="request surface (default online.surface)")
    x.add_argument("--now-ts", type=int, help="request time, unix s (default: now)")
    x.add_argument("--actions", type=int, default=20, help="newest actions to leave out, one "
                                                           "at a time")
    x.add_argument("--json", action="store_true", help="print the explanation as JSON")
    x.set_defaults(func=cmd_explain)


def build_recommender(args, cfg):
    """(Recommender, things to close) from the command's flags and the resolved config."""
    from pinrank.components.data import events as ev
    from pinrank.serving.action_store import open_store
    from pinrank.serving.client import ServingClient
    from pinrank.serving.service import ColdStart, Recommender

    store = open_store(cfg.online.store)
    snapshots = open_store(cfg.online.snapshot_store) if cfg.online.snapshot_store else None
    client = ServingClient(args.target, timeout_s=args.timeout)
    rec = Recommender(client, store, cfg, titles=ev.read_titles(args.data),
                      cold_start=ColdStart.from_dataset(args.data,
                                                        cfg.online.cold_start_window_days),
                      snapshot_store=snapshots)
    return rec, [c for c in (client, store, snapshots) if c is not None]


def format_recommendations(rec) -> str:
    lines = [f"user {rec.user_id} at {rec.request_ts}: {rec.mode}, {len(rec.items)} items "
             f"({rec.history_len} actions in the store, {rec.num_candidates} candidates, "
             f"snapshot {rec.snapshot_as_of}, models "
             + ", ".join(f"{m} v{v}" for m, v in rec.models.items() if v is not None) + ")"]
    lines += [f"degraded: {d}" for d in rec.degraded]
    for i, item in enumerate(rec.items, 1):
        score = "" if item.get("utility") is None else f"  utility {item['utility']:.4f}"
        lines.append(f"{i:>3}. {item['title']}  [{item['item_id']}]{score}")
    return "\n".join(lines)


def _answer_one(args, cfg, call, fmt) -> int:
    """Build the Recommender, run call(rec) once, print it (--json: its to_dict()). A
    ServiceError is one line: exit 2 for a bad request, 1 otherwise."""
    from pinrank.serving.service import ServiceError

    rec, closers = build_recommender(args, cfg)
    try:
        out = call(rec)
    except ServiceError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return 2 if e.status == 400 else 1
    finally:
        for c in closers:
            c.close()
    if args.json:
        json.dump(out.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(fmt(out))
    return 0


def cmd_recommend(args) -> int:
    import logging

    cfg = config_from_args(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _answer_one(args, cfg, lambda rec: rec.recommend(
        args.user, request_ts=args.now_ts, k=args.k, surface=args.surface),
        format_recommendations)


def cmd_explain(args) -> int:
    from pinrank.serving.explain import explain, format_explanation

    cfg = config_from_args(args)
    if args.actions < 0:
        raise SystemExit(f"--actions={args.actions}: must be >= 0")
    return _answer_one(args, cfg, lambda rec: explain(
        rec, args.user, request_ts=args.now_ts, item_id=args.item, surface=args.surface,
        max_actions=args.actions), format_explanation)


def cmd_serve_recs(args) -> int:
    import logging

    from pinrank.serving.recs_http import serve

    cfg = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rec, closers = build_recommender(args, cfg)
    rec.store.ping()  # a wrong store URL fails now, in one line, not on the first request
    httpd = serve(rec, args.host, args.port)
    host, port = str(httpd.server_address[0]), int(httpd.server_address[1])
    print(f"serve-recs: http://{host}:{port}/v1/recommendations/<user_id> (store "
          f"{rec.store!r}, models on {args.target}){' - loopback only' if host == '127.0.0.1' else ''}",
          flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        for c in closers:
            c.close()
    return 0
