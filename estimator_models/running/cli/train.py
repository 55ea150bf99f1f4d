"""bin/train: trains a model, evaluating it and exporting SavedModels at every checkpoint;
alone, or as one task of a TF_CONFIG cluster."""

import contextlib
import os
import shlex
import sys

from absl import flags
import tensorflow as tf

from estimator_models import registry
from estimator_models.layers import backbones, recurrent
from estimator_models.running import cluster, experiment, preemption, run_directory, run_plan
from estimator_models.running.cli.command import Command, require
from estimator_models.running.cli.flag_groups import FORGET_BIAS, FlagGroup, data_group, flag, model_group
from estimator_models.serving import onnx_export

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
         'checkpoint every 2 minutes of training and one at the end.'),
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

def run(options, argv):
    del argv
    require(options, 'model')
    task = cluster.from_environment()
    cluster.export_tf_config(task)
    cluster.name_output_lines(task)
    plan = run_plan.from_flags(options, task)
    if task.writes_run:
        model_dir = plan.unopened_run.model_dir
        # The writer of the run holds model_dir until it exits, so a second trainer stops
        # here, before it reads data or writes anything. It resumes from an intact checkpoint.
        with run_directory.trainer_lock(model_dir):
            run_directory.repair(model_dir)
            _train(plan)
    else:
        _train(plan)


def _train(plan):
    """bin/train from the opening of its data on, as the run_plan.RunPlan `plan` says."""
    task = plan.task
    cluster.watch_parameter_servers(task, plan.lost_ps_timeout_secs)
    run, train_source, eval_source = experiment.open_training(plan.unopened_run)
    warm_settings = _warm_start(run, plan.warm_start)
    tf.keras.utils.set_random_seed(plan.seed)
    _print_header(plan, run, train_source, eval_source)
    # Only the task that writes checkpoints saves one on SIGTERM; the others just stop.
    watch = preemption.SignalWatch() if task.writes_run else contextlib.nullcontext()
    with watch:
        try:
            result = experiment.train_and_evaluate(
                plan, run, train_source, eval_source, warm_settings,
                preemption.hooks(watch, run.model_dir, plan.save_every_secs) if task.writes_run else ())
        except preemption.Stopped as stopped:
            preemption.report(stopped)
            sys.exit(stopped.exit_code)
    _print_ending(plan, result)


def _print_header(plan, run, train_source, eval_source):
    model_dir, export_dir = run.model_dir, plan.export_dir
    onnx_line = (f'  ONNX files:                   {os.path.join(export_dir, onnx_export.ONNX_DIR)}\n'
                 if 'onnx' in plan.export_formats else '')
    print(f'training {run.model} for {plan.train_steps} steps on {_described(train_source)}, '
          f'evaluating on {_described(eval_source)}\n'
          f'  checkpoints and train events: {model_dir}\n'
          f'  eval events:                  {os.path.join(model_dir, "eval")}\n'
          f'  SavedModels:                  {os.path.join(export_dir, "best")}, '
          f'{os.path.join(export_dir, "latest")}\n{onnx_line}'
          f'  watch it: tensorboard --logdir {shlex.quote(model_dir)}\n'
          f'  runs on: {_described_compute(run, plan)}', flush=True)
    if run.hparams.get('backbone', 'small_cnn') != 'small_cnn':
        print(f'  backbone: {backbones.describe(run.hparams)}', flush=True)
    if not plan.task.is_local:
        print(f'  cluster: {plan.task.describe(plan.distribution)}', flush=True)


def _print_ending(plan, result):
    """The lines after training: what was trained, or that nothing was left to."""
    model_dir, export_dir = plan.unopened_run.model_dir, plan.export_dir
    if not plan.task.is_local:
        print(_cluster_task_done(plan.task, model_dir, export_dir), flush=True)
        return
    if result is None:
        print(f'{model_dir} is already trained to {plan.train_steps} steps; '
              'pass a larger --train_steps to continue')
        return
    print(f'done: accuracy {result["accuracy"]:.4f} at step {result["global_step"]}\n'
          f'  checkpoints: {model_dir}\n  SavedModels: {export_dir}/best, {export_dir}/latest\n'
          + (f'  ONNX files: {export_dir}/{onnx_export.ONNX_DIR}\n' if 'onnx' in plan.export_formats else '')
          + f'  tensorboard --logdir {shlex.quote(model_dir)}')


def _cluster_task_done(task, model_dir, export_dir):
    step = experiment.checkpoint_step(model_dir)
    if task.type == 'evaluator':
        return (f'done: evaluated the checkpoint of step {step}\n'
                f'  SavedModels: {export_dir}/best, {export_dir}/latest')
    if task.type == 'chief':
        return f'done: trained to step {step}; checkpoints: {model_dir}'
    return 'done: the global step reached --train_steps'


def _warm_start(run, warm):
    """The WarmStartSettings of a run_plan.WarmStart, for a run without checkpoints yet."""
    if warm is None:
        return None
    if tf.train.latest_checkpoint(run.model_dir):
        print(f'{run.model_dir} already has checkpoints: resuming from them, '
              f'not warm-starting from {warm.source}', flush=True)
        return None
    settings, report = experiment.warm_start_settings(run, warm.source, warm.variables_regex, warm.forget_bias)
    print('\n'.join(report), flush=True)
    return settings


def _described_compute(run, plan):
    """'2 cores, LSTM: fused (rnn_implementation=auto), training in mixed_bfloat16
    (precision=auto)[, XLA]' for the progress header."""
    parts = [f'{experiment.usable_cores()} cores']
    if run.module in registry.MODELS.values():
        requested = run.hparams['rnn_implementation']
        parts.append(f'{run.hparams["cell"].upper()}: {recurrent.implementation(run.hparams)} '
                     f'(rnn_implementation={requested})')
        parts.append(f'training in {plan.precision} '
                     f'(precision={run.hparams["precision"]})')
    if plan.distribution == 'mirrored':
        gpus = len(tf.config.list_physical_devices('GPU'))
        parts.append(f'mirrored on {gpus} GPUs' if gpus else 'mirrored: no GPU, so one replica on the CPU')
    if plan.xla:
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
