"""What a run adds around any model_fn, and the train-time hooks that write to MODEL_DIR.

Around the model_fn (`instrumented`): the progress lines, and the input pipeline's
count of dropped records. Hooks: `examples_per_sec`, the input images collected by
estimator_models.layers.summaries every `summary_images_every` steps, and the
profiler trace.
"""

import math

import tensorflow as tf

from estimator_models.layers import summaries
from estimator_models.running import progress
from input_fns import BAD_RECORDS_KEY
from input_fns.errors import UserError

ModeKeys = tf.estimator.ModeKeys
BAD_RECORDS_TAG = 'input/bad_records'


def instrumented(model_fn):
    """Wraps a model_fn, the project's or a user's, with what every run shows: progress
    lines while training (from its loss and `params['train_steps']`) and the count of
    dropped records (see counting_bad_records)."""
    counted = counting_bad_records(model_fn)

    def model_fn_with_progress(features, labels, mode, params):
        spec = counted(features, labels, mode, params)
        if mode != ModeKeys.TRAIN:
            return spec
        hook = progress.TrainProgressHook(spec.loss, params['train_steps'])
        return spec._replace(training_hooks=list(spec.training_hooks) + [hook])
    return model_fn_with_progress


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


class Diverged(Exception):
    """Training stopped at `step` because its loss was NaN or infinite."""


class StopOnNonFiniteLossHook(tf.compat.v1.train.SessionRunHook):
    """Stops training at the first NaN or infinite loss with Diverged, naming the step
    and the last checkpoint (which the head's train op keeps finite: estimator_models.
    layers.head skips the update of a step whose loss or gradients are not finite).

    It runs before the Estimator's own NaN check, which would name neither.
    """

    def __init__(self, model_dir):
        self._model_dir = model_dir

    def begin(self):
        # The Estimator adds the model_fn's loss to LOSSES just before the hooks begin.
        self._loss = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.LOSSES)[-1]
        self._global_step = tf.compat.v1.train.get_global_step()

    def before_run(self, run_context):
        return tf.compat.v1.train.SessionRunArgs([self._loss, self._global_step])

    def after_run(self, run_context, run_values):
        loss, step = run_values.results
        if not math.isfinite(loss):
            raise Diverged(f'loss is {loss} at step {step + 1}; training stopped. The last good '
                           f'checkpoint, {tf.train.latest_checkpoint(self._model_dir)}, is kept '
                           '(bin/evaluate and bin/export use it)')


def training_hooks(config, params, profile_steps=None, writes_summaries=True):
    """The train-time hooks that write to MODEL_DIR beyond the Estimator's own.

    Args:
      config: the run's tf.estimator.RunConfig.
      params: the run's hparams dict.
      profile_steps: None, or (first, last) global steps to trace with the profiler.
      writes_summaries: False for a cluster's tasks other than the chief. (Under
        multi_worker_mirrored, `config.is_chief` is only set right before training.)
    """
    hooks = [StopOnNonFiniteLossHook(config.model_dir)]
    if not writes_summaries:
        return hooks
    replicas = config.train_distribute.num_replicas_in_sync if config.train_distribute else 1
    hooks.append(ExamplesPerSecondHook(
        params['batch_size'] * replicas, config.log_step_count_steps, config.model_dir))
    if params['summary_images_every']:
        hooks.append(CollectionSummaryHook(summaries.INPUT_IMAGES, params['summary_images_every'],
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
    """Writes the summaries of one graph collection at a session's first step and every
    `every_n_steps` steps after, through the summary writer that the Estimator's own
    hooks share for `output_dir` (FileWriterCache).

    Not a SummarySaverHook: that needs its summary op when built, but TrainSpec hooks are
    built before the model_fn makes the graph; and it writes a SessionLog.START of its
    own beside the Estimator's, which TensorBoard takes for a restart at that step,
    dropping the scalars already written there.
    """

    def __init__(self, collection, every_n_steps, output_dir):
        self._collection = collection
        self._output_dir = output_dir
        self._timer = tf.compat.v1.train.SecondOrStepTimer(every_steps=every_n_steps)

    def begin(self):
        self._summary_op = tf.compat.v1.summary.merge_all(key=self._collection)
        self._global_step = tf.compat.v1.train.get_global_step()
        self._writer = tf.compat.v1.summary.FileWriterCache.get(self._output_dir)
        self._timer.reset()

    def after_create_session(self, session, coord):
        self._next_step = session.run(self._global_step) + 1

    def before_run(self, run_context):
        fetches = {'step': self._global_step}
        if self._summary_op is not None and self._timer.should_trigger_for_step(self._next_step):
            fetches['summary'] = self._summary_op
        return tf.compat.v1.train.SessionRunArgs(fetches)

    def after_run(self, run_context, run_values):
        step = run_values.results['step'] + 1
        if 'summary' in run_values.results:
            # The step fetched beside the summary may be read before or after this run's
            # update (and other workers' updates, in parameter-server training).
            step = run_context.session.run(self._global_step)
            self._timer.update_last_triggered_step(step)
            self._writer.add_summary(run_values.results['summary'], step)
        self._next_step = step + 1

    def end(self, session):
        self._writer.flush()


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
