"""The ranker's TFMA Evaluator with batches that depend on the data only (docs/status.md,
"Reproducibility").

The stock Evaluator reads the examples with `tfxio.BeamSource()`, whose batches come from Beam's
BatchElements tuned on measured run times (1 to 1000 records), and scores the model batch by
batch. A model's output for one row changes with the batch it is computed in at the float
rounding level (measured on the tiny ranker: ~20 of 5,811 eval predictions move by <= 3e-7 when
the batch sizes change), and that is enough to move TFMA's AUC by ~1e-6 (a ULP-level change of
every prediction moved the hide head's AUC by 1.1e-6). `DeterministicBatchingExecutor` runs the
stock executor with tfx_bsl's `tfxio_use_byte_size_batching` flag defaulting to True: batches of
up to 20 MiB / 8192 records, cut by the records' sizes, the same in every run. Measured cost on
the tiny ranker (5,811 eval examples, alternating runs in one process): 64-70 s per evaluation
instead of 46-57 s. A flag set explicitly on the command line wins.

`RankerEvaluator(...)` takes the stock Evaluator's arguments; the executor travels with the
component (LocalDagRunner, BeamDagRunner, Kubeflow V2), unlike a process-wide setting.
"""
from absl import flags
from tfx.components import Evaluator
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import executor_spec
from tfx_bsl.coders import batch_util  # noqa: F401  (defines the flag)

BYTE_SIZE_BATCHING_FLAG = "tfxio_use_byte_size_batching"


class DeterministicBatchingExecutor(evaluator_executor.Executor):
    """The stock Evaluator executor; its TFXIO sources batch by byte size while it builds and
    runs its Beam pipeline (the flag's default is restored afterwards)."""

    def Do(self, input_dict, output_dict, exec_properties):
        previous = flags.FLAGS[BYTE_SIZE_BATCHING_FLAG].default
        flags.FLAGS.set_default(BYTE_SIZE_BATCHING_FLAG, True)
        try:
            return super().Do(input_dict, output_dict, exec_properties)
        finally:
            flags.FLAGS.set_default(BYTE_SIZE_BATCHING_FLAG, previous)


class RankerEvaluator(Evaluator):
    """tfx.components.Evaluator with DeterministicBatchingExecutor."""
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(DeterministicBatchingExecutor)
