
# Must be set before anything touches tf.keras (docs/tfx-notes.md, "Keras 2: TF_USE_LEGACY_KERAS=1").
from pinrank.pipeline import bootstrap  # noqa: F401  (environment before TensorFlow)
# isort: split
