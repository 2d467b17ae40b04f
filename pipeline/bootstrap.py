"""Process settings every entry point applies before TensorFlow is imported (one home).

- TF_USE_LEGACY_KERAS=1: TFX 1.16 and our models use Keras 2 (`tf_keras`), not Keras 3.
- TF_ENABLE_ONEDNN_OPTS=1: TensorFlow leaves oneDNN off on these CPUs; with it matmuls run about
  1.4x faster (benchmarks/train_throughput.py measures it). Explicit settings win.
- TF_CPP_MIN_LOG_LEVEL=2: TensorFlow's C++ info/warning lines would bury progress output.
- google-cloud libraries warn on every import that Python 3.10 is old; TFX 1.16 needs 3.10.
"""
import os
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=FutureWarning)


class KnownNoise:
    """A logging filter that drops warnings known to be harmless here, which otherwise make up
    half of a run's output (progress would drown). Set PINRANK_LOG_ALL=1 to see them.

    - TFX 1.16's input resolution logs "ArtifactQuery.property_predicate is not supported" for
      every resolver query, whether or not the query uses a property predicate.
    - Keras warns that a subclassed model's `__init__` arguments are not serializable when it
      saves the model; the export is a SavedModel with traced signatures, which does not need them.
    - TensorFlow Transform warns that tables initialized inside a tf.function are re-initialized
      on every call; its own analyzers build them that way.
    - TFX's launcher logs "Execution N failed." before it re-raises the executor's error, which
      `pinrank` then prints as its one-line error (the line before it said nothing more).
    """

    PREFIXES = (
        "ArtifactQuery.property_predicate is not supported",
        "Model's `__init__()` arguments contain non-serializable objects",
        "Tables initialized inside a tf.function",
    )

    LAUNCHER_FAILED = "Execution %d failed."  # tfx/orchestration/portable/launcher.py

    def filter(self, record) -> bool:
        if record.msg == self.LAUNCHER_FAILED:
            return False
        return not str(record.getMessage()).startswith(self.PREFIXES)


def quiet_known_noise() -> None:
    """Install KnownNoise on the loggers that emit it (absl and TensorFlow's), once."""
    import logging

    if os.environ.get("PINRANK_LOG_ALL") == "1":
        return
    try:  # absl must create its own logger class first (getLogger would make a plain one)
        import absl.logging  # noqa: F401
    except ImportError:
        pass
    for name in ("absl", "tensorflow"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownNoise) for f in logger.filters):
            logger.addFilter(KnownNoise())


quiet_known_noise()
