"""What a run adds around any model_fn, and what it writes to MODEL_DIR for TensorBoard.

Around the model_fn (`instrumented`): the progress lines, and the input pipeline's
count of dropped records. Hooks: `examples_per_sec`, the input images collected by
estimator_models.layers.summaries every `summary_images_every` steps, and the
profiler trace. At the start of a run: its session in TensorBoard's HParams tab
(`write_hparams_session`).
"""

import glob
import math
import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import summary_v2 as hparams_summary

from estimator_models import registry
from estimator_models.errors import UserError
from estimator_models.layers import summaries
from estimator_models.legacy import user_model_fn
from estimator_models.running import hparams as hparams_lib
from estimator_models.running import progress
from input_fns import BAD_RECORDS_KEY

ModeKeys = tf.estimator.ModeKeys
BAD_RECORDS_TAG = 'input/bad_records'
# The HParams tab shows the last value of each metric's scalar in the subdirectory of the
# session's run named by its group: `eval` is where the Estimator writes each evaluation.
HPARAMS_METRICS = (hp.Metric('accuracy', group='eval', dataset_type=hp.Metric.VALIDATION),
                   hp.Metric('loss', group='eval', dataset_type=hp.Metric.VALIDATION))
HPARAMS_EVENTS_SUFFIX = '.hparams'


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


def write_hparams_session(run):
    """Writes the experiment (every declared hparam, HPARAMS_METRICS) and the run's hparams
    for TensorBoard's HParams tab into MODEL_DIR, which makes MODEL_DIR the session.

    A run directory gets its session once, at the run's first start: TensorBoard reads only
    the first summary of a tag in a run, so a resumed run's second one would never show. It goes
    into an events file of its own, with no SessionLog.START (TensorBoard would take one
    for a restart and drop the scalars already logged from its step on), written from a
    graph of its own: an eager summary writer would start the eager context, and the
    multi-worker strategy made after this could then no longer configure its collective ops.
    """
    if hparams_event_files(run.model_dir):
        return
    shown = session_hparams(run)
    experiment = hparams_summary.hparams_config_pb(experiment_hparams(shown), HPARAMS_METRICS)
    with tf.Graph().as_default():
        writer = tf.compat.v1.summary.FileWriter(run.model_dir, filename_suffix=HPARAMS_EVENTS_SUFFIX)
        for summary in (experiment, hparams_summary.hparams_pb(shown)):
            writer.add_summary(summary.SerializeToString(), global_step=0)
        writer.close()


def hparams_event_files(model_dir):
    """The events files of write_hparams_session in model_dir."""
    return sorted(glob.glob(os.path.join(model_dir, f'events.out.tfevents.*{HPARAMS_EVENTS_SUFFIX}')))


def session_hparams(run):
    """{name: bool, number or str}: the run's declared hparams, and a user model_fn's own
    ones as typed from --hparams; a list as its text."""
    declared = hparams_lib.declarations_for(run.module)
    keeps_own = getattr(run.module, 'ACCEPTS_UNKNOWN_HPARAMS', False)
    return {name: _shown(value) for name, value in run.hparams.items() if name in declared or keeps_own}


def _shown(value):
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def experiment_hparams(shown):
    """hp.HParams of every model's declarations, so that runs of different models write
    the same experiment (TensorBoard takes the first it reads), then of the keys of
    `shown` that nothing declares, without a domain."""
    modules = (*registry.MODELS.values(), user_model_fn.UserModel)
    declared = {declaration.name: declaration for module in modules
                for declaration in hparams_lib.declarations_for(module).values()}
    return ([hp.HParam(name, _domain(declaration), description=declaration.doc)
             for name, declaration in declared.items()]
            + [hp.HParam(name) for name in shown if name not in declared])


def _domain(declaration):
    """The values the HParams tab offers to filter on: the choices, both bools, or the
    bound's interval; None for any other text, list or number."""
    if declaration.choices is not None:
        return hp.Discrete(declaration.choices)
    if isinstance(declaration.default, bool):
        return hp.Discrete([False, True])
    if declaration.bound is not None:
        # TensorBoard holds every number as a float64 (an IntInterval is written the same
        # way), and an IntInterval cannot be open above.
        return hp.RealInterval(*declaration.bound.interval)
    return None
