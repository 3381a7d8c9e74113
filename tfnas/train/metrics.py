"""The classification loss and accuracy that search and evaluation share."""
from __future__ import annotations

import tensorflow as tf


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of integer labels."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                                         logits=logits))


def correct(logits, labels):
    """Number of examples whose top class is the label (a float scalar)."""
    hits = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32))
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def accuracy(logits, labels):
    return correct(logits, labels) / tf.cast(tf.shape(labels)[0], tf.float32)
