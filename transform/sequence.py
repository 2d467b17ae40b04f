"""Sequence ops shared by the preprocessing_fns: truncation, ordering, vocabularies."""
import tensorflow as tf
import tensorflow_transform as tft


def newest_first(rt: tf.RaggedTensor, length: int, pad) -> tuple:
    """Chronological ragged [B, None] -> (newest-first dense [B, length], lengths [B])."""
    last = rt[:, -length:]
    lengths = tf.cast(last.row_lengths(), tf.int64)
    dense = last.to_tensor(default_value=pad, shape=[None, length])
    return tf.reverse_sequence(dense, lengths, seq_axis=1, batch_axis=0), lengths


def oldest_first(rt: tf.RaggedTensor, length: int, pad) -> tuple:
    """Chronological ragged [B, None] -> (first `length` values, dense [B, length], lengths [B])."""
    first = rt[:, :length]
    return (first.to_tensor(default_value=pad, shape=[None, length]),
            tf.cast(first.row_lengths(), tf.int64))


def vocab_index(rt: tf.RaggedTensor, vocab_filename: str) -> tf.RaggedTensor:
    """Strings -> 1..V for the vocabulary, V+1 for OOV; 0 stays free for padding."""
    idx = tft.compute_and_apply_vocabulary(rt, num_oov_buckets=1, vocab_filename=vocab_filename)
    return idx + 1
