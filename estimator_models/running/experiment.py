"""From a resolved run to Estimator calls: train_and_evaluate, evaluate, export.

bin/ scripts parse flags and call these with plain values; bin/train with the
run_plan.RunPlan its flags made.
"""

import dataclasses
import math
import os
import random
import re
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from estimator_models import registry
from estimator_models.errors import UserError
from estimator_models.layers import precision
from estimator_models.legacy import user_model_fn, warm_start
from estimator_models.run_description import Run
from estimator_models.running import hparams as hparams_lib
from estimator_models.running import cluster, monitoring, progress, run_directory
from estimator_models.serving import exporting, keras3_export, onnx_export, receivers
from input_fns import specs

ModeKeys = tf.estimator.ModeKeys
LATEST_EXPORTS_KEPT = 3
BEST_EXPORTS_KEPT = 2
# cgroup v2: "QUOTA PERIOD" in microseconds, or "max PERIOD" without a limit.
CGROUP_CPU_MAX = '/sys/fs/cgroup/cpu.max'
DISTRIBUTIONS = ('none', 'mirrored', 'multi_worker_mirrored')
# Under TF_CONFIG the evaluator looks for a new checkpoint this often (locally each
# checkpoint is evaluated as it is written).
CLUSTER_EVAL_POLL_SECS = 5
# Each checkpoint is evaluated on the whole eval data and exported. By time, not a share of
# the steps: a 200-step pixel_row_lstm run (36 s) spent 15 s on its five evaluations of
# 10,000 digits; one every 2 minutes costs a long run about 3% (BENCHMARKS.md).
CHECKPOINT_EVERY_SECS = 120
SUMMARY_EVERY_STEPS = 100
XLA_CPU_FLAG = '--tf_xla_cpu_global_jit'


def load_run(model_dir):
    """The Run saved in model_dir; an error if there is none."""
    record = hparams_lib.load_run(model_dir)
    if record is None:
        raise UserError(f'{model_dir} holds no trained model ({hparams_lib.RUN_FILE} not found)')
    return Run(record['model'], model_dir, record['hparams'], record.get('data'),
               record.get('eval_data'), record.get('class_names'), record.get('data_dir'))


def prepare_training(model, model_dir, data=None, eval_data=None, overrides=None, data_dir=None,
                     export_dir=None):
    """Resolves the run (new, or resumed from model_dir) and opens its data sources.

    Everything that can be checked without data is checked first (validate_training),
    so a mistake costs no data preparation; then open_training. Returns (run,
    train_source, eval_source). Writes nothing; without a model_dir, a new run is resolved.
    """
    return open_training(validate_training(model, model_dir, data, eval_data, overrides, data_dir,
                                           export_dir))


@dataclasses.dataclass(frozen=True)
class UnopenedRun:
    """A training run as validate_training checked it, before its data is opened.

    module: the model's module (estimator_models.registry).
    hparams: resolved, but for the shape keys left at 0 for the data to fill.
    data, eval_data, data_dir: the specs given, else those the saved run recorded.
    saved_run: the run record model_dir held; None for a new run.
    eval_examples: the evaluation examples, where the specs tell their number without
      reading any data (the batch size is checked against it already); None until the
      data is opened.
    """
    model: str
    model_dir: Optional[str]
    module: Any
    hparams: dict
    data: Optional[str] = None
    eval_data: Optional[str] = None
    data_dir: Optional[str] = None
    saved_run: Optional[dict] = None
    eval_examples: Optional[int] = None


def validate_training(model, model_dir, data=None, eval_data=None, overrides=None, data_dir=None,
                      export_dir=None):
    """The checks of a training run that need no data and build no graph: the model, the
    hparams (all but the shape keys taken from the data), a resumed run's agreement with
    what model_dir holds, the output directories, and the data specs' files. Each failure
    is one UserError. Returns the UnopenedRun."""
    for flag, directory in (('--model_dir', model_dir), ('--export_dir', export_dir)):
        if directory:
            check_writable_directory(directory, flag)
    saved = hparams_lib.load_run(model_dir) if model_dir else None
    overrides = overrides or {}
    module = registry.get(model, overrides.get('kind') or (saved or {}).get('hparams', {}).get('kind'))
    if saved is not None and saved['model'] != model:
        raise UserError(f'{model_dir} holds a run of {saved["model"]}, not {model}; '
                        'use a new --model_dir')
    resolved = hparams_lib.resolve(module, overrides, None, saved['hparams'] if saved else None)
    data, eval_data, data_dir = _with_saved_specs(saved, data, eval_data, data_dir)
    eval_examples = specs.check_without_reading(data or module.DEFAULT_DATA, module.KIND, data_dir)
    if eval_data:
        eval_examples = specs.check_without_reading(eval_data, module.KIND, data_dir)
    _check_batch_fits(resolved['batch_size'], eval_examples, eval_data or data or module.DEFAULT_DATA)
    return UnopenedRun(model, model_dir, module, resolved, data, eval_data, data_dir, saved, eval_examples)


def open_training(unopened):
    """Opens the data of an UnopenedRun and runs the checks that need it: the data's
    metadata (kind, frame shape, classes) fills the hparams the user left unset; nothing
    is read beyond what that takes. Returns (run, train_source, eval_source). A user's
    model_fn has its serving graph built once here, so its mistakes show before training.
    """
    module = unopened.module
    train_source, eval_source = specs.train_and_eval_sources(
        unopened.data, unopened.eval_data, module.KIND, module.DEFAULT_DATA, unopened.data_dir)
    info = train_source.info
    frame_shape = train_source.first_frame_shape()
    if frame_shape is None:
        raise UserError(f'cannot tell the image size of {info.spec}; '
                        'pass --hparams=height=H,width=W,channels=C')
    hparams = hparams_lib.with_data_shape(unopened.hparams, tuple(frame_shape) + (info.num_classes,))
    if unopened.eval_examples is None:
        _check_batch_fits(hparams['batch_size'], eval_source.info.num_examples, eval_source.info.spec)
    _check_boxes(hparams, train_source, eval_source)
    _fill_frame_classes(hparams, train_source, eval_source)
    saved = unopened.saved_run
    class_names = saved.get('class_names') if saved else info.class_names
    run = Run(unopened.model, unopened.model_dir, hparams, unopened.data, unopened.eval_data,
              list(class_names or []), unopened.data_dir)
    run.module = module  # validate_training's lookup, which Run's own would repeat
    if isinstance(module, user_model_fn.UserModel):
        model_variables(run)
    return run, train_source, eval_source


def _with_saved_specs(saved, data, eval_data, data_dir):
    """(data, eval_data, data_dir): the flags' values, else those the saved run recorded."""
    saved = saved or {}
    return (data or saved.get('data'), eval_data or saved.get('eval_data'),
            data_dir or saved.get('data_dir'))


def _check_boxes(hparams, *sources):
    """A model that reads each image's boxes needs data that has them."""
    if not receivers.reads_boxes(hparams):
        return
    for data in sources:
        if not data.info.has_boxes:
            raise UserError(f'regions=boxes reads boxes, and {data.info.spec} has none: TFRecord '
                            f'Examples with image/object/bbox/{{ymin,xmin,ymax,xmax}} do; or use regions=grid')


def _fill_frame_classes(hparams, *sources):
    """A per-frame head needs data that labels every frame; unset, num_frame_classes
    comes from it."""
    if hparams.get('head') != 'per_frame':
        return
    for data in sources:
        if not data.info.num_frame_classes:
            raise UserError(f'head=per_frame needs a label per frame, and {data.info.spec} has none: '
                            f'.npz frame_labels (N,T), SequenceExample clip/frame_labels, or moving_glyphs')
    if not hparams['num_frame_classes']:
        hparams['num_frame_classes'] = max(data.info.num_frame_classes for data in sources)


def _check_batch_fits(batch_size, eval_examples, spec):
    if eval_examples is not None and batch_size > eval_examples:
        raise UserError(f'batch_size {batch_size} is larger than the {eval_examples} evaluation '
                        f'examples of {spec}')


def check_writable_directory(path, flag):
    """A one-line error unless `path` is a writable directory or can be made one."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f'{flag}={path}: {existing} is a file, not a directory')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f'{flag}={path}: {existing} is not writable')


def model_variables(run):
    """{name: shape} of the model's trainable variables, from its serving graph built in
    a graph of its own. Building it also checks, before any training, that a user's
    model_fn gives what serving needs."""
    with tf.Graph().as_default():
        features, _ = receivers.receivers(run.module.KIND, run.hparams)
        run.module.model_fn(features, None, ModeKeys.PREDICT, dict(run.hparams, train_steps=0))
        return {variable.op.name: variable.shape.as_list()
                for variable in tf.compat.v1.trainable_variables()}


def warm_start_settings(run, source, variables_regex='.*', forget_bias=1.0):
    """(tf.estimator.WarmStartSettings, lines to print) for a new run starting from the
    checkpoint or model_dir `source` (estimator_models.legacy.warm_start)."""
    return warm_start.settings(source, model_variables(run), variables_regex, run.model_dir, forget_bias)


def training_precision(hparams, task=cluster.Task()):
    """`precision` as this process trains (estimator_models.layers.precision), with `auto`
    resolved: always float32 in a TF_CONFIG cluster, whose distributed sessions hand a
    fused bfloat16 convolution to kernels that refuse it."""
    if task.is_local:
        return precision.resolved(hparams)
    if hparams.get('precision') == 'mixed_bfloat16':
        raise UserError('precision=mixed_bfloat16 cannot train in a TF_CONFIG cluster (its distributed '
                        'sessions have no bfloat16 fused convolution); use precision=auto or float32')
    return 'float32'


def make_estimator(run, config=None, train_steps=0, warm_start_from=None, precision_policy=None):
    """The run's Estimator; a model with a precision hparam trains in `precision_policy`
    (training_precision's answer), by default in a local run's."""
    params = dict(run.hparams, train_steps=train_steps)
    if 'precision' in params:
        params['precision'] = precision_policy or training_precision(run.hparams)
    return tf.compat.v1.estimator.Estimator(
        model_fn=_keras_seeded(monitoring.instrumented(run.module.model_fn)), model_dir=run.model_dir,
        config=config, params=params, warm_start_from=warm_start_from)


def _keras_seeded(model_fn):
    """Wraps a model_fn so that each graph it builds draws the same Keras seeds from the
    run's seed. A Keras initializer or dropout layer made without a seed takes one from
    Keras' own generator once `tf.keras.utils.set_random_seed` has run in the thread, else
    from Python's `random`, never from the graph's seed: without this the same RunConfig
    seed started from other weights in each process, or after other graphs. Python's and
    NumPy's random states are put back afterwards; Keras' generator stays seeded."""
    def model_fn_seeded(features, labels, mode, params, config):
        if config.tf_random_seed is None:  # an unseeded run stays unseeded
            return model_fn(features, labels, mode, params)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        # Inside the Estimator's graph, where TensorFlow's part of it sets only this
        # graph's seed, which RunConfig already set to the same value.
        tf.keras.utils.set_random_seed(config.tf_random_seed)
        try:
            return model_fn(features, labels, mode, params)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
    return model_fn_seeded


def run_config(model_dir, seed, checkpoint_every, distribution='none', xla=False, task=cluster.Task()):
    """The RunConfig of a training run that checkpoints every `checkpoint_every` steps (None:
    every CHECKPOINT_EVERY_SECS seconds) and at its end; under TF_CONFIG RunConfig reads
    the cluster and this process's `task` (a cluster.Task, already checked against
    `distribution`)."""
    every_steps = min(SUMMARY_EVERY_STEPS, checkpoint_every or SUMMARY_EVERY_STEPS)
    return tf.estimator.RunConfig(
        model_dir=model_dir, tf_random_seed=seed, save_checkpoints_steps=checkpoint_every,
        save_checkpoints_secs=None if checkpoint_every else CHECKPOINT_EVERY_SECS,
        save_summary_steps=every_steps, log_step_count_steps=every_steps,
        keep_checkpoint_max=3,
        # The evaluator is outside the cluster's all-reduce: it evaluates checkpoints alone.
        train_distribute=None if task.type == 'evaluator' else strategy(distribution),
        session_config=session_config(xla, cluster.device_filters(task)))


def strategy(distribution):
    """The tf.distribute strategy of a --distribution (None for 'none')."""
    if distribution == 'mirrored':
        return tf.distribute.MirroredStrategy()
    if distribution == 'multi_worker_mirrored':
        return tf.distribute.experimental.MultiWorkerMirroredStrategy()
    return None


def session_config(xla=False, device_filters=()):
    """One op thread per usable core, XLA's JIT of the whole graph with `xla`, and the
    `device_filters` of a parameter-server task."""
    cores = usable_cores()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=cores,
                                      inter_op_parallelism_threads=cores, allow_soft_placement=True,
                                      device_filters=list(device_filters))
    if xla:
        config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
        # Without this flag TensorFlow ignores the JIT level on the CPU. It is read when
        # the first session starts, so it must be set before.
        if XLA_CPU_FLAG not in os.environ.get('TF_XLA_FLAGS', ''):
            os.environ['TF_XLA_FLAGS'] = f'{os.environ.get("TF_XLA_FLAGS", "")} {XLA_CPU_FLAG}'.strip()
    return config


def usable_cores():
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's --cpus, a Kubernetes CPU limit), which TensorFlow's own count ignores:
    more threads than the quota allows only queue behind each other."""
    cores = len(os.sched_getaffinity(0))
    try:
        with open(CGROUP_CPU_MAX) as cpu_max:
            quota, period = cpu_max.read().split()
        if quota != 'max':
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def exporters(run, export_dir, export_formats=('saved_model',), eval_source=None):
    """The exporters after each evaluation: SavedModels in export_dir/best and /latest,
    each with an ONNX file beside it (verified on `eval_source`) if 'onnx' is in
    `export_formats`."""
    after_export = None
    if 'onnx' in export_formats:
        after_export = onnx_export.beside_saved_models(run, export_dir, eval_source)
    return [
        progress.EvalReporter(),
        exporting.ServingExporter('best', run, export_dir, BEST_EXPORTS_KEPT, only_if_better=True,
                                  after_export=after_export),
        exporting.ServingExporter('latest', run, export_dir, LATEST_EXPORTS_KEPT, after_export=after_export),
    ]


def train_and_evaluate(plan, run, train_source, eval_source, warm_start_from=None, extra_hooks=()):
    """Trains `run` as the run_plan.RunPlan `plan` says: to its train_steps (resuming from
    model_dir), evaluating and exporting at each checkpoint (a SavedModel, and an ONNX
    file beside it if its export_formats list onnx), tracing its profile_steps if any,
    starting a new run from the WarmStartSettings `warm_start_from` if given, with
    `extra_hooks` in the training loop. Returns the last eval result (None if there was
    nothing left to train, and in a cluster, where evaluation is the evaluator's).

    A resumed run shuffles with the seed plus the step it resumes from, so it does not
    replay the batches the interrupted run already trained on in the same order.
    """
    task = plan.task
    if task.writes_run:
        hparams_lib.save_run(run.model_dir, run.record())
        monitoring.write_hparams_session(run)
    config = run_config(run.model_dir, plan.seed, plan.checkpoint_every, plan.distribution, plan.xla, task)
    estimator = make_estimator(run, config, plan.train_steps, warm_start_from, plan.precision)
    shuffle_seed = plan.seed + checkpoint_step(run.model_dir)
    train_spec = tf.estimator.TrainSpec(
        run.input_fn(train_source, ModeKeys.TRAIN, shuffle_seed), max_steps=plan.train_steps,
        hooks=monitoring.training_hooks(config, run.hparams, plan.profile_steps, task.writes_run)
        + list(extra_hooks))
    eval_spec = tf.estimator.EvalSpec(
        run.input_fn(eval_source, ModeKeys.EVAL), steps=None,
        exporters=exporters(run, plan.export_dir, plan.export_formats, eval_source),
        start_delay_secs=0, throttle_secs=0 if task.is_local else CLUSTER_EVAL_POLL_SECS)
    return _train_and_evaluate_newest(estimator, train_spec, eval_spec, task)


def _train_and_evaluate_newest(estimator, train_spec, eval_spec, task):
    """TensorFlow's train_and_evaluate, in which an evaluator that fell behind goes on with
    the newest checkpoint."""
    while True:
        try:
            # Returns (eval result, export results) locally, nothing in a cluster.
            outcome = tf.compat.v1.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
            return outcome[0] if outcome else None
        except (ValueError, tf.errors.NotFoundError) as error:
            # The evaluator can fall behind a chief that checkpoints often and deletes
            # all but its newest checkpoints, while evaluating or exporting one.
            replaced = _replaced_checkpoint(error)
            if task.type != 'evaluator' or replaced is None:
                raise
            print(f'{os.path.basename(replaced)} was replaced by newer checkpoints while it was '
                  'evaluated; evaluating the newest', flush=True)


def _replaced_checkpoint(error):
    """The checkpoint an error names, if it no longer exists; else None."""
    named = re.search(r'(\S*model\.ckpt-\d+)', str(error))
    if named is None or tf.io.gfile.exists(named.group(1) + '.index'):
        return None
    return named.group(1)


def checkpoint_step(model_dir):
    """The global step of model_dir's latest checkpoint (0 without one)."""
    checkpoint = tf.train.latest_checkpoint(model_dir)
    return int(tf.train.load_variable(checkpoint, 'global_step')) if checkpoint else 0


def evaluate(run, data, steps=None):
    """Evaluates the newest intact checkpoint on a Source; returns a JSON-ready dict of metrics."""
    checkpoint = _latest_checkpoint(run.model_dir)
    result = make_estimator(run).evaluate(run.input_fn(data, ModeKeys.EVAL), steps=steps,
                                          checkpoint_path=checkpoint, name='evaluate')
    return exporting.numbers_only(result)


def checkpoint_variables(model_dir):
    """[(name, shape, dtype name)] of the variables in model_dir's latest checkpoint: the
    names plain tf.compat.v1.train.Saver code restores them by."""
    checkpoint = _latest_checkpoint(model_dir)
    reader = tf.train.load_checkpoint(checkpoint)
    dtypes = reader.get_variable_to_dtype_map()
    return checkpoint, [(name, shape, dtypes[name].name)
                        for name, shape in sorted(reader.get_variable_to_shape_map().items())]


def export(run, export_dir):
    """Exports the latest checkpoint under export_dir/<version>; returns that path."""
    return exporting.export_saved_model(run, _latest_checkpoint(run.model_dir), export_dir)


def export_onnx(run, export_dir, eval_source=None):
    """Exports the latest checkpoint as export_dir/<version>/model.onnx, verified against
    its SavedModel on `eval_source` (default: seeded random inputs); returns that path."""
    return onnx_export.export_onnx(run, _latest_checkpoint(run.model_dir), export_dir, eval_source=eval_source)


def export_keras3(run, export_dir, keras3_python=None, eval_source=None):
    """Exports the latest checkpoint as export_dir/<version>/model.keras, built by
    `keras3_python` (default: the cached Keras 3 environment) and verified against its
    SavedModel on `eval_source` (default: seeded random inputs); returns that path."""
    keras3_export.refuse_unconvertible(run)
    return keras3_export.export_keras3(run, _latest_checkpoint(run.model_dir), export_dir, keras3_python,
                                       eval_source)


def _latest_checkpoint(model_dir):
    """The path of model_dir's newest intact checkpoint (run_directory.checkpoint_to_read,
    which sets damaged ones aside); a UserError when it has none."""
    checkpoint = run_directory.checkpoint_to_read(model_dir)
    if checkpoint is None:
        raise UserError(f'no checkpoint in {model_dir}')
    return checkpoint


def predict(run, data):
    """Estimator.predict over a Source (e.g. LabelledArrays): a list of {classes,
    probabilities, logits}, one per example."""
    estimator = make_estimator(run)
    return list(estimator.predict(run.input_fn(data, ModeKeys.PREDICT), yield_single_examples=True))
