"""`pinrank serve-recs`: the recommendation service over HTTP/JSON (stdlib ThreadingHTTPServer).

    GET /v1/recommendations/{user_id}?k=10&surface=homefeed&now=<unix s>
        200 Recommendations (serving/service.py): items with titles, per-head scores, the
        mode and what was degraded, the model versions and the snapshot that answered
    GET /healthz      200 when the store answers and PinnerFormer is served, else 503
    GET /openapi.json this API's OpenAPI 3.0 description (OPENAPI below)

Errors are JSON `{"error": {"code", "message"}}`: 400 bad parameters, 404 unknown path,
503 store unavailable (service.ServiceError), 500 anything else (logged with its traceback).
Binds 127.0.0.1 by default: put it behind the ingress that terminates TLS
(serving/deploy/README.md). One access-log line per request.
"""
from __future__ import annotations

import json
import logging
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from pinrank.pipeline import features as F

log = logging.getLogger("pinrank.serving.recs_http")
DEFAULT_PORT = 8080
PREFIX = "/v1/recommendations/"

_ITEM = {"type": "object", "required": ["item_id", "title", "retrieval_score"], "properties": {
    "item_id": {"type": "integer", "format": "int64"},
    "title": {"type": "string"},
    "retrieval_score": {"type": "number", "nullable": True,
                        "description": "inner product with the user embedding (null for the "
                                       "cold-start list)"},
    "utility": {"type": "number", "description": "weighted sum of the head scores (ranked)"},
    "scores": {"type": "object", "additionalProperties": {"type": "number"},
               "description": "per ranker head: " + ", ".join(F.HEADS)}}}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
OPENAPI: Dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "pinrank recommendations", "version": "1",
             "description": "store -> daily snapshot -> retrieve (PinnerFormer) -> rank "
                            "(TransAct ranker), both models on TF Serving."},
    "paths": {
        "/v1/recommendations/{user_id}": {"get": {
            "summary": "top-k items for a user",
            "parameters": [
                {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "k", "in": "query", "schema": {"type": "integer", "minimum": 1},
                 "description": "items to answer (default online.k)"},
                {"name": "surface", "in": "query",
                 "schema": {"type": "string", "enum": list(F.SURFACES)}},
                {"name": "now", "in": "query", "schema": {"type": "integer", "format": "int64"},
                 "description": "request time, unix s (default: the server's clock; replays)"}],
            "responses": {
                "200": {"description": "recommendations", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Recommendations"}}}},
                "400": {"description": "bad parameter", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}},
                "503": {"description": "the action store is unavailable",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}}}}},
        "/healthz": {"get": {"summary": "store and model availability", "responses": {
            "200": {"description": "ready"}, "503": {"description": "not ready"}}}},
    },
    "components": {"schemas": {
        "Item": _ITEM,
        "Error": _ERROR,
        "Recommendations": {"type": "object", "required": [
            "user_id", "request_ts", "surface", "mode", "degraded", "items", "models",
            "snapshot_as_of", "history_len", "num_candidates", "timings_ms"], "properties": {
            "user_id": {"type": "string"},
            "request_ts": {"type": "integer", "format": "int64"},
            "surface": {"type": "string"},
            "mode": {"type": "string", "enum": ["ranked", "retrieval-only", "cold-start",
                                                 "popular"]},
            "degraded": {"type": "array", "items": {"type": "string"},
                         "description": "what was skipped and why (empty: full path)"},
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
            "models": {"type": "object", "additionalProperties": {
                "type": "integer", "nullable": True},
                "description": "model -> version that answered"},
            "snapshot_as_of": {"type": "integer", "nullable": True},
            "history_len": {"type": "integer"},
            "num_candidates": {"type": "integer"},
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}}}},
    }},
}


def _int_param(q: Dict[str, list], name: str) -> Optional[int]:
    from pinrank.serving.service import ServiceError

    if name not in q:
        return None
    try:
        return int(q[name][-1])
    except ValueError:
        raise ServiceError(400, "bad_request", f"{name}={q[name][-1]!r}: not an integer") from None


def make_handler(recommender, health):
    """A request handler class bound to a service.Recommender and a health() -> (ok, dict)."""
    from pinrank.serving.service import ServiceError

    class Handler(BaseHTTPRequestHandler):
        server_version = "pinrank-recs/1"

        def _send(self, status: int, body: Dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # http.server dispatches on this name
            t0 = time.perf_counter()
            status, body = self._route()
            self._send(status, body)
            log.info("%s %s %d %.1f ms", self.command, self.path, status,
                     (time.perf_counter() - t0) * 1e3)

        def _route(self) -> Tuple[int, Dict[str, Any]]:
            url = urlsplit(self.path)
            try:
                if url.path == "/openapi.json":
                    return 200, OPENAPI
                if url.path == "/healthz":
                    ok, doc = health()
                    return (200 if ok else 503), doc
                if url.path.startswith(PREFIX) and len(url.path) > len(PREFIX):
                    q = parse_qs(url.query)
                    user = unquote(url.path[len(PREFIX):])
                    rec = recommender.recommend(user, request_ts=_int_param(q, "now"),
                                                k=_int_param(q, "k"),
                                                surface=q.get("surface", [None])[-1])
                    return 200, rec.to_dict()
                return 404, {"error": {"code": "not_found", "message": f"no route {url.path}"}}
            except ServiceError as e:
                return e.status, e.to_dict()
            except Exception as e:  # a bug: the client gets a 500, the log the traceback
                log.exception("GET %s failed", self.path)
                return 500, {"error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}

        def log_message(self, format, *args):  # http.server's own stderr lines: ours instead
            pass

    return Handler


def health_check(recommender):
    """health() for make_handler: the store answers and PinnerFormer has an AVAILABLE version."""
    from pinrank.serving.service import available_version

    def health():
        doc: Dict[str, Any] = {"store": "ok", "models": {}}
        ok = True
        try:
            recommender.store.ping()
        except Exception as e:  # StoreUnavailableError, one line
            doc["store"], ok = f"unavailable: {e}", False
        for model in (recommender.pf_model, recommender.ranker_model):
            try:
                doc["models"][model] = available_version(recommender.client, model)
            except Exception as e:  # the model server itself is down
                doc["models"][model] = None
                doc.setdefault("errors", []).append(f"{model}: {e}")
        if doc["models"].get(recommender.pf_model) is None:
            ok = False
        doc["status"] = "ok" if ok else "unavailable"
        return ok, doc

    return health


def serve(recommender, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """A started-on-demand server (call .serve_forever(), or run it in a thread)."""
    httpd = ThreadingHTTPServer((host, port), make_handler(recommender,
                                                           health_check(recommender)))
    httpd.daemon_threads = True
    return httpd

