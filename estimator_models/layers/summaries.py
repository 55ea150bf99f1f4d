"""The in-graph summaries and eval metrics the models and the head add to TensorBoard.

Train run (MODEL_DIR): input images or clip-frame strips every `summary_images_every`
steps, weight and activation histograms when `histograms` is on.
Eval run (MODEL_DIR/eval): mean per-class accuracy, the confusion matrix as an image,
one precision-recall curve per class and, with pooling=attention, the attention of a few
examples over their steps as an image.

Eval summaries travel as eval_metric_ops whose value is a serialized `Summary`: the
Estimator writes such a value's entries to the eval events as tags `KEY/0`, `KEY/1`, ...
(tensorflow_estimator estimator.py `_write_dict_to_summary`), so the confusion matrix
becomes `confusion_matrix/0` and class k's PR curve `pr_curves/k`.
"""

import tensorflow as tf
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

ModeKeys = tf.estimator.ModeKeys
# Collection of the input image summaries: written by their own hook
# (estimator_models.running.monitoring) every `summary_images_every` steps, not with
# the scalars every `save_summary_steps`.
INPUT_IMAGES = 'input_image_summaries'
IMAGES_SHOWN = 4
CONFUSION_CELL_PIXELS = 16
PR_CURVE_THRESHOLDS = 51
# Precision and recall divide by at least this, as TensorBoard's own PR curve ops do.
_MINIMUM_COUNT = 1e-7
# Confusion matrix shading: a row's fraction 0 is white, 1 dark blue.
EMPTY_COLOR = (1.0, 1.0, 1.0)
FULL_COLOR = (0.03, 0.19, 0.42)


def input_images(images, mode, params):
    """Shows a few training images as the model sees them.

    Args:
      images: float32 [B, H, W, C], pixels in 0..1.
    """
    if mode == ModeKeys.TRAIN and params['summary_images_every']:
        tf.compat.v1.summary.image('input_images', _as_uint8(images), max_outputs=IMAGES_SHOWN,
                                   collections=[INPUT_IMAGES])


def clip_frames(frames, mode, params):
    """Shows a few training clips, each as one strip of its frames left to right.

    Args:
      frames: float32 [B, T, H, W, C], pixels in 0..1; padding frames show black.
    """
    if mode != ModeKeys.TRAIN or not params['summary_images_every']:
        return
    _, _, height, width, channels = frames.shape
    strips = tf.transpose(frames[:IMAGES_SHOWN], [0, 2, 1, 3, 4])          # [n, H, T, W, C]
    strips = tf.reshape(strips, [-1, height, tf.shape(frames)[1] * width, channels])  # [n, H, T*W, C]
    tf.compat.v1.summary.image('input_clips', _as_uint8(strips), max_outputs=IMAGES_SHOWN,
                               collections=[INPUT_IMAGES])


def _as_uint8(images):
    # Float images would be rescaled per image by the summary op; uint8 shows them as they are.
    return tf.image.convert_image_dtype(tf.clip_by_value(images, 0.0, 1.0), tf.uint8, saturate=True)


def histograms(mode, params, **activations):
    """When `histograms` is on, histograms of every trainable variable (`weights/NAME`)
    and of each named activation tensor (`activations/NAME`), any shape, read as float32
    (a bfloat16 feature map included)."""
    if mode != ModeKeys.TRAIN or not params['histograms']:
        return
    for variable in tf.compat.v1.trainable_variables():
        tf.compat.v1.summary.histogram(f'weights/{variable.op.name}', variable)
    for name, tensor in activations.items():
        tf.compat.v1.summary.histogram(f'activations/{name}', tf.cast(tensor, tf.float32))


def eval_metrics(labels, probabilities, classes):
    """Eval metrics beyond accuracy, as eval_metric_ops: name -> (value, update_op).

    Args:
      labels: int32 [B] true classes.
      probabilities: float32 [B, K].
      classes: int64 [B] predicted classes.

    Returns `mean_per_class_accuracy` (float), and `confusion_matrix` and `pr_curves`
    (serialized Summary protos: an image, and K PR curves).
    """
    num_classes = probabilities.shape[-1]
    confusion, update = _streaming_confusion_matrix(labels, classes, num_classes)
    return {
        'mean_per_class_accuracy': (mean_per_class_accuracy(confusion), update),
        'confusion_matrix': (tf.compat.v1.summary.image(
            'confusion_matrix', confusion_image(confusion)[None], collections=[]), update),
        'pr_curves': _pr_curves(labels, probabilities),
    }


def attention_image_metric(attention):
    """An eval_metric_op showing the attention weights of the last eval batch's first
    IMAGES_SHOWN examples: one row of cells per example, one cell per step (frame, row
    or column) from the left, white for no weight and dark blue for the row's largest.

    Args:
      attention: float32 [B, T], 0 on padding.

    Returns (serialized Summary of the image `attention`, update_op).
    """
    # T differs between batches of clips, hence a variable without a fixed shape.
    shown = tf.compat.v1.Variable(
        tf.zeros([1, 1]), trainable=False, validate_shape=False, shape=tf.TensorShape(None),
        name='attention_shown',
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES, tf.compat.v1.GraphKeys.METRIC_VARIABLES])
    update = tf.compat.v1.assign(shown, attention[:IMAGES_SHOWN], validate_shape=False)
    weights = tf.reshape(shown.read_value(), tf.shape(shown))                 # [n, T]
    fraction = tf.math.divide_no_nan(weights, tf.reduce_max(weights, axis=1, keepdims=True))[..., None]
    colors = (1.0 - fraction) * EMPTY_COLOR + fraction * FULL_COLOR          # [n, T, 3]
    cells = tf.repeat(tf.repeat(colors, CONFUSION_CELL_PIXELS, axis=0), CONFUSION_CELL_PIXELS, axis=1)
    image = tf.image.convert_image_dtype(cells, tf.uint8, saturate=True)[None]
    return tf.compat.v1.summary.image('attention', image, collections=[]), update


def _streaming_confusion_matrix(labels, classes, num_classes):
    """A float64 [K, K] local variable of counts (rows: true class, columns: predicted)
    and the op adding one batch to it."""
    confusion = tf.compat.v1.Variable(
        tf.zeros([num_classes, num_classes], tf.float64), trainable=False, name='confusion_matrix',
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES, tf.compat.v1.GraphKeys.METRIC_VARIABLES])
    batch = tf.math.confusion_matrix(labels, classes, num_classes, dtype=tf.float64)
    return confusion.read_value(), confusion.assign_add(batch)


def _row_fractions(confusion):
    """[K, K] counts -> [K, K] each row divided by its total (rows without examples stay 0)."""
    return tf.math.divide_no_nan(confusion, tf.reduce_sum(confusion, axis=1, keepdims=True))


def mean_per_class_accuracy(confusion):
    """The mean of the per-class recalls over the classes present in the data: float32 []."""
    support = tf.reduce_sum(confusion, axis=1)                               # [K]
    recall = tf.linalg.diag_part(_row_fractions(confusion))                  # [K]
    present = support > 0
    return tf.cast(tf.reduce_mean(tf.boolean_mask(recall, present)), tf.float32)


def confusion_image(confusion):
    """[K, K] counts -> uint8 [K*CELL, K*CELL, 3]: one square per cell, shaded from white
    (none of the row's examples) to dark blue (all of them); row i is true class i
    from the top, column j predicted class j from the left."""
    fraction = tf.cast(_row_fractions(confusion), tf.float32)[..., None]    # [K, K, 1]
    colors = (1.0 - fraction) * EMPTY_COLOR + fraction * FULL_COLOR         # [K, K, 3]
    cells = tf.repeat(tf.repeat(colors, CONFUSION_CELL_PIXELS, axis=0), CONFUSION_CELL_PIXELS, axis=1)
    return tf.image.convert_image_dtype(cells, tf.uint8, saturate=True)


def _pr_curves(labels, probabilities):
    """One streaming PR curve per class, one-vs-rest, at PR_CURVE_THRESHOLDS evenly spaced
    thresholds from 0 to 1 (an example counts as positive above a threshold): (merged
    Summary string, update_op).

    The counts of every class accumulate in one [K, T] variable each, where TensorBoard's
    streaming_op would build four metrics per class: the same curves, for a tenth of the
    eval graph's build time.

    Args:
      labels: int32 [B] true classes.
      probabilities: float32 [B, K].
    """
    num_classes = probabilities.shape[-1]
    thresholds = tf.constant([i / (PR_CURVE_THRESHOLDS - 1) for i in range(PR_CURVE_THRESHOLDS)])  # [T]
    above = probabilities[:, :, None] > thresholds                          # [B, K, T]
    is_class = tf.one_hot(labels, num_classes, on_value=True, off_value=False)[:, :, None]  # [B, K, 1]
    batch_counts = {
        'true_positives': above & is_class,
        'false_positives': above & ~is_class,
        'true_negatives': ~above & ~is_class,
        'false_negatives': ~above & is_class,
    }
    counts, updates = {}, []
    for name, hits in batch_counts.items():
        total = tf.compat.v1.Variable(
            tf.zeros([num_classes, PR_CURVE_THRESHOLDS]), trainable=False, name=f'pr_curve_{name}',
            collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES, tf.compat.v1.GraphKeys.METRIC_VARIABLES])
        counts[name] = total.read_value()                                  # [K, T]
        updates.append(total.assign_add(tf.reduce_sum(tf.cast(hits, tf.float32), axis=0)))
    true_positives = counts['true_positives']
    precision = true_positives / tf.maximum(_MINIMUM_COUNT, true_positives + counts['false_positives'])
    recall = true_positives / tf.maximum(_MINIMUM_COUNT, true_positives + counts['false_negatives'])
    curves = [pr_curve_summary.raw_data_op(
        f'class_{k}', true_positives[k], counts['false_positives'][k], counts['true_negatives'][k],
        counts['false_negatives'][k], precision[k], recall[k], num_thresholds=PR_CURVE_THRESHOLDS,
        display_name=f'class {k}', collections=[]) for k in range(num_classes)]
    return tf.compat.v1.summary.merge(curves, collections=[]), tf.group(*updates)
