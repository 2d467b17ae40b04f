"""`python -m pinrank.serving.daily_job`: one run of the daily user-embedding job
(`batch_embeddings.run_daily_embeddings`, unchanged) whose outcome goes to a `--result` JSON file,
for callers that must not import the serving runtime: the embedding pipeline's UserEmbeddingGen
(components/user_embedding_gen.py, layer 2) starts it in a fresh process, as AtomicPusher starts
the canary.

The result file holds {"snapshot": "<snapshot_root>/<as_of>", "manifest": {...}} (the snapshot's
manifest.json) or {"error": one line, "kind": the exception's class name}. The exit code is 0 on
success, 1 on a failure written to the result file.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)

    p = argparse.ArgumentParser(prog="python -m pinrank.serving.daily_job", description=__doc__)
    p.add_argument("--model", required=True, help="SavedModel dir (or model base / serving dir)")
    p.add_argument("--data", required=True, help="canonical dataset dir")
    p.add_argument("--out", required=True, help="snapshot root")
    p.add_argument("--as-of", type=int, required=True, dest="as_of")
    p.add_argument("--result", required=True, help="JSON outcome file")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--beam-arg", action="append", dest="beam_args", metavar="ARG")
    args = p.parse_args(argv)

    from pinrank.serving import batch_embeddings as B

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(B.log.name).setLevel(logging.INFO)
    try:
        path = B.run_daily_embeddings(args.model, args.data, args.out, args.as_of,
                                      beam_args=args.beam_args, overwrite=args.overwrite)
        outcome = {"snapshot": path, "manifest": B.read_manifest(path)}
        code = 0
    except Exception as e:  # every failure is reported to the caller, one line
        outcome = {"error": _one_line(e) or type(e).__name__, "kind": type(e).__name__}
        code = 1
    with open(args.result, "w") as f:
        json.dump(outcome, f, indent=1, sort_keys=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
