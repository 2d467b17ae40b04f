"""Names and data contracts shared by every stage: one home for feature keys.

Raw per-user timeline examples (written by EventExampleGen, one tf.Example per anchor):

  user_id        bytes   [1]   the user
  anchor_ts      int64   [1]   anchor time t (s); history is strictly before t
  hist_item      int64   [n]   item ids of the actions before t, oldest -> newest
  hist_action    bytes   [n]   action names (see ACTIONS)
  hist_surface   bytes   [n]   surface names (see SURFACES)
  hist_ts        int64   [n]   action timestamps (s)
  hist_duration  float   [n]   durations (s, >= 0)
  hist_pos       int64   [n]   1 if the action is a positive engagement (is_positive)
  fut_item       int64   [f]   positive engagements in [t, t + window), oldest -> newest
  fut_ts         int64   [f]   their timestamps

Transformed features (Transform output, newest first, fixed shape, padded at the old end):
  see the *_XF names below; `seq_len_xf` gives the number of real actions.
"""

# Canonical event log columns and domains.
EVENT_COLUMNS = ("user_id", "item_id", "action", "timestamp", "duration", "surface")
ACTIONS = ("repin", "click", "closeup", "hide")
SURFACES = ("homefeed", "related", "search", "profile", "other")
# PinnerFormer labels: repin, closeup >= 10 s, click >= 10 s (docs/models.md, "PinnerFormer").
POSITIVE_MIN_DURATION_S = 10.0
ITEM_COLUMNS = ("item_id", "embedding", "interests")
# Ranking impressions (optional dataset part): one row per candidate of a request, with one
# int8 label per action head.
IMPRESSION_LABELS = ACTIONS
IMPRESSION_COLUMNS = ("request_id", "user_id", "item_id", "timestamp", "surface",
                      "position") + IMPRESSION_LABELS

# Raw example features.
USER_ID = "user_id"
ANCHOR_TS = "anchor_ts"
HIST_ITEM = "hist_item"
HIST_ACTION = "hist_action"
HIST_SURFACE = "hist_surface"
HIST_TS = "hist_ts"
HIST_DURATION = "hist_duration"
HIST_POS = "hist_pos"
FUT_ITEM = "fut_item"
FUT_TS = "fut_ts"
HIST_FEATURES = (HIST_ITEM, HIST_ACTION, HIST_SURFACE, HIST_TS, HIST_DURATION, HIST_POS)
FUT_FEATURES = (FUT_ITEM, FUT_TS)
LABEL_FEATURES = FUT_FEATURES  # not needed to embed a user; dropped from serving inputs


def xf(name: str) -> str:
    """Transformed feature name."""
    return f"{name}_xf"


SEQ_LEN_XF = "seq_len_xf"
FUT_LEN_XF = "fut_len_xf"
# Padding values of the transformed sequences (masks come from the lengths, not these).
PAD_ITEM = -1
PAD_INDEX = 0  # action / surface vocabulary index 0 is reserved for padding

ACTION_VOCAB = "action_vocab"
SURFACE_VOCAB = "surface_vocab"

# ---------------------------------------------------------------------------------------------
# Ranking examples (RankingExampleGen), one tf.Example per (request, candidate):
#   request_id      bytes  [1]   query key for TFMA (HIT@3, NDCG per request)
#   user_id         bytes  [1]
#   request_ts      int64  [1]   request time (s)
#   surface         bytes  [1]   request surface (see SURFACES)
#   cand_item       int64  [1]   candidate item id
#   label_<head>    int64  [1]   1 if the user took that action on the candidate (HEADS)
#   hist_item, hist_action, hist_ts, hist_surface, hist_duration   [n]  the user's actions strictly
#                                before request_ts, chronological (Transform keeps the P newest)
#   pf_embedding    float  [D]   PinnerFormer user embedding as of the start of the request's day
#                                (computed from actions before that day by the blessed model)
#   pf_present      int64  [1]   0 when the user had no action before that day (embedding zeros)
HEADS = ("repin", "click", "closeup", "hide")
REQUEST_ID = "request_id"
REQUEST_TS = "request_ts"
SURFACE = "surface"
CAND_ITEM = "cand_item"
PF_EMBEDDING = "pf_embedding"
PF_PRESENT = "pf_present"


def label_key(head: str) -> str:
    return f"label_{head}"
