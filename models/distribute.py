"""Multi-worker training for both models: the strategy TF_CONFIG asks for, and where each worker
writes its SavedModel.

A cluster (Vertex AI custom training with several worker replicas, a Kubernetes TFJob, or
`tests/e2e/test_multi_worker.py` over loopback) describes itself in the TF_CONFIG environment
variable. With more than one task there, training runs under
`tf.distribute.MultiWorkerMirroredStrategy`: every worker holds a copy of the variables, takes
its share of the global batch (`train.batch_size` stays the global batch, as Keras expects) and
the gradients are all-reduced each step. Without TF_CONFIG nothing changes (default strategy).
https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import tensorflow as tf


def tf_config() -> dict:
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def cluster_size(config: Optional[dict] = None) -> int:
    """Number of training tasks (chief + workers) TF_CONFIG names; 0 without TF_CONFIG."""
    cluster = (tf_config() if config is None else config).get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names more than one task, else the default."""
    if cluster_size() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(config: Optional[dict] = None) -> bool:
    """The task that writes the real outputs: `chief`, or worker 0 when there is no chief."""
    config = tf_config() if config is None else config
    task = config.get("task", {})
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind is None or kind == "chief":
        return True
    return kind == "worker" and index == 0 and not config.get("cluster", {}).get("chief")


def save_dir(path: str) -> str:
    """Where this task saves: `path` on the chief; a scratch folder elsewhere. Every worker has to
    save (reading mirrored variables is a collective op), but only the chief's copy is kept."""
    if is_chief():
        return path
    task = tf_config().get("task", {})
    return tempfile.mkdtemp(prefix=f"pinrank-{task.get('type')}-{task.get('index')}-")
