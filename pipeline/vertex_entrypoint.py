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


def register_blessing_writers() -> None:
    """Our blessing-writing executors pass the entrypoint's stock-Evaluator test (module doc)."""
    from tfx.components.evaluator import executor as evaluator_executor

    from pinrank.components.ranker_eval.baseline_check import RankerBaselineCheck
    from pinrank.components.retrieval_evaluator.component import RetrievalEvaluator
    for component in (RetrievalEvaluator, RankerBaselineCheck):
        evaluator_executor.Executor.register(component.EXECUTOR_SPEC.executor_class)


def main() -> None:
    register_artifact_types()
    register_blessing_writers()
    sys.argv[0] = TFX_ENTRYPOINT
    runpy.run_module(TFX_ENTRYPOINT, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
