"""benchmarks/feature_cost.py: the analytic FLOP count of a 1 x n rank call against a hand
computation on a tiny config, and against the count on the executed graph."""
import pytest

from benchmarks import feature_cost as fc
from pinrank.models.realtime import RankerConfig, RealtimeConfig

# d = action 2 + item 3 (+ item 3 with concat) = 8, P = 2, f = 4, one layer, K = 1 + max-pool;
# user block 2 (surface) + 5 (PinnerFormer) = 7, candidate block 3 + 1 = 4, TransAct out 2d = 16.
TINY = RankerConfig(
    realtime=RealtimeConfig(seq_len=2, num_action_types=3, action_emb_dim=2, item_emb_dim=3,
                            num_layers=1, num_heads=1, ffn_dim=4, latest_k=1, max_pool=True,
                            fusion="concat"),
    pinnerformer_dim=5, context_categorical=(("surface", 3, 2),),
    candidate_categorical=(("candidate_interest", 4, 1),), num_cross_layers=2, mlp_dims=(6,))


@pytest.mark.parametrize("overrides,want", [
    # concat, n = 3: per candidate, layer = 8*2*64 + 4*4*8 + 4*2*8*4 = 1408, + Dense(d) 2*64
    # = 1536; D = 7 + 16 + 4 = 27: first cross layer 2*7*27 + 3*2*20*27, second 3*2*27^2;
    # MLP 27 -> 6 -> 4 heads: 3*2*(162 + 24).
    ({}, {"transact": 3 * 1536, "dcn": 378 + 3240 + 4374, "mlp_heads": 1116}),
    # fusion none: d = 2 + 3 = 5, layer 8*2*25 + 4*4*5 + 4*2*5*4 = 640, + 2*25; the encoder runs
    # once and its output (10) joins the shared block: 7 + 10 = 17 of D = 21.
    ({"realtime": {"fusion": "none"}},
     {"transact": 690, "dcn": 2 * 17 * 21 + 3 * 2 * 4 * 21 + 3 * 2 * 21 * 21,
      "mlp_heads": 3 * 2 * (21 * 6 + 24)}),
    # append: d = 2 + 3 = 5, L = 3; layer 8*3*25 + 4*9*5 + 4*3*5*4 = 1020, + 2*25; D = 7+10+4.
    ({"realtime": {"fusion": "append"}},
     {"transact": 3 * 1070, "dcn": 2 * 7 * 21 + 3 * 2 * 14 * 21 + 3 * 2 * 21 * 21,
      "mlp_heads": 3 * 2 * (21 * 6 + 24)}),
    # no sequence features: D = 2 + 4 = 6.
    ({"use_realtime": False, "use_pinnerformer": False},
     {"transact": 0, "dcn": 2 * 2 * 6 + 3 * 2 * 4 * 6 + 3 * 2 * 36, "mlp_heads": 3 * 2 * (36 + 24)}),
    # no cross layers: only the MLP on D = 27.
    ({"num_cross_layers": 0}, {"transact": 3 * 1536, "dcn": 0, "mlp_heads": 1116}),
])
def test_rank_flops_match_a_hand_count(overrides, want):
    assert fc.rank_flops(TINY.replace(**overrides), 3) == want


def test_rank_flops_rejects_no_candidates():
    with pytest.raises(ValueError, match="n \\(candidates\\) must be positive"):
        fc.rank_flops(TINY, 0)


@pytest.mark.parametrize("overrides", [{}, {"realtime": {"fusion": "append", "num_heads": 5}},
                                       {"use_realtime": False}])
def test_rank_flops_equal_the_executed_graph_count(tmp_path, overrides):
    """The same count that benchmarks/serving_latency.py makes on the executed graph (MatMul /
    BatchMatMul / Einsum at runtime shapes) of the saved `rank_request`."""
    from benchmarks.serving_latency import graph_flops

    cfg = TINY.replace(**overrides)
    user, cand = fc.request_inputs(cfg, 7)
    fc.save_rank_model(cfg, user, cand, str(tmp_path / "m"))
    total, _, missing = graph_flops(str(tmp_path / "m"), fc.SIGNATURE, {**user, **cand})
    assert missing == 0
    assert total == sum(fc.rank_flops(cfg, 7).values())


def test_ratio_table_is_relative_to_the_no_sequence_variant():
    rows = [{"variant": "a_no_sequence", "params": 100, "flops": 2e6, "p50_ms": 1.0, "p99_ms": 2.0},
            {"variant": "d_hybrid", "params": 250, "flops": 3e7, "p50_ms": 4.0, "p99_ms": 10.0}]
    lines = fc.ratio_table(rows).splitlines()
    assert lines[2] == "| a_no_sequence | 100 | 1.00 | 2.0 | 1.0 | 1.00 | 1.0 | 2.00 | 1.0 |"
    assert lines[3] == "| d_hybrid | 250 | 2.50 | 30.0 | 15.0 | 4.00 | 4.0 | 10.00 | 5.0 |"
