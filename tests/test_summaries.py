"""The eval summaries' numbers against numpy: per-class PR curves counted over several
batches (how TensorBoard reads them is checked on a trained run in tests/test_monitoring.py)."""

import numpy as np
import tensorflow as tf

from estimator_models.layers import summaries

NUM_CLASSES = 4


def expected_curve(labels, probabilities, k):
    """[6, T]: true/false positives, true/false negatives, precision and recall of class k
    against the rest, an example counting as positive above each threshold."""
    thresholds = np.array([i / (summaries.PR_CURVE_THRESHOLDS - 1) for i in range(summaries.PR_CURVE_THRESHOLDS)],
                          np.float32)
    above = probabilities[:, k, None] > thresholds[None, :]
    is_class = (labels == k)[:, None]
    true_pos, false_pos = (above & is_class).sum(0), (above & ~is_class).sum(0)
    true_neg, false_neg = (~above & ~is_class).sum(0), (~above & is_class).sum(0)
    precision = true_pos / np.maximum(1e-7, true_pos + false_pos)
    recall = true_pos / np.maximum(1e-7, true_pos + false_neg)
    return np.stack([true_pos, false_pos, true_neg, false_neg, precision, recall]).astype(np.float32)


def test_pr_curves_count_every_class_over_every_batch():
    rng = np.random.default_rng(0)
    batches = []
    for size in (7, 5):
        probabilities = rng.dirichlet(np.ones(NUM_CLASSES), size).astype(np.float32)
        probabilities[0, 0] = 0.5  # on a threshold: not above it
        batches.append((rng.integers(0, NUM_CLASSES, size).astype(np.int32), probabilities))
    with tf.Graph().as_default():
        labels = tf.compat.v1.placeholder(tf.int32, [None])
        probabilities = tf.compat.v1.placeholder(tf.float32, [None, NUM_CLASSES])
        curves, update = summaries.eval_metrics(labels, probabilities, tf.argmax(probabilities, 1))['pr_curves']
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.local_variables_initializer())
            for batch_labels, batch_probabilities in batches:
                session.run(update, {labels: batch_labels, probabilities: batch_probabilities})
            summary = tf.compat.v1.Summary.FromString(session.run(curves))
    all_labels = np.concatenate([batch[0] for batch in batches])
    all_probabilities = np.concatenate([batch[1] for batch in batches])
    assert len(summary.value) == NUM_CLASSES
    for k, value in enumerate(summary.value):
        assert value.metadata.plugin_data.plugin_name == 'pr_curves'
        np.testing.assert_allclose(tf.make_ndarray(value.tensor), expected_curve(all_labels, all_probabilities, k),
                                   rtol=1e-6)
