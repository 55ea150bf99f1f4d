"""Command-line entry points: absl flags in one place, wired to estimator_models.running.experiment.

Every command reports a user's mistake as one `error: ...` line on stderr and exits 2.
"""

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
    preemption, training_benchmark)
from estimator_models.serving import onnx_export, onnx_serving, predicting  # noqa: E402
from input_fns import source, specs, writing  # noqa: E402
from input_fns.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
# Exit status of a run stopped by a NaN or infinite loss (user mistakes exit 2).
DIVERGED_EXIT = 3


def _define_train_flags():
    flags.DEFINE_string('model', None, f'Model to train: one of {", ".join(registry.MODELS)}, or your '
                        'own TF1 model_fn as package.module:function.')
    flags.DEFINE_string('data', None, 'Training data spec; default: the model\'s embedded dataset.')
    flags.DEFINE_string('eval_data', None, 'Evaluation data spec; default: the test split of --data.')
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared, the embedded ones included; '
                        'default: $TFDS_DATA_DIR or ~/tensorflow_datasets.')
    flags.DEFINE_string('model_dir', None, 'Checkpoints, events and hparams; default runs/MODEL.')
    flags.DEFINE_integer('train_steps', None, 'Total training steps; default: the model\'s own.')
    flags.DEFINE_integer('batch_size', None, 'Examples per batch (an hparam).')
    flags.DEFINE_float('learning_rate', None, 'Peak learning rate (an hparam).')
    flags.DEFINE_string('hparams', '', 'Hparam overrides: key=value,key=value (lists as [a,b]).')
    flags.DEFINE_string('export_dir', None, 'Where SavedModels go; default MODEL_DIR/export.')
    flags.DEFINE_integer('seed', 42, 'Seed for initialisation and shuffling.')
    flags.DEFINE_integer('checkpoint_every', None,
                         'Steps between checkpoints, each followed by an evaluation and exports; '
                         'default: a fifth of --train_steps.')
    flags.DEFINE_string('distribution', 'none', 'none | mirrored (the GPUs of this machine) | '
                        'multi_worker_mirrored (synchronous, under TF_CONFIG). A TF_CONFIG cluster '
                        'with ps tasks trains in parameter-server mode with none.')
    flags.DEFINE_integer('lost_ps_timeout_secs', 120,
                         'Under TF_CONFIG with ps tasks: end with an error naming the ps task that '
                         'has not answered for this long (0: wait for it forever).')
    flags.DEFINE_integer('summary_images_every', None,
                         'Steps between input images in TensorBoard, 0 for none (an hparam).')
    flags.DEFINE_boolean('histograms', None, 'Weight and activation histograms in TensorBoard (an hparam).')
    flags.DEFINE_boolean('skip_bad_records', None,
                         'Drop records that cannot be read, counting them (input/bad_records), '
                         'instead of stopping at the first (an hparam).')
    flags.DEFINE_integer('save_every_secs', 600,
                         'Also save a checkpoint every this many seconds (0: only every '
                         '--checkpoint_every steps), bounding what a killed run loses.')
    flags.DEFINE_string('warm_start_from', None,
                        'Start a new run from this checkpoint or model_dir: this project\'s (any model; '
                        'variables taken where name and shape agree) or a TF1 LSTMCell/GRUCell model\'s '
                        '(converted; see bin/convert_checkpoint).')
    flags.DEFINE_string('warm_start_vars', '.*',
                        'Regex of the variables to warm-start, matched from the start of their names.')
    flags.DEFINE_float('forget_bias', 1.0, 'forget_bias of the TF1 LSTMCell of a --warm_start_from '
                       'checkpoint (folded into the converted bias).')
    flags.DEFINE_list('export_formats', ['saved_model'], 'saved_model, or saved_model,onnx: also an ONNX '
                      'file beside each SavedModel, in EXPORT_DIR/onnx/<its version>, verified against it.')
    flags.DEFINE_bool('xla', False, 'Compile the training graph with XLA (measured slower on the CPU: '
                      'BENCHMARKS.md).')
    flags.DEFINE_string('profile_steps', None,
                        'A,B: trace global steps A to B with the TensorFlow profiler into '
                        'MODEL_DIR/plugins/profile (TensorBoard\'s profile tab).')


def _define_evaluate_flags():
    flags.DEFINE_string('model_dir', None, 'A trained model_dir.')
    flags.DEFINE_string('data', None, 'Data spec to evaluate on; default: the run\'s eval data.')
    flags.DEFINE_integer('steps', None, 'Batches to evaluate; default: all of the data.')
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared; default: the run\'s.')


def _define_export_flags():
    flags.DEFINE_string('model_dir', None, 'A trained model_dir.')
    flags.DEFINE_enum('format', 'saved_model', ['saved_model', 'onnx'],
                      'saved_model (for TensorFlow Serving), or onnx: EXPORT_DIR/<version>/model.onnx '
                      '(default EXPORT_DIR: MODEL_DIR/export/onnx), verified against the SavedModel '
                      'of the same checkpoint.')
    flags.DEFINE_string('data', None, f'With --format=onnx: data spec whose first '
                        f'{onnx_export.VERIFY_EXAMPLES} examples verify the file; default: seeded '
                        'random pixels (and clip lengths).')
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared; default: the run\'s.')
    flags.DEFINE_string('export_dir', None,
                        'Base directory; the SavedModel goes to EXPORT_DIR/<version>. '
                        'Default: MODEL_DIR/export/latest.')
    flags.DEFINE_bool('list_variables', False, 'Print the variables of the latest checkpoint '
                      '(name, shape, dtype) instead of exporting.')


def _define_convert_checkpoint_flags():
    flags.DEFINE_string('from', None, 'A TF1 checkpoint (prefix or directory) of LSTMCell, '
                        'BasicLSTMCell or GRUCell under dynamic_rnn, and a dense layer.')
    flags.DEFINE_string('to', None, 'Prefix of the converted checkpoint to write.')
    flags.DEFINE_float('forget_bias', 1.0, 'forget_bias of the TF1 LSTMCell (folded into the bias).')


def _define_predict_flags():
    flags.DEFINE_string('saved_model', None, 'A SavedModel directory, or a base directory of versions.')
    flags.DEFINE_string('onnx', None, 'An ONNX file of bin/export --format=onnx, run by onnxruntime '
                        'instead of --saved_model (signatures serving_default and, for clips, '
                        'predict_with_lengths).')
    flags.DEFINE_multi_string('input', None, 'Input file: image, .npz, TFRecord (*.tfrecord*), or (clips) a directory of frames.')
    flags.DEFINE_string('request', None, 'A TensorFlow Serving REST request body (JSON file): '
                        '{"instances": [...]}, {"inputs": ...} or {"examples": [...]}.')
    flags.DEFINE_string('signature', 'serving_default', 'Signature to run.')


def _define_make_tfrecords_flags():
    flags.DEFINE_string('input', None, 'Data spec to convert: an embedded dataset, tfds:NAME, FILE.npz, '
                        'DIR/ of class folders or TFRecord shards.')
    flags.DEFINE_string('output', None, 'Output prefix: writes PREFIX.tfrecord-00000-of-N ... and '
                        'PREFIX.metadata.json.')
    flags.DEFINE_integer('shards', 1, 'Number of shard files.')
    flags.DEFINE_enum('split', 'train', ['train', 'test'], 'Which split of a source that has two.')
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared (tfds: and embedded inputs).')


def _define_benchmark_flags():
    flags.DEFINE_bool('serving', False, 'Measure serving latency of --saved_model (and --onnx).')
    flags.DEFINE_string('saved_model', None, 'A SavedModel directory, or a base directory of versions.')
    flags.DEFINE_string('onnx', None, 'With --serving: also time this ONNX file (of the same model) '
                        'in onnxruntime.')
    flags.DEFINE_list('batch_sizes', ['1', '32'], 'Batch sizes to measure.')
    flags.DEFINE_integer('calls', 200, 'Timed calls per signature and batch size.')
    flags.DEFINE_string('json_out', None, 'Also write the result as JSON to this file.')
    flags.DEFINE_bool('input_only', False, 'Measure the training input pipeline of --data alone.')
    flags.DEFINE_string('data', None, 'Data spec for --input_only and --cluster; default: the model\'s '
                        'embedded dataset.')
    flags.DEFINE_string('data_dir', None, 'Where TFDS datasets are prepared.')
    flags.DEFINE_string('model', None, 'The model to train with --train; with --input_only, the model '
                        'whose input size and hparams to use (default: pixel_row_lstm for images, '
                        'temporal_cnn_lstm for clips).')
    flags.DEFINE_string('hparams', '', 'Hparam overrides for --train and --input_only '
                        '(batch_size, rnn_units, shuffle_buffer, ...).')
    flags.DEFINE_bool('train', False, 'Compare the training rate of --model with a Keras twin of the '
                      'same architecture, on the same random data, in rounds.')
    flags.DEFINE_bool('cluster', False, 'Train --model (default pixel_row_lstm) for --steps global steps '
                      'in local clusters of 1 worker, 2 workers + 1 ps, and 2 all-reduce workers; '
                      'report their examples/s. Runs go to runs/cluster_benchmark.')
    flags.DEFINE_integer('steps', 200, 'Training steps of each side in each --train round '
                         '(with --cluster: global steps of each cluster).')
    flags.DEFINE_integer('rounds', 3, 'Rounds of --train, alternating the project and Keras.')
    flags.DEFINE_integer('warmup_steps', 20, 'Untimed first steps of each --train round.')
    flags.DEFINE_bool('startup', True, 'With --train, also time a default bin/train --model to its '
                      'first step and take its peak memory.')
    flags.DEFINE_integer('batches', 300, 'Timed batches for --input_only, after --warmup_batches.')
    flags.DEFINE_integer('warmup_batches', 30, 'Untimed batches first (the shuffle buffer fills).')
    flags.DEFINE_string('write_noise_clips', None, 'Write TFRecord clips of noise frames to this '
                        'prefix (data for the memory benchmark), about --gigabytes of them.')
    flags.DEFINE_float('gigabytes', 2.0, 'Size of --write_noise_clips.')


def _define_launch_local_cluster_flags():
    flags.DEFINE_integer('workers', 1, 'Training processes: the chief and WORKERS-1 worker tasks.')
    flags.DEFINE_integer('ps', 0, 'Parameter-server tasks (then bin/train runs in parameter-server '
                         'mode; without, give --distribution=multi_worker_mirrored to bin/train '
                         'when --workers > 1).')
    flags.DEFINE_bool('evaluator', False, 'Also run an evaluator task: it evaluates each new '
                      'checkpoint and writes the SavedModels.')
    flags.DEFINE_integer('max_restarts', 0, 'Restart a failed chief, worker or evaluator this many '
                         'times before stopping the cluster (as a cluster manager\'s restart policy would).')


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


def _require(name):
    if getattr(FLAGS, name) is None:
        raise UserError(f'--{name} is required')


def train(argv):
    del argv
    _require('model')
    task = cluster.from_environment()
    cluster.export_tf_config(task)
    cluster.name_output_lines(task)
    cluster.check_distribution(task, FLAGS.distribution)
    model_dir = FLAGS.model_dir or os.path.join('runs', FLAGS.model.replace(':', '.'))
    export_dir = FLAGS.export_dir or os.path.join(model_dir, 'export')
    overrides = hparams.parse_overrides(FLAGS.hparams)
    for name in ('batch_size', 'learning_rate', 'summary_images_every', 'histograms', 'skip_bad_records'):
        if getattr(FLAGS, name) is not None:
            overrides[name] = str(getattr(FLAGS, name))
    train_steps, checkpoint_every, profile_steps = _checked_training_flags()
    if not task.writes_run:
        cluster.wait_for_run_file(model_dir, task)
    cluster.watch_parameter_servers(task, FLAGS.lost_ps_timeout_secs)
    run, train_source, eval_source = experiment.prepare_training(
        FLAGS.model, model_dir, FLAGS.data, FLAGS.eval_data, overrides, FLAGS.data_dir, export_dir)
    train_steps = train_steps or run.module.DEFAULT_TRAIN_STEPS
    checkpoint_every = checkpoint_every or max(1, train_steps // 5)
    warm_settings = _warm_start(run)
    tf.keras.utils.set_random_seed(FLAGS.seed)
    onnx_line = (f'  ONNX files:                   {os.path.join(export_dir, onnx_export.ONNX_DIR)}\n'
                 if 'onnx' in FLAGS.export_formats else '')
    print(f'training {run.model} for {train_steps} steps on {_described(train_source)}, '
          f'evaluating on {_described(eval_source)}\n'
          f'  checkpoints and train events: {model_dir}\n'
          f'  eval events:                  {os.path.join(model_dir, "eval")}\n'
          f'  SavedModels:                  {os.path.join(export_dir, "best")}, '
          f'{os.path.join(export_dir, "latest")}\n{onnx_line}'
          f'  watch it: tensorboard --logdir {shlex.quote(model_dir)}\n'
          f'  runs on: {_described_compute(run, task)}', flush=True)
    if run.hparams.get('backbone', 'small_cnn') != 'small_cnn':
        print(f'  backbone: {backbones.describe(run.hparams)}', flush=True)
    if not task.is_local:
        print(f'  cluster: {task.describe(FLAGS.distribution)}', flush=True)
    # Only the task that writes checkpoints saves one on SIGTERM; the others just stop.
    watch = preemption.SignalWatch() if task.writes_run else contextlib.nullcontext()
    with watch:
        try:
            result = experiment.train_and_evaluate(
                run, train_source, eval_source, train_steps, FLAGS.seed, export_dir,
                checkpoint_every, FLAGS.distribution, profile_steps, warm_settings,
                preemption.hooks(watch, model_dir, FLAGS.save_every_secs) if task.writes_run else (),
                FLAGS.xla, task, FLAGS.export_formats)
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


def _checked_training_flags():
    """(train_steps or None, checkpoint_every or None, profile steps or None) from the
    flags, checked before anything is read or built."""
    for name in ('train_steps', 'checkpoint_every'):
        value = getattr(FLAGS, name)
        if value is not None and value <= 0:
            raise UserError(f'--{name} must be positive, got {value}')
    if FLAGS.save_every_secs < 0:
        raise UserError(f'--save_every_secs must be 0 (off) or more, got {FLAGS.save_every_secs}')
    if FLAGS.warm_start_from:
        warm_start.checkpoint_path(FLAGS.warm_start_from)
    _checked_export_formats()
    train_steps = FLAGS.train_steps or registry.get(FLAGS.model).DEFAULT_TRAIN_STEPS
    profile_steps = (monitoring.parse_profile_steps(FLAGS.profile_steps, train_steps)
                     if FLAGS.profile_steps else None)
    return FLAGS.train_steps, FLAGS.checkpoint_every, profile_steps


def _checked_export_formats():
    formats = FLAGS.export_formats
    unknown = sorted(set(formats) - {'saved_model', 'onnx'})
    if unknown:
        raise UserError(f'--export_formats: unknown format {unknown[0]} (saved_model, onnx)')
    if 'saved_model' not in formats:
        raise UserError('--export_formats must list saved_model: an ONNX file is verified against it')
    if 'onnx' in formats:
        onnx_export.check_available()


def _warm_start(run):
    """The WarmStartSettings of --warm_start_from, for a run without checkpoints yet."""
    if not FLAGS.warm_start_from:
        return None
    if tf.train.latest_checkpoint(run.model_dir):
        print(f'{run.model_dir} already has checkpoints: resuming from them, '
              f'not warm-starting from {FLAGS.warm_start_from}', flush=True)
        return None
    settings, report = experiment.warm_start_settings(
        run, FLAGS.warm_start_from, FLAGS.warm_start_vars, FLAGS.forget_bias)
    print('\n'.join(report), flush=True)
    return settings


def evaluate(argv):
    del argv
    _require('model_dir')
    run = experiment.load_run(FLAGS.model_dir)
    if FLAGS.data_dir:
        run.data_dir = FLAGS.data_dir
    print(json.dumps(experiment.evaluate(run, run.evaluation_source(FLAGS.data), FLAGS.steps),
                     sort_keys=True))


def export(argv):
    del argv
    _require('model_dir')
    if FLAGS.list_variables:
        checkpoint, variables = experiment.checkpoint_variables(FLAGS.model_dir)
        print(f'# {checkpoint}')
        for name, shape, dtype in variables:
            print(f'{name}\t{shape}\t{dtype}')
        return
    run = experiment.load_run(FLAGS.model_dir)
    if FLAGS.data_dir:
        run.data_dir = FLAGS.data_dir
    if FLAGS.format == 'onnx':
        onnx_export.check_available()
        export_dir = FLAGS.export_dir or os.path.join(FLAGS.model_dir, 'export', onnx_export.ONNX_DIR)
        eval_source = run.evaluation_source(FLAGS.data) if FLAGS.data else None
        path = experiment.export_onnx(run, export_dir, eval_source)
        print(f'verified: {os.path.join(os.path.dirname(path), onnx_export.VERIFICATION_FILE)}')
        print(path)
        return
    export_dir = FLAGS.export_dir or os.path.join(FLAGS.model_dir, 'export', 'latest')
    print(experiment.export(run, export_dir))


def convert_checkpoint(argv):
    del argv
    _require('from')
    _require('to')
    source = warm_start.checkpoint_path(getattr(FLAGS, 'from'), '--from')
    path, mapping = tf1_checkpoints.convert_checkpoint(source, FLAGS.to, FLAGS.forget_bias)
    print('\n'.join(tf1_checkpoints.describe(mapping)))
    print(f'wrote {path} (train from it with --warm_start_from={shlex.quote(path)})')


def predict(argv):
    del argv
    if bool(FLAGS.saved_model) == bool(FLAGS.onnx):
        raise UserError('give either --saved_model or --onnx')
    if bool(FLAGS.input) == bool(FLAGS.request):
        raise UserError('give either --input files or a --request body')
    if FLAGS.onnx:
        onnx_export.check_available()
    loaded = onnx_serving.load(FLAGS.onnx) if FLAGS.onnx else predicting.load(FLAGS.saved_model)
    if FLAGS.request:
        body = _read_json(FLAGS.request)
    else:
        body = predicting.file_request(loaded, FLAGS.signature, FLAGS.input)
    print(json.dumps(predicting.run_request(loaded, FLAGS.signature, body)))


def _described_compute(run, task):
    """'2 cores, LSTM: fused (rnn_implementation=auto), training in mixed_bfloat16
    (precision=auto)[, XLA]' for the progress header of `task` (a cluster.Task)."""
    parts = [f'{experiment.usable_cores()} cores']
    if run.module in registry.MODELS.values():
        requested = run.hparams['rnn_implementation']
        parts.append(f'{run.hparams["cell"].upper()}: {recurrent.implementation(run.hparams)} '
                     f'(rnn_implementation={requested})')
        parts.append(f'training in {experiment.training_precision(run.hparams, task)} '
                     f'(precision={run.hparams["precision"]})')
    if FLAGS.distribution == 'mirrored':
        gpus = len(tf.config.list_physical_devices('GPU'))
        parts.append(f'mirrored on {gpus} GPUs' if gpus else 'mirrored: no GPU, so one replica on the CPU')
    if FLAGS.xla:
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


def make_tfrecords(argv):
    del argv
    _require('input')
    _require('output')
    if FLAGS.shards < 1:
        raise UserError(f'--shards must be positive, got {FLAGS.shards}')
    train, test = specs.open_splits(FLAGS.input, None, FLAGS.data_dir)
    if FLAGS.split == 'test' and test is None:
        raise UserError(f'{FLAGS.input} has no test split')
    data = test if FLAGS.split == 'test' else train
    summary = writing.source_to_tfrecords(data, FLAGS.output, FLAGS.shards)
    per_class = ', '.join(f'{name} {count}' for name, count in summary['per_class'].items())
    print(f'wrote {summary["examples"]} {data.info.kind}s of {summary["classes"]} classes '
          f'({per_class}) in {len(summary["shards"])} shards, {summary["bytes"] / 1e6:.1f} MB:\n'
          f'  {FLAGS.output}.tfrecord-*  (train with --data={shlex.quote(FLAGS.output + ".tfrecord*")})\n'
          f'  {summary["metadata"]}')


def benchmark(argv):
    del argv
    if FLAGS.train:
        return _benchmark_training()
    if FLAGS.cluster:
        return _benchmark_clusters()
    if FLAGS.input_only:
        return _benchmark_input()
    if FLAGS.write_noise_clips:
        summary = benchmarks.write_noise_clips(FLAGS.write_noise_clips, FLAGS.gigabytes)
        print(f'wrote {summary["examples"]} clips, {summary["bytes"] / 1e9:.2f} GB: '
              f'{FLAGS.write_noise_clips}.tfrecord-*')
        return None
    if not FLAGS.serving:
        raise UserError('choose a benchmark: --train, --cluster, --serving, --input_only or '
                        '--write_noise_clips')
    _require('saved_model')
    try:
        batch_sizes = [int(size) for size in FLAGS.batch_sizes]
    except ValueError:
        raise UserError(f'--batch_sizes must be integers, got {",".join(FLAGS.batch_sizes)}') from None
    if FLAGS.calls < 1 or min(batch_sizes) < 1:
        raise UserError('--calls and --batch_sizes must be positive')
    if FLAGS.onnx:
        onnx_export.check_available()
        onnx_serving.load(FLAGS.onnx)  # a bad file is one line before any timing
    rows = benchmarks.serving_latency(FLAGS.saved_model, batch_sizes, FLAGS.calls, FLAGS.onnx)
    print(f'serving latency of {predicting.resolve_version(FLAGS.saved_model)} '
          f'(in-process, {os.cpu_count()} CPU cores)')
    print(benchmarks.markdown_table(rows))
    if FLAGS.json_out:
        with open(FLAGS.json_out, 'w') as stream:
            json.dump(rows, stream, indent=2)


def _benchmark_training():
    _require('model')
    if FLAGS.steps < 2 or FLAGS.rounds < 1:
        raise UserError(f'--steps must be at least 2 and --rounds at least 1, '
                        f'got --steps={FLAGS.steps} --rounds={FLAGS.rounds}')
    if not 1 <= FLAGS.warmup_steps < FLAGS.steps:
        raise UserError(f'--warmup_steps must lie in 1..{FLAGS.steps - 1} (below --steps), '
                        f'got {FLAGS.warmup_steps}')
    # Training prints its progress lines on stdout; here stdout is the one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        result = training_benchmark.train_benchmark(
            FLAGS.model, hparams.parse_overrides(FLAGS.hparams), FLAGS.steps, FLAGS.rounds,
            FLAGS.warmup_steps, FLAGS.startup)
    print(json.dumps(result, sort_keys=True))
    if FLAGS.json_out:
        with open(FLAGS.json_out, 'w') as stream:
            json.dump(result, stream, indent=2, sort_keys=True)


def _benchmark_clusters():
    if FLAGS.steps < 2:
        raise UserError(f'--steps must be at least 2, got {FLAGS.steps}')
    model = FLAGS.model or 'pixel_row_lstm'
    registry.get(model)
    # The clusters' progress goes to stderr; stdout is the one JSON object.
    result = cluster_benchmark.cluster_benchmark(model, FLAGS.steps, FLAGS.hparams,
                                                 os.path.join('runs', 'cluster_benchmark'), sys.stderr,
                                                 data=FLAGS.data)
    print(json.dumps(result, sort_keys=True))
    if FLAGS.json_out:
        with open(FLAGS.json_out, 'w') as stream:
            json.dump(result, stream, indent=2, sort_keys=True)


def _benchmark_input():
    if FLAGS.batches < 1 or FLAGS.warmup_batches < 0:
        raise UserError('--batches must be positive and --warmup_batches not negative')
    model = FLAGS.model
    if model is None:
        kind = specs.open_splits(FLAGS.data, None, FLAGS.data_dir)[0].info.kind if FLAGS.data else 'image'
        model = 'temporal_cnn_lstm' if kind == 'clip' else 'pixel_row_lstm'
    run, train_source, _ = experiment.prepare_training(
        model, None, FLAGS.data, None, hparams.parse_overrides(FLAGS.hparams), FLAGS.data_dir)
    result = benchmarks.input_throughput(run, train_source, FLAGS.batches, FLAGS.warmup_batches)
    print(json.dumps(result, sort_keys=True))
    if FLAGS.json_out:
        with open(FLAGS.json_out, 'w') as stream:
            json.dump(result, stream, indent=2)


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)


def _guarded(command, takes_arguments=False):
    """Runs a command, turning the user's mistakes into one line and a non-zero exit."""
    def main(argv):
        _quiet_tensorflow()
        if len(argv) > 1 and not takes_arguments:
            raise SystemExit(_fail(f'unexpected arguments: {" ".join(argv[1:])}'))
        try:
            command(argv)
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


def _main(define_flags, command):
    define_flags()
    app.run(_guarded(command), flags_parser=_parse_flags)


def launch_local_cluster(argv):
    train_flags = argv[1:]
    if not train_flags:
        raise UserError('give the bin/train flags after --, e.g. -- --model=pixel_row_lstm')
    launched = local_cluster.LocalCluster(FLAGS.workers, FLAGS.ps, FLAGS.evaluator, train_flags,
                                          FLAGS.max_restarts)
    sys.exit(launched.run())


def main_launch_local_cluster():
    _define_launch_local_cluster_flags()
    app.run(_guarded(launch_local_cluster, takes_arguments=True), flags_parser=_parse_flags)


def main_train():
    _main(_define_train_flags, train)


def main_evaluate():
    _main(_define_evaluate_flags, evaluate)


def main_export():
    _main(_define_export_flags, export)


def main_predict():
    _main(_define_predict_flags, predict)


def main_convert_checkpoint():
    _main(_define_convert_checkpoint_flags, convert_checkpoint)


def main_make_tfrecords():
    _main(_define_make_tfrecords_flags, make_tfrecords)


def main_benchmark():
    _main(_define_benchmark_flags, benchmark)
