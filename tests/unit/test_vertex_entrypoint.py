"""pipeline/vertex_entrypoint.py: the blessing writers pass the TFX entrypoint's stock-Evaluator
test (so their current_model_id becomes the runtime artifact name), and only those tasks pay for
the import."""
import pytest

from pinrank.pipeline import vertex_entrypoint as v


def test_executor_class_path_is_read_from_either_argument_form():
    assert v.executor_class_path(["--executor_class_path", "a.B", "--x", "1"]) == "a.B"
    assert v.executor_class_path(["--x", "1", "--executor_class_path=a.C"]) == "a.C"
    assert v.executor_class_path(["--x", "1"]) == ""


@pytest.mark.parametrize("path", v.BLESSING_WRITERS)
def test_blessing_writers_become_evaluator_executors(path):
    from tfx.components.evaluator import executor as evaluator_executor
    from tfx.utils import import_utils
    assert v.register_blessing_writer(path)
    assert issubclass(import_utils.import_class_by_path(path), evaluator_executor.Executor)


def test_the_class_paths_are_the_components_executors():
    from pinrank.components.ranker_eval.baseline_check import RankerBaselineCheck
    from pinrank.components.retrieval_evaluator.component import RetrievalEvaluator
    paths = {f"{c.__module__}.{c.__qualname__}" for c in (
        RetrievalEvaluator.EXECUTOR_SPEC.executor_class,
        RankerBaselineCheck.EXECUTOR_SPEC.executor_class)}
    assert paths == set(v.BLESSING_WRITERS)


def test_other_executors_are_left_alone():
    assert not v.register_blessing_writer("pinrank.components.trainer.ItemAwareExecutor")
    assert not v.register_blessing_writer("")
