"""What TensorBoard shows beyond the head's loss and accuracy, and the profiler trace.

Train run (MODEL_DIR): input images or clip-frame strips every `summary_images_every`
steps, weight and activation histograms when `histograms` is on, `examples_per_sec`.
Eval run (MODEL_DIR/eval): mean per-class accuracy, the confusion matrix as an image
and one precision-recall curve per class.

Eval summaries travel as eval_metric_ops whose value is a serialized `Summary`: the
Estimator writes such a value's entries to the eval events as tags `KEY/0`, `KEY/1`, ...
(tensorflow_estimator estimator.py `_write_dict_to_summary`), so the confusion matrix
becomes `confusion_matrix/0` and class k's PR curve `pr_curves/k`.
"""

import tensorflow as tf
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

from input_fns import BAD_RECORDS_KEY
from input_fns.errors import UserError

ModeKeys = tf.estimator.ModeKeys
BAD_RECORDS_TAG = 'input/bad_records'
# Collection of the input image summaries: written by their own hook every
# `summary_images_every` steps, not with the scalars every `save_summary_steps`.
INPUT_IMAGES = 'input_image_summaries'
IMAGES_SHOWN = 4
CONFUSION_CELL_PIXELS = 16
PR_CURVE_THRESHOLDS = 51
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
    and of each named activation tensor (`activations/NAME`), any shape."""
    if mode != ModeKeys.TRAIN or not params['histograms']:
        return
    for variable in tf.compat.v1.trainable_variables():
        tf.compat.v1.summary.histogram(f'weights/{variable.op.name}', variable)
    for name, tensor in activations.items():
        tf.compat.v1.summary.histogram(f'activations/{name}', tensor)


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
    """One streaming PR curve per class, one-vs-rest: (merged Summary string, update_op)."""
    curves, updates = [], []
    for k in range(probabilities.shape[-1]):
        curve, update = pr_curve_summary.streaming_op(
            f'class_{k}', labels=tf.equal(labels, k), predictions=probabilities[:, k],
            num_thresholds=PR_CURVE_THRESHOLDS, metrics_collections=[], display_name=f'class {k}')
        curves.append(curve)
        updates.append(update)
    return tf.compat.v1.summary.merge(curves, collections=[]), tf.group(*updates)


def numbers_only(eval_result):
    """An eval result as Python numbers, without its summary-proto entries (bytes for
    TensorBoard, not people)."""
    return {key: value.item() if hasattr(value, 'item') else value
            for key, value in eval_result.items() if not isinstance(value, bytes)}


def counting_bad_records(model_fn):
    """Wraps a model_fn so that the input pipeline's count of dropped records
    (features[BAD_RECORDS_KEY], int64 [batch]) never reaches the model, and, when the run
    skips bad records, shows as `input/bad_records`: a training summary (the most seen in
    one pass over the training data so far) and an eval metric (those in the eval data),
    which the progress lines print at each evaluation."""
    def model_fn_without_count(features, labels, mode, params):
        features = dict(features)
        dropped = features.pop(BAD_RECORDS_KEY, None)
        spec = model_fn(features, labels, mode, params)
        if dropped is None or not params.get('skip_bad_records') or mode == ModeKeys.PREDICT:
            return spec
        most, update = _running_max(tf.reduce_max(dropped))
        if mode == ModeKeys.EVAL:
            return spec._replace(eval_metric_ops={**spec.eval_metric_ops, BAD_RECORDS_TAG: (most, update)})
        tf.compat.v1.summary.scalar(BAD_RECORDS_TAG, update)
        return spec._replace(train_op=tf.group(spec.train_op, update))
    return model_fn_without_count


def _running_max(value):
    """A local int64 variable holding the largest `value` seen, and the op that updates it."""
    most = tf.compat.v1.Variable(
        tf.constant(0, tf.int64), trainable=False, name='bad_records_seen',
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES, tf.compat.v1.GraphKeys.METRIC_VARIABLES])
    return most.read_value(), most.assign(tf.maximum(most, value))


def training_hooks(config, params, profile_steps=None):
    """The train-time hooks that write to MODEL_DIR beyond the Estimator's own.

    Args:
      config: the run's tf.estimator.RunConfig.
      params: the run's hparams dict.
      profile_steps: None, or (first, last) global steps to trace with the profiler.
    """
    hooks = []
    if config.is_chief:
        replicas = config.train_distribute.num_replicas_in_sync if config.train_distribute else 1
        hooks.append(ExamplesPerSecondHook(
            params['batch_size'] * replicas, config.log_step_count_steps, config.model_dir))
        if params['summary_images_every']:
            hooks.append(CollectionSummaryHook(INPUT_IMAGES, params['summary_images_every'],
                                               config.model_dir))
    if profile_steps:
        hooks.append(ProfileHook(config.model_dir, *profile_steps))
    return hooks


class ExamplesPerSecondHook(tf.compat.v1.train.StepCounterHook):
    """Writes `examples_per_sec` where the Estimator's own StepCounterHook writes
    `global_step/sec`, over the same intervals.

    Each step reads `examples_per_step` examples (every training batch is full: the
    training data repeats).
    """

    def __init__(self, examples_per_step, every_n_steps, output_dir):
        super().__init__(every_n_steps=every_n_steps, output_dir=output_dir)
        self._examples_per_step = examples_per_step

    # StepCounterHook's timing, with its one reporting method replaced: it calls this at
    # each interval's end with the steps and seconds it measured.
    def _log_and_record(self, elapsed_steps, elapsed_time, global_step):
        rate = elapsed_steps * self._examples_per_step / elapsed_time
        self._summary_writer.add_summary(tf.compat.v1.Summary(value=[
            tf.compat.v1.Summary.Value(tag='examples_per_sec', simple_value=rate)]), global_step)


class CollectionSummaryHook(tf.compat.v1.train.SessionRunHook):
    """Writes the summaries of one graph collection every `every_n_steps` steps.

    A SummarySaverHook needs its summary op when built, but TrainSpec hooks are built
    before the model_fn makes the graph; this one finds the op when the graph is done.
    """

    def __init__(self, collection, every_n_steps, output_dir):
        self._collection = collection
        self._every_n_steps = every_n_steps
        self._output_dir = output_dir
        self._saver = None

    def begin(self):
        summary_op = tf.compat.v1.summary.merge_all(key=self._collection)
        if summary_op is None:
            return
        self._saver = tf.compat.v1.train.SummarySaverHook(
            save_steps=self._every_n_steps, output_dir=self._output_dir, summary_op=summary_op)
        self._saver.begin()

    def before_run(self, run_context):
        return self._saver.before_run(run_context) if self._saver else None

    def after_run(self, run_context, run_values):
        if self._saver:
            self._saver.after_run(run_context, run_values)

    def end(self, session):
        if self._saver:
            self._saver.end(session)


def parse_profile_steps(text, train_steps):
    """'A,B' -> (A, B): the first and last global step to trace, 1 <= A <= B <= train_steps."""
    parts = text.split(',')
    try:
        first, last = (int(part) for part in parts)
    except ValueError:
        raise UserError(f'--profile_steps={text} must be two steps A,B '
                        '(the first and last step to trace)') from None
    if not 1 <= first <= last <= train_steps:
        raise UserError(f'--profile_steps={text} must satisfy 1 <= A <= B <= --train_steps '
                        f'({train_steps})')
    return first, last


class ProfileHook(tf.compat.v1.train.SessionRunHook):
    """Traces global steps first..last (counted from 1, as the progress lines count them)
    with the TensorFlow profiler into LOGDIR/plugins/profile/<run>/, TensorBoard's
    profile tab."""

    def __init__(self, logdir, first, last):
        self._logdir = logdir
        self._first = first
        self._last = last
        self._tracing = False
        self._next_step = None

    def after_create_session(self, session, coord):
        self._next_step = session.run(tf.compat.v1.train.get_global_step()) + 1

    def before_run(self, run_context):
        if self._next_step == self._first:
            tf.profiler.experimental.start(self._logdir)
            self._tracing = True

    def after_run(self, run_context, run_values):
        if self._tracing and self._next_step >= self._last:
            self._stop()
        self._next_step += 1

    def end(self, session):
        if self._tracing:
            self._stop()

    def _stop(self):
        tf.profiler.experimental.stop()
        self._tracing = False
