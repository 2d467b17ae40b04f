"""RankerEvaluator: the stock TFX Evaluator whose input batches depend on the data only
(docs/status.md, "Reproducibility")."""


def test_executor_batches_by_byte_size_while_it_runs_and_restores(monkeypatch):
    from tfx.components.evaluator import executor as stock
    from tfx_bsl.coders import batch_util

    from pinrank.components.ranker_eval import evaluator as E

    seen = {}

    def fake_do(self, input_dict, output_dict, exec_properties):
        seen["kwargs"] = batch_util.GetBatchElementsKwargs(None)  # what BeamSource() gets
        return "done"

    monkeypatch.setattr(stock.Executor, "Do", fake_do)
    before = batch_util.GetBatchElementsKwargs(None)
    assert "target_batch_duration_secs" in before  # stock: tuned on measured run times
    assert E.DeterministicBatchingExecutor().Do({}, {}, {}) == "done"
    during = seen["kwargs"]
    assert "target_batch_duration_secs" not in during
    assert during["min_batch_size"] == during["max_batch_size"]  # a fixed byte-size target
    assert batch_util.GetBatchElementsKwargs(None) == before  # restored afterwards


def test_pipeline_uses_it_for_the_ranker():
    from pinrank.components.ranker_eval import evaluator as E
    from pinrank.pipeline.config import preset
    from pinrank.pipeline.pipeline import create_pipeline

    p = create_pipeline(preset("tiny"), pipeline_root="/tmp/r", raw_data=None,
                        serving_dir="/tmp/s")
    (node,) = [c for c in p.components if c.id == "RankerEvaluator"]
    assert isinstance(node, E.RankerEvaluator)
    assert node.executor_spec.executor_class is E.DeterministicBatchingExecutor
