"""Command-line entry points: absl flags in one place, wired to estimator_models.running.experiment.

Every command reports a user's mistake as one `error: ...` line on stderr and exits 2.
"""

import collections
import contextlib
import json
import os
import re
import shlex
import sys
import warnings

# Before TensorFlow is imported: keep its C++ start-up chatter off the user's terminal.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402
import tensorflow as tf  # noqa: E402

from estimator_models import registry  # noqa: E402
from estimator_models.layers import backbones, recurrent  # noqa: E402
from estimator_models.legacy import tf1_checkpoints, warm_start  # noqa: E402
from estimator_models.running import (  # noqa: E402
    benchmarks, cluster, cluster_benchmark, experiment, hparams, local_cluster, monitoring,
    preemption, run_directory, training_benchmark)
from estimator_models.serving import onnx_export, onnx_serving, predicting  # noqa: E402
from input_fns import source, specs, writing  # noqa: E402
from input_fns.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
# Exit status of a run stopped by a NaN or infinite loss (user mistakes exit 2).
DIVERGED_EXIT = 3


def _define_train_flags(flag_values):
    flags.DEFINE_string('model', None, f'Model to train: one of {", ".join(registry.MODELS)}, or your '
                        'own TF1 model_fn as package.module:function.', flag_values=flag_values)
    flags.DEFINE_string('data', None, 'Training data spec; default: the model\'s embedded dataset.', flag_values=flag_values)
    flags.DEFINE_string('eval_data', None, 'Evaluation data spec; default: the test split of --data.', flag_values=flag_values)
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared, the embedded ones included; '
                        'default: $TFDS_DATA_DIR or ~/tensorflow_datasets.', flag_values=flag_values)
    flags.DEFINE_string('model_dir', None, 'Checkpoints, events and hparams; default runs/MODEL.', flag_values=flag_values)
    flags.DEFINE_integer('train_steps', None, 'Total training steps; default: the model\'s own.', flag_values=flag_values)
    flags.DEFINE_integer('batch_size', None, 'Examples per batch (an hparam).', flag_values=flag_values)
    flags.DEFINE_float('learning_rate', None, 'Peak learning rate (an hparam).', flag_values=flag_values)
    flags.DEFINE_string('hparams', '', 'Hparam overrides: key=value,key=value (lists as [a,b]).', flag_values=flag_values)
    flags.DEFINE_string('export_dir', None, 'Where SavedModels go; default MODEL_DIR/export.', flag_values=flag_values)
    flags.DEFINE_integer('seed', 42, 'Seed for initialisation and shuffling.', flag_values=flag_values)
    flags.DEFINE_integer('checkpoint_every', None,
                         'Steps between checkpoints, each followed by an evaluation and exports; '
                         'default: a fifth of --train_steps.', flag_values=flag_values)
    flags.DEFINE_string('distribution', 'none', 'none | mirrored (the GPUs of this machine) | '
                        'multi_worker_mirrored (synchronous, under TF_CONFIG). A TF_CONFIG cluster '
                        'with ps tasks trains in parameter-server mode with none.', flag_values=flag_values)
    flags.DEFINE_integer('lost_ps_timeout_secs', 120,
                         'Under TF_CONFIG with ps tasks: end with an error naming the ps task that '
                         'has not answered for this long (0: wait for it forever).', flag_values=flag_values)
    flags.DEFINE_integer('summary_images_every', None,
                         'Steps between input images in TensorBoard, 0 for none (an hparam).', flag_values=flag_values)
    flags.DEFINE_boolean('histograms', None, 'Weight and activation histograms in TensorBoard (an hparam).', flag_values=flag_values)
    flags.DEFINE_boolean('skip_bad_records', None,
                         'Drop records that cannot be read, counting them (input/bad_records), '
                         'instead of stopping at the first (an hparam).', flag_values=flag_values)
    flags.DEFINE_integer('save_every_secs', 600,
                         'Also save a checkpoint every this many seconds (0: only every '
                         '--checkpoint_every steps), bounding what a killed run loses.', flag_values=flag_values)
    flags.DEFINE_string('warm_start_from', None,
                        'Start a new run from this checkpoint or model_dir: this project\'s (any model; '
                        'variables taken where name and shape agree) or a TF1 LSTMCell/GRUCell model\'s '
                        '(converted; see bin/convert_checkpoint).', flag_values=flag_values)
    flags.DEFINE_string('warm_start_vars', '.*',
                        'Regex of the variables to warm-start, matched from the start of their names.', flag_values=flag_values)
    flags.DEFINE_float('forget_bias', 1.0, 'forget_bias of the TF1 LSTMCell of a --warm_start_from '
                       'checkpoint (folded into the converted bias).', flag_values=flag_values)
    flags.DEFINE_list('export_formats', ['saved_model'], 'saved_model, or saved_model,onnx: also an ONNX '
                      'file beside each SavedModel, in EXPORT_DIR/onnx/<its version>, verified against it.', flag_values=flag_values)
    flags.DEFINE_bool('xla', False, 'Compile the training graph with XLA (measured slower on the CPU: '
                      'BENCHMARKS.md).', flag_values=flag_values)
    flags.DEFINE_string('profile_steps', None,
                        'A,B: trace global steps A to B with the TensorFlow profiler into '
                        'MODEL_DIR/plugins/profile (TensorBoard\'s profile tab).', flag_values=flag_values)


def _define_evaluate_flags(flag_values):
    flags.DEFINE_string('model_dir', None, 'A trained model_dir.', flag_values=flag_values)
    flags.DEFINE_string('data', None, 'Data spec to evaluate on; default: the run\'s eval data.', flag_values=flag_values)
    flags.DEFINE_integer('steps', None, 'Batches to evaluate; default: all of the data.', flag_values=flag_values)
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared; default: the run\'s.', flag_values=flag_values)


def _define_export_flags(flag_values):
    flags.DEFINE_string('model_dir', None, 'A trained model_dir.', flag_values=flag_values)
    flags.DEFINE_enum('format', 'saved_model', ['saved_model', 'onnx'],
                      'saved_model (for TensorFlow Serving), or onnx: EXPORT_DIR/<version>/model.onnx '
                      '(default EXPORT_DIR: MODEL_DIR/export/onnx), verified against the SavedModel '
                      'of the same checkpoint.', flag_values=flag_values)
    flags.DEFINE_string('data', None, f'With --format=onnx: data spec whose first '
                        f'{onnx_export.VERIFY_EXAMPLES} examples verify the file; default: seeded '
                        'random pixels (and clip lengths).', flag_values=flag_values)
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared; default: the run\'s.', flag_values=flag_values)
    flags.DEFINE_string('export_dir', None,
                        'Base directory; the SavedModel goes to EXPORT_DIR/<version>. '
                        'Default: MODEL_DIR/export/latest.', flag_values=flag_values)
    flags.DEFINE_bool('list_variables', False, 'Print the variables of the latest checkpoint '
                      '(name, shape, dtype) instead of exporting.', flag_values=flag_values)


def _define_convert_checkpoint_flags(flag_values):
    flags.DEFINE_string('from', None, 'A TF1 checkpoint (prefix or directory) of LSTMCell, '
                        'BasicLSTMCell or GRUCell under dynamic_rnn, and a dense layer.', flag_values=flag_values)
    flags.DEFINE_string('to', None, 'Prefix of the converted checkpoint to write.', flag_values=flag_values)
    flags.DEFINE_float('forget_bias', 1.0, 'forget_bias of the TF1 LSTMCell (folded into the bias).', flag_values=flag_values)


def _define_predict_flags(flag_values):
    flags.DEFINE_string('saved_model', None, 'A SavedModel directory, or a base directory of versions.', flag_values=flag_values)
    flags.DEFINE_string('onnx', None, 'An ONNX file of bin/export --format=onnx, run by onnxruntime '
                        'instead of --saved_model (signatures serving_default and, for clips, '
                        'predict_with_lengths).', flag_values=flag_values)
    flags.DEFINE_multi_string('input', None, 'Input file: image, .npz, TFRecord (*.tfrecord*), or (clips) a directory of frames.', flag_values=flag_values)
    flags.DEFINE_string('request', None, 'A TensorFlow Serving REST request body (JSON file): '
                        '{"instances": [...]}, {"inputs": ...} or {"examples": [...]}.', flag_values=flag_values)
    flags.DEFINE_string('signature', 'serving_default', 'Signature to run.', flag_values=flag_values)


def _define_make_tfrecords_flags(flag_values):
    flags.DEFINE_string('input', None, 'Data spec to convert: an embedded dataset, tfds:NAME, FILE.npz, '
                        'DIR/ of class folders or TFRecord shards.', flag_values=flag_values)
    flags.DEFINE_string('output', None, 'Output prefix: writes PREFIX.tfrecord-00000-of-N ... and '
                        'PREFIX.metadata.json.', flag_values=flag_values)
    flags.DEFINE_integer('shards', 1, 'Number of shard files.', flag_values=flag_values)
    flags.DEFINE_enum('split', 'train', ['train', 'test'], 'Which split of a source that has two.', flag_values=flag_values)
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared (tfds: and embedded inputs).', flag_values=flag_values)


def _define_benchmark_flags(flag_values):
    flags.DEFINE_bool('serving', False, 'Measure serving latency of --saved_model (and --onnx).', flag_values=flag_values)
    flags.DEFINE_string('saved_model', None, 'A SavedModel directory, or a base directory of versions.', flag_values=flag_values)
    flags.DEFINE_string('onnx', None, 'With --serving: also time this ONNX file (of the same model) '
                        'in onnxruntime.', flag_values=flag_values)
    flags.DEFINE_list('batch_sizes', ['1', '32'], 'Batch sizes to measure.', flag_values=flag_values)
    flags.DEFINE_integer('calls', 200, 'Timed calls per signature and batch size.', flag_values=flag_values)
    flags.DEFINE_string('json_out', None, 'Also write the result as JSON to this file.', flag_values=flag_values)
    flags.DEFINE_bool('input_only', False, 'Measure the training input pipeline of --data alone.', flag_values=flag_values)
    flags.DEFINE_string('data', None, 'Data spec for --input_only and --cluster; default: the model\'s '
                        'embedded dataset.', flag_values=flag_values)
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared.', flag_values=flag_values)
    flags.DEFINE_string('model', None, 'The model to train with --train; with --input_only, the model '
                        'whose input size and hparams to use (default: pixel_row_lstm for images, '
                        'temporal_cnn_lstm for clips).', flag_values=flag_values)
    flags.DEFINE_string('hparams', '', 'Hparam overrides for --train and --input_only '
                        '(batch_size, rnn_units, shuffle_buffer, ...).', flag_values=flag_values)
    flags.DEFINE_bool('train', False, 'Compare the training rate of --model with a Keras twin of the '
                      'same architecture, on the same random data, in rounds.', flag_values=flag_values)
    flags.DEFINE_bool('cluster', False, 'Train --model (default pixel_row_lstm) for --steps global steps '
                      'in local clusters of 1 worker, 2 workers + 1 ps, and 2 all-reduce workers; '
                      'report their examples/s. Runs go to runs/cluster_benchmark.', flag_values=flag_values)
    flags.DEFINE_integer('steps', 200, 'Training steps of each side in each --train round '
                         '(with --cluster: global steps of each cluster).', flag_values=flag_values)
    flags.DEFINE_integer('rounds', 3, 'Rounds of --train, alternating the project and Keras.', flag_values=flag_values)
    flags.DEFINE_integer('warmup_steps', 20, 'Untimed first steps of each --train round.', flag_values=flag_values)
    flags.DEFINE_bool('startup', True, 'With --train, also time a default bin/train --model to its '
                      'first step and take its peak memory.', flag_values=flag_values)
    flags.DEFINE_integer('batches', 300, 'Timed batches for --input_only, after --warmup_batches.', flag_values=flag_values)
    flags.DEFINE_integer('warmup_batches', 30, 'Untimed batches first (the shuffle buffer fills).', flag_values=flag_values)
    flags.DEFINE_string('write_noise_clips', None, 'Write TFRecord clips of noise frames to this '
                        'prefix (data for the memory benchmark), about --gigabytes of them.', flag_values=flag_values)
    flags.DEFINE_float('gigabytes', 2.0, 'Size of --write_noise_clips.', flag_values=flag_values)


def _define_launch_local_cluster_flags(flag_values):
    flags.DEFINE_integer('workers', 1, 'Training processes: the chief and WORKERS-1 worker tasks.', flag_values=flag_values)
    flags.DEFINE_integer('ps', 0, 'Parameter-server tasks (then bin/train runs in parameter-server '
                         'mode; without, give --distribution=multi_worker_mirrored to bin/train '
                         'when --workers > 1).', flag_values=flag_values)
    flags.DEFINE_bool('evaluator', False, 'Also run an evaluator task: it evaluates each new '
                      'checkpoint and writes the SavedModels.', flag_values=flag_values)
    flags.DEFINE_integer('max_restarts', 0, 'Restart a failed chief, worker or evaluator this many '
                         'times before stopping the cluster (as a cluster manager\'s restart policy would).', flag_values=flag_values)


def _quiet_tensorflow():
    """Only this project's progress lines and real errors reach the terminal."""
    from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top
    deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access
    tf.get_logger().setLevel('ERROR')
    # TF1 layers and cells in a user's model_fn each warn that they are deprecated.
    warnings.filterwarnings('ignore', message='.*is deprecated and will be removed', category=UserWarning)
    # tf.data's note on options under a tf.distribute strategy, printed once per worker.
    warnings.filterwarnings('ignore', message='To make it possible to preserve tf.data options')
    logging.set_verbosity(logging.ERROR)


def _require(options, name):
    if getattr(options, name) is None:
        raise UserError(f'--{name} is required')


def train(options, argv):
    del argv
    _require(options, 'model')
    task = cluster.from_environment()
    cluster.export_tf_config(task)
    cluster.name_output_lines(task)
    cluster.check_distribution(task, options.distribution)
    model_dir = options.model_dir or os.path.join('runs', options.model.replace(':', '.'))
    export_dir = options.export_dir or os.path.join(model_dir, 'export')
    overrides = hparams.parse_overrides(options.hparams)
    for name in ('batch_size', 'learning_rate', 'summary_images_every', 'histograms', 'skip_bad_records'):
        if getattr(options, name) is not None:
            overrides[name] = str(getattr(options, name))
    training_flags = _checked_training_flags(options)
    if not task.writes_run:
        cluster.wait_for_run_file(model_dir, task)
    validated = experiment.validate_training(options.model, model_dir, options.data, options.eval_data,
                                             overrides, options.data_dir, export_dir)
    if task.writes_run:
        # The writer of the run holds model_dir until it exits, so a second trainer stops
        # here, before it reads data or writes anything. It resumes from an intact checkpoint.
        with run_directory.trainer_lock(model_dir):
            run_directory.repair(model_dir)
            _train(options, task, model_dir, export_dir, validated, *training_flags)
    else:
        _train(options, task, model_dir, export_dir, validated, *training_flags)


def _train(options, task, model_dir, export_dir, validated, train_steps, checkpoint_every, profile_steps):
    """bin/train from the opening of its data on, its flags checked and validated
    (experiment.validate_training)."""
    cluster.watch_parameter_servers(task, options.lost_ps_timeout_secs)
    run, train_source, eval_source = experiment.open_training(
        validated, options.model, model_dir, options.data, options.eval_data, options.data_dir)
    train_steps = train_steps or run.module.DEFAULT_TRAIN_STEPS
    checkpoint_every = checkpoint_every or max(1, train_steps // 5)
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
                checkpoint_every, options.distribution, profile_steps, warm_settings,
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
    """(train_steps or None, checkpoint_every or None, profile steps or None) from the
    flags, checked before anything is read or built."""
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
    return options.train_steps, options.checkpoint_every, profile_steps


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


def evaluate(options, argv):
    del argv
    _require(options, 'model_dir')
    run = experiment.load_run(options.model_dir)
    if options.data_dir:
        run.data_dir = options.data_dir
    print(json.dumps(experiment.evaluate(run, run.evaluation_source(options.data), options.steps),
                     sort_keys=True))


def export(options, argv):
    del argv
    _require(options, 'model_dir')
    if options.list_variables:
        checkpoint, variables = experiment.checkpoint_variables(options.model_dir)
        print(f'# {checkpoint}')
        for name, shape, dtype in variables:
            print(f'{name}\t{shape}\t{dtype}')
        return
    run = experiment.load_run(options.model_dir)
    if options.data_dir:
        run.data_dir = options.data_dir
    if options.format == 'onnx':
        onnx_export.check_available()
        export_dir = options.export_dir or os.path.join(options.model_dir, 'export', onnx_export.ONNX_DIR)
        eval_source = run.evaluation_source(options.data) if options.data else None
        path = experiment.export_onnx(run, export_dir, eval_source)
        print(f'verified: {os.path.join(os.path.dirname(path), onnx_export.VERIFICATION_FILE)}')
        print(path)
        return
    export_dir = options.export_dir or os.path.join(options.model_dir, 'export', 'latest')
    print(experiment.export(run, export_dir))


def convert_checkpoint(options, argv):
    del argv
    _require(options, 'from')
    _require(options, 'to')
    source = warm_start.checkpoint_path(getattr(options, 'from'), '--from')
    path, mapping = tf1_checkpoints.convert_checkpoint(source, options.to, options.forget_bias)
    print('\n'.join(tf1_checkpoints.describe(mapping)))
    print(f'wrote {path} (train from it with --warm_start_from={shlex.quote(path)})')


def predict(options, argv):
    del argv
    if bool(options.saved_model) == bool(options.onnx):
        raise UserError('give either --saved_model or --onnx')
    if bool(options.input) == bool(options.request):
        raise UserError('give either --input files or a --request body')
    if options.onnx:
        onnx_export.check_available()
    loaded = onnx_serving.load(options.onnx) if options.onnx else predicting.load(options.saved_model)
    if options.request:
        body = _read_json(options.request)
    else:
        body = predicting.file_request(loaded, options.signature, options.input)
    print(json.dumps(predicting.run_request(loaded, options.signature, body)))


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


def _read_json(path):
    try:
        with open(path) as stream:
            return json.load(stream)
    except OSError as error:
        raise UserError(f'cannot read {path}: {error.strerror}') from None
    except ValueError as error:
        raise UserError(f'{path} is not valid JSON: {error}') from None
    except RecursionError:
        raise UserError(f'{path} nests its JSON too deeply') from None


def make_tfrecords(options, argv):
    del argv
    _require(options, 'input')
    _require(options, 'output')
    if options.shards < 1:
        raise UserError(f'--shards must be positive, got {options.shards}')
    train, test = specs.open_splits(options.input, None, options.data_dir)
    if options.split == 'test' and test is None:
        raise UserError(f'{options.input} has no test split')
    data = test if options.split == 'test' else train
    summary = writing.source_to_tfrecords(data, options.output, options.shards)
    per_class = ', '.join(f'{name} {count}' for name, count in summary['per_class'].items())
    print(f'wrote {summary["examples"]} {data.info.kind}s of {summary["classes"]} classes '
          f'({per_class}) in {len(summary["shards"])} shards, {summary["bytes"] / 1e6:.1f} MB:\n'
          f'  {options.output}.tfrecord-*  (train with --data={shlex.quote(options.output + ".tfrecord*")})\n'
          f'  {summary["metadata"]}')


def benchmark(options, argv):
    del argv
    if options.train:
        return _benchmark_training(options)
    if options.cluster:
        return _benchmark_clusters(options)
    if options.input_only:
        return _benchmark_input(options)
    if options.write_noise_clips:
        summary = benchmarks.write_noise_clips(options.write_noise_clips, options.gigabytes)
        print(f'wrote {summary["examples"]} clips, {summary["bytes"] / 1e9:.2f} GB: '
              f'{options.write_noise_clips}.tfrecord-*')
        return None
    if not options.serving:
        raise UserError('choose a benchmark: --train, --cluster, --serving, --input_only or '
                        '--write_noise_clips')
    _require(options, 'saved_model')
    try:
        batch_sizes = [int(size) for size in options.batch_sizes]
    except ValueError:
        raise UserError(f'--batch_sizes must be integers, got {",".join(options.batch_sizes)}') from None
    if options.calls < 1 or min(batch_sizes) < 1:
        raise UserError('--calls and --batch_sizes must be positive')
    if options.onnx:
        onnx_export.check_available()
        onnx_serving.load(options.onnx)  # a bad file is one line before any timing
    rows = benchmarks.serving_latency(options.saved_model, batch_sizes, options.calls, options.onnx)
    print(f'serving latency of {predicting.resolve_version(options.saved_model)} '
          f'(in-process, {os.cpu_count()} CPU cores)')
    print(benchmarks.markdown_table(rows))
    if options.json_out:
        with open(options.json_out, 'w') as stream:
            json.dump(rows, stream, indent=2)


def _benchmark_training(options):
    _require(options, 'model')
    if options.steps < 2 or options.rounds < 1:
        raise UserError(f'--steps must be at least 2 and --rounds at least 1, '
                        f'got --steps={options.steps} --rounds={options.rounds}')
    if not 1 <= options.warmup_steps < options.steps:
        raise UserError(f'--warmup_steps must lie in 1..{options.steps - 1} (below --steps), '
                        f'got {options.warmup_steps}')
    # Training prints its progress lines on stdout; here stdout is the one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        result = training_benchmark.train_benchmark(
            options.model, hparams.parse_overrides(options.hparams), options.steps, options.rounds,
            options.warmup_steps, options.startup)
    print(json.dumps(result, sort_keys=True))
    if options.json_out:
        with open(options.json_out, 'w') as stream:
            json.dump(result, stream, indent=2, sort_keys=True)


def _benchmark_clusters(options):
    if options.steps < 2:
        raise UserError(f'--steps must be at least 2, got {options.steps}')
    model = options.model or 'pixel_row_lstm'
    registry.get(model)
    # The clusters' progress goes to stderr; stdout is the one JSON object.
    result = cluster_benchmark.cluster_benchmark(model, options.steps, options.hparams,
                                                 os.path.join('runs', 'cluster_benchmark'), sys.stderr,
                                                 data=options.data)
    print(json.dumps(result, sort_keys=True))
    if options.json_out:
        with open(options.json_out, 'w') as stream:
            json.dump(result, stream, indent=2, sort_keys=True)


def _benchmark_input(options):
    if options.batches < 1 or options.warmup_batches < 0:
        raise UserError('--batches must be positive and --warmup_batches not negative')
    model = options.model
    if model is None:
        kind = specs.open_splits(options.data, None, options.data_dir)[0].info.kind if options.data else 'image'
        model = 'temporal_cnn_lstm' if kind == 'clip' else 'pixel_row_lstm'
    run, train_source, _ = experiment.prepare_training(
        model, None, options.data, None, hparams.parse_overrides(options.hparams), options.data_dir)
    result = benchmarks.input_throughput(run, train_source, options.batches, options.warmup_batches)
    print(json.dumps(result, sort_keys=True))
    if options.json_out:
        with open(options.json_out, 'w') as stream:
            json.dump(result, stream, indent=2)


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


def _guarded(command):
    """Runs a command, turning the user's mistakes into one line and a non-zero exit."""
    def main(options, argv):
        _quiet_tensorflow()
        if len(argv) > 1 and not command.takes_arguments:
            raise SystemExit(_fail(f'unexpected arguments: {" ".join(argv[1:])}'))
        try:
            command.run(options, argv)
        except UserError as error:
            sys.exit(_fail(str(error)))
        except tf.errors.OpError as error:
            bad_record = source.bad_record_message(error.message)
            sys.exit(_fail(bad_record or _op_error_line(error)))
        except monitoring.Diverged as error:
            sys.exit(_fail(str(error), code=DIVERGED_EXIT))
        except OSError as error:
            # A disk that is full or read-only: what was written before stays as it was.
            sys.exit(_fail(f'cannot write {error.filename or ""}: {error.strerror or error}'))
        except KeyboardInterrupt:
            sys.exit(_fail('interrupted; checkpoints already written are kept', code=130))
    return main


def _op_error_line(error):
    message = _first_line(error.message)
    if isinstance(error, tf.errors.PermissionDeniedError) or 'No space left on device' in message:
        # Checkpoints, events and exports are written under temporary names and renamed,
        # so what was written before is intact.
        return f'cannot write: {message}'
    return f'TensorFlow: {message}'


def _first_line(message):
    """An OpError's message without the graph function it came from; for a session's
    "Graph execution error", the message after the traceback of the failing node."""
    lines = re.sub(r'^\{\{function_node [^}]*\}\}\s*', '', message.strip()).splitlines()
    node_lines = [index for index, line in enumerate(lines) if line.startswith('Node: ')]
    if lines[0].startswith('Graph execution error') and node_lines and node_lines[-1] + 1 < len(lines):
        return lines[node_lines[-1] + 1].strip()
    return lines[0]


def _fail(message, code=2):
    print(f'error: {message}', file=sys.stderr, flush=True)
    return code


def launch_local_cluster(options, argv):
    train_flags = argv[1:]
    if not train_flags:
        raise UserError('give the bin/train flags after --, e.g. -- --model=pixel_row_lstm')
    launched = local_cluster.LocalCluster(options.workers, options.ps, options.evaluator, train_flags,
                                          options.max_restarts)
    sys.exit(launched.run())


# bin/<name>: the function that defines its flags on a FlagValues, the function that runs it
# with the parsed flags and the remaining arguments, and whether it takes positional
# arguments (bin/launch_local_cluster passes what follows -- on to bin/train).
Command = collections.namedtuple('Command', 'define_flags run takes_arguments')
COMMANDS = {
    'train': Command(_define_train_flags, train, False),
    'evaluate': Command(_define_evaluate_flags, evaluate, False),
    'export': Command(_define_export_flags, export, False),
    'predict': Command(_define_predict_flags, predict, False),
    'convert_checkpoint': Command(_define_convert_checkpoint_flags, convert_checkpoint, False),
    'make_tfrecords': Command(_define_make_tfrecords_flags, make_tfrecords, False),
    'benchmark': Command(_define_benchmark_flags, benchmark, False),
    'launch_local_cluster': Command(_define_launch_local_cluster_flags, launch_local_cluster, True),
}


def main(name):
    """The process of bin/<name>: absl parses its flags into the global FLAGS (so --help and
    --helpfull list them) and the command's exit status ends the process."""
    command = COMMANDS[name]
    command.define_flags(FLAGS)
    app.run(lambda argv: _guarded(command)(FLAGS, argv), flags_parser=_parse_flags)


def run(name, argv):
    """Runs bin/<name> inside this process as its own process would and returns the exit
    status; `argv` is the command's arguments without the program name, the output goes to
    sys.stdout and sys.stderr. Each call parses into flags of its own, so any number of
    commands can run one after another in one process."""
    command = COMMANDS[name]
    options = flags.FlagValues()
    command.define_flags(options)
    try:
        remaining = options([f'bin/{name}', *argv])
    except flags.Error as error:
        return _fail(str(error))
    try:
        _guarded(command)(options, remaining)
    except SystemExit as stopped:
        return _exit_status(stopped.code)
    return 0


def _exit_status(code):
    """The process exit status that sys.exit(code) gives."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main_train():
    main('train')


def main_evaluate():
    main('evaluate')


def main_export():
    main('export')


def main_predict():
    main('predict')


def main_convert_checkpoint():
    main('convert_checkpoint')


def main_make_tfrecords():
    main('make_tfrecords')


def main_benchmark():
    main('benchmark')


def main_launch_local_cluster():
    main('launch_local_cluster')
