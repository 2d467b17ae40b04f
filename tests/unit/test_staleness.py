"""benchmarks/staleness.py's pure helpers against pure-python references."""
import numpy as np
import pytest

from benchmarks import staleness as st
from pinrank.components.event_example_gen import eval_cut
from pinrank.pipeline.config import ExampleGenConfig


def _window_ref(t, cut, edges):
    for i in range(len(edges) - 1):
        if cut + edges[i] <= t < cut + edges[i + 1]:
            return i
    return -1


def test_window_index_matches_reference_at_the_edges():
    cut, edges = 1000, [0, 7, 14, 28]
    ts = [cut - 1, cut, cut + 6, cut + 7, cut + 13, cut + 14, cut + 27, cut + 28, cut + 500, 0]
    rng = np.random.default_rng(0)
    ts += rng.integers(cut - 50, cut + 50, size=200).tolist()
    got = st.window_index(ts, cut, edges)
    assert got.tolist() == [_window_ref(t, cut, edges) for t in ts]
    assert got[:8].tolist() == [-1, 0, 0, 1, 1, 2, 2, -1]
    with pytest.raises(ValueError, match="increasing"):
        st.window_index(ts, cut, [0, 7, 7])


def test_cap_per_user_keeps_at_most_k_per_user_and_window():
    rng = np.random.default_rng(1)
    users = rng.choice(["a", "b", "c", "d"], size=300)
    windows = rng.integers(-1, 3, size=300)
    keep = st.cap_per_user(users, windows, 2, seed=3)
    for u in "abcd":
        for w in range(-1, 3):
            n_all = int(np.sum((users == u) & (windows == w)))
            n_kept = int(np.sum(keep & (users == u) & (windows == w)))
            assert n_kept == (0 if w < 0 else min(n_all, 2)), (u, w)
    assert np.array_equal(keep, st.cap_per_user(users, windows, 2, seed=3))  # deterministic
    # Under the cap everything in a window stays.
    assert st.cap_per_user(["x", "x", "y"], [0, 1, 0], 1).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="anchors-per-window"):
        st.cap_per_user(users, windows, 0)


def test_cut_quantile_reproduces_the_cut_exactly():
    start, end = 874724710, 893286638
    for days in (1, 91, 119, 147, 200):
        cut = start + days * 86400
        q = st.cut_quantile(start, end, cut)
        assert eval_cut(ExampleGenConfig(eval_after_time_quantile=q), start, end) == cut
    with pytest.raises(ValueError, match="not inside"):
        st.cut_quantile(start, end, end)
