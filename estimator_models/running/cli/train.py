"""bin/train: trains a model, evaluating it and exporting SavedModels at every checkpoint;
alone, or as one task of a TF_CONFIG cluster."""

import collections
import contextlib
import os
import shlex
import sys

from absl import flags
import tensorflow as tf

from estimator_models import registry
from estimator_models.errors import UserError
from estimator_models.layers import backbones, recurrent
from estimator_models.legacy import warm_start
from estimator_models.running import cluster, experiment, hparams, monitoring, preemption, run_directory
from estimator_models.running.cli.command import Command, require
from estimator_models.running.cli.flag_groups import FORGET_BIAS, FlagGroup, data_group, flag, model_group
from estimator_models.serving import onnx_export

# Flags that set the hparam of their name.
HPARAM_FLAGS = ('batch_size', 'learning_rate', 'summary_images_every', 'histograms', 'skip_bad_records')

DATA = data_group(
    "Training data; default: the model's embedded dataset",
    flag(flags.DEFINE_string, 'eval_data', None,
         'Evaluation data spec; default: the test split of --data.'))
MODEL = model_group(
    f'Model to train: one of {", ".join(registry.MODELS)}, or your own TF1 model_fn as '
    'package.module:function.',
    flag(flags.DEFINE_integer, 'batch_size', None, 'Examples per batch (an hparam).'),
    flag(flags.DEFINE_float, 'learning_rate', None, 'Peak learning rate (an hparam).'),
    flag(flags.DEFINE_integer, 'summary_images_every', None,
         'Steps between input images in TensorBoard, 0 for none (an hparam).'),
    flag(flags.DEFINE_boolean, 'histograms', None,
         'Weight and activation histograms in TensorBoard (an hparam).'),
    flag(flags.DEFINE_boolean, 'skip_bad_records', None,
         'Drop records that cannot be read, counting them (input/bad_records), instead of '
         'stopping at the first (an hparam).'))
RUN = FlagGroup('run', (
    flag(flags.DEFINE_string, 'model_dir', None, 'Checkpoints, events and hparams; default runs/MODEL.'),
    flag(flags.DEFINE_integer, 'train_steps', None, "Total training steps; default: the model's own."),
    flag(flags.DEFINE_integer, 'checkpoint_every', None,
         'Steps between checkpoints, each followed by an evaluation and exports; default: a '
         'fifth of --train_steps.'),
    flag(flags.DEFINE_integer, 'save_every_secs', 600,
         'Also save a checkpoint every this many seconds (0: only every --checkpoint_every '
         'steps), bounding what a killed run loses.'),
    flag(flags.DEFINE_integer, 'seed', 42, 'Seed for initialisation and shuffling.'),
    flag(flags.DEFINE_string, 'profile_steps', None,
         'A,B: trace global steps A to B with the TensorFlow profiler into '
         "MODEL_DIR/plugins/profile (TensorBoard's profile tab)."),
    flag(flags.DEFINE_bool, 'xla', False,
         'Compile the training graph with XLA (measured slower on the CPU: BENCHMARKS.md).'),
))
WARM_START = FlagGroup('warm start', (
    flag(flags.DEFINE_string, 'warm_start_from', None,
         "Start a new run from this checkpoint or model_dir: this project's (any model; variables "
         "taken where name and shape agree) or a TF1 LSTMCell/GRUCell model's (converted; see "
         'bin/convert_checkpoint).'),
    flag(flags.DEFINE_string, 'warm_start_vars', '.*',
         'Regex of the variables to warm-start, matched from the start of their names.'),
    FORGET_BIAS,
))
EXPORT = FlagGroup('export', (
    flag(flags.DEFINE_string, 'export_dir', None, 'Where SavedModels go; default MODEL_DIR/export.'),
    flag(flags.DEFINE_list, 'export_formats', ['saved_model'],
         'saved_model, or saved_model,onnx: also an ONNX file beside each SavedModel, in '
         'EXPORT_DIR/onnx/<its version>, verified against it.'),
))
CLUSTER = FlagGroup('cluster', (
    flag(flags.DEFINE_string, 'distribution', 'none',
         'none | mirrored (the GPUs of this machine) | multi_worker_mirrored (synchronous, under '
         'TF_CONFIG). A TF_CONFIG cluster with ps tasks trains in parameter-server mode with none.'),
    flag(flags.DEFINE_integer, 'lost_ps_timeout_secs', 120,
         'Under TF_CONFIG with ps tasks: end with an error naming the ps task that has not '
         'answered for this long (0: wait for it forever).'),
))

# The step flags, checked before anything is read or built; None where left to the model.
CheckedSteps = collections.namedtuple('CheckedSteps', 'train_steps checkpoint_every profile_steps')


def run(options, argv):
    del argv
    require(options, 'model')
    task = cluster.from_environment()
    cluster.export_tf_config(task)
    cluster.name_output_lines(task)
    cluster.check_distribution(task, options.distribution)
    model_dir = options.model_dir or os.path.join('runs', options.model.replace(':', '.'))
    export_dir = options.export_dir or os.path.join(model_dir, 'export')
    overrides = hparams.parse_overrides(options.hparams)
    for name in HPARAM_FLAGS:
        if getattr(options, name) is not None:
            overrides[name] = str(getattr(options, name))
    steps = _checked_training_flags(options)
    if not task.writes_run:
        cluster.wait_for_run_file(model_dir, task)
    validated = experiment.validate_training(options.model, model_dir, options.data, options.eval_data,
                                             overrides, options.data_dir, export_dir)
    if task.writes_run:
        # The writer of the run holds model_dir until it exits, so a second trainer stops
        # here, before it reads data or writes anything. It resumes from an intact checkpoint.
        with run_directory.trainer_lock(model_dir):
            run_directory.repair(model_dir)
            _train(options, task, model_dir, export_dir, validated, steps)
    else:
        _train(options, task, model_dir, export_dir, validated, steps)


def _train(options, task, model_dir, export_dir, validated, steps):
    """bin/train from the opening of its data on, its flags checked (`steps`, CheckedSteps)
    and validated (experiment.validate_training)."""
    cluster.watch_parameter_servers(task, options.lost_ps_timeout_secs)
    run, train_source, eval_source = experiment.open_training(
        validated, options.model, model_dir, options.data, options.eval_data, options.data_dir)
    train_steps = steps.train_steps or run.module.DEFAULT_TRAIN_STEPS
    checkpoint_every = steps.checkpoint_every or max(1, train_steps // 5)
    warm_settings = _warm_start(run, options)
    tf.keras.utils.set_random_seed(options.seed)
    onnx_line = (f'  ONNX files:                   {os.path.join(export_dir, onnx_export.ONNX_DIR)}\n'
                 if 'onnx' in options.export_formats else '')
    print(f'training {run.model} for {train_steps} steps on {_described(train_source)}, '
          f'evaluating on {_described(eval_source)}\n'
          f'  checkpoints and train events: {model_dir}\n'
          f'  eval events:                  {os.path.join(model_dir, "eval")}\n'
          f'  SavedModels:                  {os.path.join(export_dir, "best")}, '
          f'{os.path.join(export_dir, "latest")}\n{onnx_line}'
          f'  watch it: tensorboard --logdir {shlex.quote(model_dir)}\n'
          f'  runs on: {_described_compute(run, task, options)}', flush=True)
    if run.hparams.get('backbone', 'small_cnn') != 'small_cnn':
        print(f'  backbone: {backbones.describe(run.hparams)}', flush=True)
    if not task.is_local:
        print(f'  cluster: {task.describe(options.distribution)}', flush=True)
    # Only the task that writes checkpoints saves one on SIGTERM; the others just stop.
    watch = preemption.SignalWatch() if task.writes_run else contextlib.nullcontext()
    with watch:
        try:
            result = experiment.train_and_evaluate(
                run, train_source, eval_source, train_steps, options.seed, export_dir,
                checkpoint_every, options.distribution, steps.profile_steps, warm_settings,
                preemption.hooks(watch, model_dir, options.save_every_secs) if task.writes_run else (),
                options.xla, task, options.export_formats)
        except preemption.Stopped as stopped:
            preemption.report(stopped)
            sys.exit(stopped.exit_code)
    if not task.is_local:
        print(_cluster_task_done(task, model_dir, export_dir), flush=True)
        return
    if result is None:
        print(f'{model_dir} is already trained to {train_steps} steps; '
              'pass a larger --train_steps to continue')
        return
    print(f'done: accuracy {result["accuracy"]:.4f} at step {result["global_step"]}\n'
          f'  checkpoints: {model_dir}\n  SavedModels: {export_dir}/best, {export_dir}/latest\n'
          + (f'  ONNX files: {export_dir}/{onnx_export.ONNX_DIR}\n' if onnx_line else '')
          + f'  tensorboard --logdir {shlex.quote(model_dir)}')


def _cluster_task_done(task, model_dir, export_dir):
    step = experiment.checkpoint_step(model_dir)
    if task.type == 'evaluator':
        return (f'done: evaluated the checkpoint of step {step}\n'
                f'  SavedModels: {export_dir}/best, {export_dir}/latest')
    if task.type == 'chief':
        return f'done: trained to step {step}; checkpoints: {model_dir}'
    return 'done: the global step reached --train_steps'


def _checked_training_flags(options):
    """CheckedSteps of the flags, whose other values are checked too."""
    for name in ('train_steps', 'checkpoint_every'):
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise UserError(f'--{name} must be positive, got {value}')
    if options.save_every_secs < 0:
        raise UserError(f'--save_every_secs must be 0 (off) or more, got {options.save_every_secs}')
    if options.warm_start_from:
        warm_start.checkpoint_path(options.warm_start_from)
    _checked_export_formats(options)
    train_steps = options.train_steps or registry.get(options.model).DEFAULT_TRAIN_STEPS
    profile_steps = (monitoring.parse_profile_steps(options.profile_steps, train_steps)
                     if options.profile_steps else None)
    return CheckedSteps(options.train_steps, options.checkpoint_every, profile_steps)


def _checked_export_formats(options):
    formats = options.export_formats
    unknown = sorted(set(formats) - {'saved_model', 'onnx'})
    if unknown:
        raise UserError(f'--export_formats: unknown format {unknown[0]} (saved_model, onnx)')
    if 'saved_model' not in formats:
        raise UserError('--export_formats must list saved_model: an ONNX file is verified against it')
    if 'onnx' in formats:
        onnx_export.check_available()


def _warm_start(run, options):
    """The WarmStartSettings of --warm_start_from, for a run without checkpoints yet."""
    if not options.warm_start_from:
        return None
    if tf.train.latest_checkpoint(run.model_dir):
        print(f'{run.model_dir} already has checkpoints: resuming from them, '
              f'not warm-starting from {options.warm_start_from}', flush=True)
        return None
    settings, report = experiment.warm_start_settings(
        run, options.warm_start_from, options.warm_start_vars, options.forget_bias)
    print('\n'.join(report), flush=True)
    return settings


def _described_compute(run, task, options):
    """'2 cores, LSTM: fused (rnn_implementation=auto), training in mixed_bfloat16
    (precision=auto)[, XLA]' for the progress header of `task` (a cluster.Task)."""
    parts = [f'{experiment.usable_cores()} cores']
    if run.module in registry.MODELS.values():
        requested = run.hparams['rnn_implementation']
        parts.append(f'{run.hparams["cell"].upper()}: {recurrent.implementation(run.hparams)} '
                     f'(rnn_implementation={requested})')
        parts.append(f'training in {experiment.training_precision(run.hparams, task)} '
                     f'(precision={run.hparams["precision"]})')
    if options.distribution == 'mirrored':
        gpus = len(tf.config.list_physical_devices('GPU'))
        parts.append(f'mirrored on {gpus} GPUs' if gpus else 'mirrored: no GPU, so one replica on the CPU')
    if options.xla:
        parts.append('XLA')
    return ', '.join(parts)


def _described(data):
    count = data.info.num_examples
    examples = f'{count} examples' if count is not None else 'examples'
    return f'{examples} of {data.info.spec}'


COMMAND = Command(
    summary='trains a model, evaluating it and exporting SavedModels at every checkpoint.',
    examples=('--model=temporal_cnn_lstm', '--model=cnn_lstm --data=digits.npz --hparams=rnn_units=64'),
    flag_groups=(MODEL, DATA, RUN, WARM_START, EXPORT, CLUSTER),
    run=run)
