import os

# Must be set before anything touches tf.keras (see tfx-1.16 notes §3.1).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
