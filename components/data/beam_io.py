"""Beam pieces shared by the example generators: validated event shards and counters.

No TFX imports here, so Beam workers and tests stay light.
"""
from typing import Dict, Iterable, Optional

import apache_beam as beam
import numpy as np

from pinrank.components.data import events as ev
from pinrank.pipeline import features as F


class ReadValidatedEvents(beam.DoFn):
    """One parquet shard -> validated (user_id, {column: array}) groups (main output) and a
    counters dict on the `counters` output; with `emit_max_ts`, also the shard's latest
    timestamp on `max_ts`. Bad rows fail naming the file, or are dropped and counted."""

    def __init__(self, input_base: str, drop_invalid: bool, emit_max_ts: bool = False):
        self._input_base = input_base
        self._drop_invalid = drop_invalid
        self._emit_max_ts = emit_max_ts
        self._known = None

    def setup(self):
        self._known = ev.read_items(self._input_base)["item_id"].to_numpy()

    def process(self, path: str):
        df = ev.read_event_shard(path)
        clean, dropped = ev.validate_events(df, self._known, where=path,
                                            drop_invalid=self._drop_invalid)
        counters = {"events_read": len(df), "events_kept": len(clean)}
        counters.update({f"events_dropped_{k}": int(v) for k, v in dropped.items()})
        yield beam.pvalue.TaggedOutput("counters", counters)
        if self._emit_max_ts:
            yield beam.pvalue.TaggedOutput(
                "max_ts", int(clean["timestamp"].max()) if len(clean) else 0)
        for user_id, g in clean.groupby("user_id", sort=False):
            yield user_id, {c: g[c].to_numpy() for c in F.EVENT_COLUMNS if c != "user_id"}


def sum_counters(dicts: Iterable[Dict[str, int]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def concat_columns(parts: Iterable[Dict[str, np.ndarray]]) -> Optional[Dict[str, np.ndarray]]:
    """A user's column dicts from several shards -> one dict (None when there are none)."""
    parts = list(parts)
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
