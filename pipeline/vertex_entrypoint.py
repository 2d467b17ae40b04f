"""The compiled job's container command (`python -m pinrank.pipeline.vertex_entrypoint ARGS`): TFX's
Kubeflow-V2 entrypoint, run unchanged, after making this project's artifact types importable by
their KFP schema titles.

Why: the entrypoint rebuilds each input and output artifact from its type schema, and for a
custom type the schema's title is the TYPE_NAME (`pinrank.RawData`), which it imports as
`<module>.<class>` (`import_class_by_path`): `pinrank` is a namespace package with no such
attribute, so every task with one of components/types.py's artifacts in or out
failed with "Could not import pinrank.RawData" before its executor started
(tests/e2e/test_vertex_ir.py ran the job and found it). TYPE_NAME cannot name the real module
instead: KFP titles are `<namespace>.<Class>`, one dot.

Also: on Vertex an artifact's id is its resource name, and the compiled latest-blessed-model
resolvers find a blessing's model by `name = current_model_id`. The entrypoint rewrites a blessing's
int `current_model_id` / `baseline_model_id` into those names only for the stock Evaluator's
executor and its subclasses; RetrievalEvaluator and RankerBaselineCheck write blessings too, so
their executors are registered as virtual subclasses of it (`abc` registration: the entrypoint's
`issubclass` test passes, nothing else about them changes) and their blessings get the same
rewrite: the name the resolvers match (checked in tests/e2e/test_vertex_ir.py's ExecutorOutput;
a second run on Vertex itself is untested).
"""
import runpy
import sys

from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow, as locally)

TFX_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"


def register_artifact_types() -> None:
    """pinrank.<Class> = the class, for each custom artifact type (what the titles name)."""
    import pinrank
    from pinrank.components import types
    for cls in vars(types).values():
        title = getattr(cls, "TYPE_NAME", None)
        if not (isinstance(cls, type) and issubclass(cls, types.Artifact) and title):
            continue
        namespace, name = str(title).split(".")
        assert namespace == pinrank.__name__ and name == cls.__name__, title
        setattr(pinrank, name, cls)


# The executors (class paths, as the compiled job names them) whose blessings need the rewrite.
BLESSING_WRITERS = (
    "pinrank.components.retrieval_evaluator.component.RetrievalEvaluator_Executor",
    "pinrank.components.ranker_eval.baseline_check.RankerBaselineCheck_Executor",
)


def executor_class_path(argv: list) -> str:
    """The entrypoint's --executor_class_path argument ("" when absent)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--executor_class_path="):
            return arg.split("=", 1)[1]
        if arg == "--executor_class_path" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def register_blessing_writer(class_path: str) -> bool:
    """Registers the task's executor as a virtual subclass of the stock Evaluator's (module doc)
    when it is one of BLESSING_WRITERS; other tasks import nothing more."""
    if class_path not in BLESSING_WRITERS:
        return False
    from tfx.components.evaluator import executor as evaluator_executor
    from tfx.utils import import_utils
    evaluator_executor.Executor.register(import_utils.import_class_by_path(class_path))
    return True


def main() -> None:
    register_artifact_types()
    register_blessing_writer(executor_class_path(sys.argv[1:]))
    sys.argv[0] = TFX_ENTRYPOINT
    runpy.run_module(TFX_ENTRYPOINT, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
