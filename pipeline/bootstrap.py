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
