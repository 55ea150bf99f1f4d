"""Shared fixtures: small real datasets from the embedded generators, briefly trained models
(one of them a bin/train run that several test files read), and helpers that run the
pipeline the way a user does: a bin/ command in this process (run_cli) or, where the
process itself is under test, in a fresh one (run_bin)."""

import os

# What a user who has set nothing sees: the commands keep TensorFlow's C++ start-up lines
# at this level unless told otherwise, whatever the shell running the tests exported.
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'

import contextlib  # noqa: E402
import fcntl  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from estimator_models import cache  # noqa: E402
from estimator_models.benchmarks import torch_environment  # noqa: E402
from estimator_models.layers import kernels  # noqa: E402
from estimator_models.running import cli, experiment  # noqa: E402
from estimator_models.serving import exporting, keras3_environment  # noqa: E402
from input_fns import writing  # noqa: E402
from input_fns.embedded import glyphs, moving_glyphs  # noqa: E402
from input_fns.sources import arrays  # noqa: E402

# Small models on the data as it is: a few steps must fit a batch, which random warps would
# slow (augmentation has its own tests, tests/test_augment.py).
TINY = {
    'pixel_row_lstm': {'rnn_units': '16', 'batch_size': '16', 'augment': 'none'},
    'cnn_lstm': {'rnn_units': '16', 'cnn_filters': '[8,16]', 'batch_size': '16', 'augment': 'none'},
    'temporal_cnn_lstm': {'rnn_units': '16', 'cnn_filters': '[8,16]', 'frame_features': '16',
                          'batch_size': '16'},
}
# For tests that score the loss after a few dozen steps: BatchNorm's moving statistics
# (momentum 0.99) trail that far behind (tests/test_head.py trains and serves BatchNorm).
TINY_WITHOUT_BATCH_NORM = dict(TINY, cnn_lstm=dict(TINY['cnn_lstm'], cnn_batch_norm='false'))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ModeKeys = tf.estimator.ModeKeys
# The cache folder of the user running the tests, read before data_dirs points the tests at
# a temporary one: what is made once per machine (the Keras 3 and PyTorch environments) is
# kept there.
USER_CACHE = cache.configured()


@pytest.fixture(scope='session', autouse=True)
def data_dirs(tmp_path_factory):
    """TFDS datasets (the embedded ones too) and uncompressed .npz copies made by tests go
    to temporary directories, not ~/tensorflow_datasets and ~/.cache. The fused kernel
    that `make` built for this machine is used where it is (the tests that build one set
    a cache of their own)."""
    installed_kernel = kernels.library_path()
    os.environ[cache.ENV] = str(tmp_path_factory.mktemp('cache'))
    os.environ['TFDS_DATA_DIR'] = str(tmp_path_factory.mktemp('tensorflow_datasets'))
    if os.path.exists(installed_kernel):
        os.makedirs(os.path.dirname(kernels.library_path()))
        os.symlink(installed_kernel, kernels.library_path())


@pytest.fixture(scope='session')
def keras3_python():
    """The interpreter of the Keras 3 environment (requirements-keras3.txt), made once per
    machine in the user's cache folder (about 40 s, the first time; keras3_environment's
    lock lets one test worker make it while the others wait) and linked into the tests'
    cache folder, where bin/export --format=keras3 finds it without --keras3_python."""
    user_cache = cache.directory(USER_CACHE)
    python = keras3_environment.cached_environment(user_cache).python
    _link(keras3_environment.environment_path(user_cache), keras3_environment.environment_path(cache.directory()))
    return python


@pytest.fixture(scope='session')
def torch_python():
    """The interpreter of the PyTorch environment (requirements-torch.txt), made once per
    machine in the user's cache folder (about 50 s and 1 GB, the first time) and linked
    into the tests' cache folder, where bin/benchmark --train finds it without --torch_python."""
    user_cache = cache.directory(USER_CACHE)
    python = torch_environment.cached_python(user_cache)
    _link(torch_environment.environment_path(user_cache), torch_environment.environment_path(cache.directory()))
    return python


def _link(environment, linked):
    """Links a second environment made in the user's cache at `linked` in the tests' cache."""
    if not os.path.exists(linked):
        os.makedirs(os.path.dirname(linked), exist_ok=True)
        os.symlink(environment, linked)


@pytest.fixture(scope='session')
def digits_npz(tmp_path_factory):
    """600 glyph digits as a one-split .npz (x [N,28,28] uint8, y [N])."""
    return write_digits(str(tmp_path_factory.mktemp('data') / 'digits.npz'))


def write_digits(path):
    """Writes digits_npz's 600 glyph digits to `path`; returns it."""
    images, labels = glyphs.render_digits(600, seed=7)
    np.savez(path, x=images, y=labels)
    return path


@pytest.fixture(scope='session')
def clips_npz(tmp_path_factory):
    """200 moving-glyph clips as .npz (x [N,T,32,32] uint8, y [N], lengths [N])."""
    frames, lengths, labels = moving_glyphs.render_clips(200, seed=7)
    path = str(tmp_path_factory.mktemp('data') / 'clips.npz')
    np.savez(path, x=frames, y=labels, lengths=lengths)
    return path


@pytest.fixture(scope='session')
def clips_with_frame_labels(tmp_path_factory):
    """160 moving-glyph clips with their per-frame labels as .npz (frame_labels [N, T])."""
    frames, lengths, labels, frame_labels = moving_glyphs.render_clips(160, seed=5, with_frame_labels=True)
    path = str(tmp_path_factory.mktemp('per_frame') / 'clips.npz')
    np.savez(path, x=frames, y=labels, lengths=lengths, frame_labels=frame_labels)
    return path


@pytest.fixture(scope='session')
def digits_with_boxes(tmp_path_factory):
    """200 digits as TFRecord Examples, each with 0 to 4 boxes (the first over the digit)."""
    images, labels = glyphs.render_digits(200, seed=11)
    rng = np.random.default_rng(11)
    path = str(tmp_path_factory.mktemp('boxes') / 'digits.tfrecord')
    with tf.io.TFRecordWriter(path) as writer:
        for index, (image, label) in enumerate(zip(images, labels)):
            corners = rng.uniform(0.0, 0.5, size=(4, 2))
            boxes = np.concatenate([corners, corners + rng.uniform(0.3, 0.5, size=(4, 2))], axis=1)
            boxes[0] = [0.1, 0.1, 0.9, 0.9]
            example = writing.image_example(writing.encode_pixels(image), int(label),
                                            boxes=boxes[:index % 5])
            writer.write(example.SerializeToString())
    return path


def build_kernel_variant(folder, name, edit, extra_flags=()):
    """The fused kernel's source changed by `edit` (text -> text) and built with
    `extra_flags` into folder/<name>.so; returns that path."""
    with open(kernels.SOURCE) as stream:
        source = edit(stream.read())
    variant, library = os.path.join(folder, f'{name}.cc'), os.path.join(folder, f'{name}.so')
    with open(variant, 'w') as stream:
        stream.write(source)
    built = subprocess.run(kernels.compile_command(kernels._compiler(), variant, library, extra_flags),
                           capture_output=True, text=True)
    assert built.returncode == 0, f'building {variant} failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}'
    return library


def user_environment():
    """The environment of a user's shell for a command started by a test: this one's, with
    TensorFlow's C++ log level left to the command as a user who set nothing has it."""
    environment = dict(os.environ)
    environment.pop('TF_CPP_MIN_LOG_LEVEL', None)
    return environment


def run_bin(command, *args, check=True, cwd=None):
    """Runs bin/<command> with `args` in a fresh process; returns the CompletedProcess."""
    result = subprocess.run([sys.executable, os.path.join(REPO, 'bin', command), *args],
                            capture_output=True, text=True, timeout=600, cwd=cwd,
                            env=user_environment())
    if check and result.returncode != 0:
        raise AssertionError(f'bin/{command} failed ({result.returncode}):\n{result.stderr[-3000:]}')
    return result


def run_cli(command, *args, check=True, cwd=None):
    """Runs bin/<command> with `args` in this process, as its own process would run it
    (estimator_models.running.cli.run); returns a CompletedProcess whose stdout and stderr
    hold everything written to them, TensorFlow's C++ lines included."""
    with contextlib.chdir(cwd or os.getcwd()), _captured_output() as output:
        status = cli.run(command, [str(arg) for arg in args])
    result = subprocess.CompletedProcess(['bin/' + command, *args], status, output['stdout'],
                                         output['stderr'])
    if check and status != 0:
        raise AssertionError(f'bin/{command} failed ({status}):\n{result.stderr[-3000:]}')
    return result


@contextlib.contextmanager
def _captured_output():
    """Sends file descriptors 1 and 2, sys.stdout and sys.stderr and the log handlers that
    write to them into files for the duration; yields {'stdout': text, 'stderr': text},
    filled when the block ends."""
    output = {}
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        try:
            with _redirected('stdout', out_file), _redirected('stderr', err_file):
                yield output
        finally:
            for name, file in (('stdout', out_file), ('stderr', err_file)):
                file.seek(0)
                output[name] = file.read().decode('utf-8', errors='replace')


@contextlib.contextmanager
def _redirected(name, file):
    descriptor = 1 if name == 'stdout' else 2
    old_stream = getattr(sys, name)
    old_stream.flush()
    saved = os.dup(descriptor)
    os.dup2(file.fileno(), descriptor)
    stream = io.TextIOWrapper(io.FileIO(descriptor, 'w', closefd=False), encoding='utf-8',
                              line_buffering=True)
    handlers = [handler for handler in _stream_handlers() if handler.stream is old_stream]
    setattr(sys, name, stream)
    for handler in handlers:
        handler.setStream(stream)
    try:
        yield
    finally:
        stream.flush()
        for handler in handlers:
            handler.setStream(old_stream)
        setattr(sys, name, old_stream)
        os.dup2(saved, descriptor)
        os.close(saved)


def _stream_handlers():
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger)]
    return [handler for logger in loggers for handler in logger.handlers
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)]


def train_on_a_few_examples(model, data, model_dir, steps, overrides, num_examples=32, eval_events=False):
    """Trains `model` on the first `num_examples` of `data` for `steps` steps.

    Returns (run, loss after 1 step, loss after `steps`), the losses evaluated on
    those examples; the checkpoint stays in model_dir for predictions. With
    `eval_events`, the last evaluation is Estimator.evaluate's, which also writes its
    summaries to model_dir/eval.
    """
    run, estimator, train_input, eval_input = _on_a_few_examples(model, data, model_dir, steps, overrides,
                                                                 num_examples)
    # One training graph, not one per train() call: model.ckpt-1 is saved on the way.
    estimator.train(train_input, max_steps=steps, hooks=[_CheckpointAfterFirstStep(model_dir)])
    first, last = os.path.join(model_dir, 'model.ckpt-1'), tf.train.latest_checkpoint(model_dir)
    if eval_events:
        return run, evaluation_losses(estimator, eval_input, [first])[0], estimator.evaluate(eval_input)['loss']
    return run, *evaluation_losses(estimator, eval_input, [first, last])


def evaluation_losses(estimator, eval_input, checkpoints):
    """The evaluation loss of each checkpoint, as Estimator.evaluate reports it (the mean
    of its batches' losses), from one evaluation graph and session for all of them, where
    evaluate() builds both anew for each."""
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(estimator.config.tf_random_seed)
        tf.compat.v1.train.get_or_create_global_step()
        batches = tf.compat.v1.data.make_initializable_iterator(eval_input())
        features, labels = batches.get_next()
        loss = estimator.model_fn(features, labels, ModeKeys.EVAL, estimator.config).loss
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(config=estimator.config.session_config) as session:
            return [_mean_loss(session, saver, checkpoint, batches, loss) for checkpoint in checkpoints]


def _mean_loss(session, saver, checkpoint, batches, loss):
    saver.restore(session, checkpoint)
    session.run(batches.initializer)
    losses = []
    with contextlib.suppress(tf.errors.OutOfRangeError):
        while True:
            losses.append(session.run(loss))
    return float(np.mean(losses))


class _CheckpointAfterFirstStep(tf.compat.v1.train.SessionRunHook):
    """Saves model.ckpt-1 with the Estimator's own saver, as train(max_steps=1) would."""

    def __init__(self, model_dir):
        self._prefix = os.path.join(model_dir, 'model.ckpt')
        self._saved = False

    def after_run(self, run_context, run_values):
        if self._saved:
            return
        self._saved = True
        step = run_context.session.run(tf.compat.v1.train.get_global_step())
        assert step == 1, f'expected a fresh model_dir, found step {step}'
        saver, = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.SAVERS)
        saver.save(run_context.session, self._prefix, global_step=1, write_meta_graph=False)


def train_without_evaluating(model, data, model_dir, overrides, steps, num_examples=None):
    """Trains `model` `steps` steps on the first `num_examples` of `data` (default: all),
    with no evaluation, for tests that read checkpoints or predictions but no loss; returns
    the run. model.ckpt-0 and model.ckpt-<steps> hold the weights before and after."""
    run, estimator, train_input, _ = _on_a_few_examples(model, data, model_dir, steps, overrides, num_examples)
    estimator.train(train_input, max_steps=steps)
    return run


def _on_a_few_examples(model, data, model_dir, steps, overrides, num_examples):
    """(run, Estimator for `steps` steps, train input_fn, eval input_fn) of `model` on the
    first `num_examples` of `data`."""
    run, train_source, _ = experiment.prepare_training(model, model_dir, data, None, overrides)
    # Nothing reads these runs' graph.pbtxt or .meta files, and writing a Keras
    # application's graph as text takes seconds.
    config = experiment.run_config(model_dir, seed=1, checkpoint_every=steps).replace(
        checkpoint_save_graph_def=False)
    estimator = experiment.make_estimator(run, config, train_steps=steps)
    return (run, estimator, run.input_fn(train_source, ModeKeys.TRAIN, seed=1, num_examples=num_examples),
            run.input_fn(train_source, ModeKeys.EVAL, num_examples=num_examples))


def briefly_trained_export(model, data, tmp_path_factory, overrides=None):
    """Trains `model` (with TINY's hparams unless given `overrides`) 3 steps on the first 32
    examples of `data` and exports it: (run, SavedModel path, held-out examples)."""
    model_dir = str(tmp_path_factory.mktemp(model))
    run, estimator, train_input, _ = _on_a_few_examples(model, data, model_dir, 3, overrides or TINY[model], 32)
    estimator.train(train_input, max_steps=3)
    path = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                        os.path.join(model_dir, 'export'))
    return run, path, held_out_arrays(run)


def held_out_arrays(run, num_examples=None):
    """The run's evaluation examples (the first `num_examples`) as in-memory LabelledArrays."""
    return arrays.read_all(run.sources()[1], num_examples)


# The one bin/train run of pixel_row_lstm that the tests of what bin/train prints and leaves
# behind (test_bin.py), of what TensorBoard shows (test_monitoring.py) and of the ONNX files
# beside its SavedModels (test_onnx_export.py) all read: every monitoring and export option on.
DIGITS_RUN_STEPS = 30
DIGITS_RUN_CHECKPOINT_EVERY = 15
DIGITS_RUN_BATCH_SIZE = 32
DIGITS_RUN_IMAGES_EVERY = 10
DIGITS_RUN_PROFILE_STEPS = (5, 8)


def digits_run_args(data, model_dir):
    """bin/train's arguments for the digits run (the digits_run fixture) on `data` into `model_dir`."""
    return ['--model=pixel_row_lstm', f'--data={data}', f'--model_dir={model_dir}',
            f'--train_steps={DIGITS_RUN_STEPS}', f'--checkpoint_every={DIGITS_RUN_CHECKPOINT_EVERY}',
            f'--hparams=rnn_units=16,batch_size={DIGITS_RUN_BATCH_SIZE}',
            f'--summary_images_every={DIGITS_RUN_IMAGES_EVERY}', '--histograms',
            '--profile_steps={},{}'.format(*DIGITS_RUN_PROFILE_STEPS), '--export_formats=saved_model,onnx']


@pytest.fixture(scope='session')
def digits_run(tmp_path_factory):
    """(model_dir, bin/train's CompletedProcess) of the digits run, trained once for every
    test worker: the first to ask trains it while the others wait. Tests that write into a
    run directory (train, export) work on a copy of it."""
    shared = _shared_between_workers(tmp_path_factory) / 'digits_run'
    model_dir, outcome = shared / 'pixel_row_lstm', shared / 'bin_train.json'
    os.makedirs(shared, exist_ok=True)
    with open(shared / 'lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not outcome.exists():
            data = write_digits(str(shared / 'digits.npz'))
            result = run_cli('train', *digits_run_args(data, model_dir))
            outcome.write_text(json.dumps([result.args, result.returncode, result.stdout, result.stderr]))
    return str(model_dir), subprocess.CompletedProcess(*json.loads(outcome.read_text()))


def _shared_between_workers(tmp_path_factory):
    """The session's temporary directory that every xdist worker sees (each worker's own
    base directory lies in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def digits_export(tmp_path_factory, digits_npz):
    """(run, SavedModel path, held-out examples) of a pixel_row_lstm trained 3 steps."""
    return briefly_trained_export('pixel_row_lstm', digits_npz, tmp_path_factory)


@pytest.fixture(scope='session')
def clips_export(tmp_path_factory, clips_npz):
    """(run, SavedModel path, held-out examples) of a temporal_cnn_lstm trained 3 steps."""
    return briefly_trained_export('temporal_cnn_lstm', clips_npz, tmp_path_factory)


# A process that only loads SavedModels and calls one signature of each: what a server does.
# argv: a JSON list of [SavedModel path, signature, inputs .npz, outputs .npz].
SERVE = '''
import json
import sys
import numpy as np
import tensorflow as tf
for export, key, inputs_path, outputs_path in json.loads(sys.argv[1]):
    signature = tf.saved_model.load(export).signatures[key]
    inputs = dict(np.load(inputs_path))
    outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
    np.savez(outputs_path, **{name: value.numpy() for name, value in outputs.items()})
'''


def serve_in_a_fresh_process(export, inputs, tmp_path, signature='serving_default'):
    """{output name: numpy value} of `signature` of the SavedModel at `export` called with
    `inputs` ({input name: numpy value}) in a fresh Python process."""
    return serve_each_in_one_fresh_process({'only': (export, signature, inputs)}, tmp_path)['only']


def serve_each_in_one_fresh_process(requests, tmp_path):
    """{key: {output name: numpy value}} for `requests` {key: (SavedModel path, signature,
    {input name: numpy value})}, every one served by the same fresh Python process."""
    calls = []
    for index, (export, signature, inputs) in enumerate(requests.values()):
        np.savez(tmp_path / f'inputs_{index}.npz', **inputs)
        calls.append([export, signature, str(tmp_path / f'inputs_{index}.npz'),
                      str(tmp_path / f'outputs_{index}.npz')])
    subprocess.run([sys.executable, '-c', SERVE, json.dumps(calls)], check=True, capture_output=True)
    return {key: dict(np.load(tmp_path / f'outputs_{index}.npz')) for index, key in enumerate(requests)}


def served_in_a_fresh_process(export, run, examples, tmp_path):
    """The export's outputs for in-memory `examples` (LabelledArrays) as raw pixels: clips
    through predict_with_lengths, images through serving_default."""
    if run.module.KIND == 'clip':
        signature, inputs = 'predict_with_lengths', {'frames': examples.inputs.astype(np.float32),
                                                     'lengths': examples.lengths.astype(np.int32)}
    else:
        signature, inputs = 'serving_default', {'image': examples.inputs.astype(np.float32)}
    return serve_in_a_fresh_process(export, inputs, tmp_path, signature)


# Test files by CPU time in `make test-profile` (BENCHMARKS.md, "Test suite"), longest
# first: each worker takes one file at a time, and a long file started last would leave
# the other workers idle at the end. Files not listed run after these.
LONGEST_FILES_FIRST = (
    'tests/test_backbones.py',
    'tests/test_local_cluster.py',
    'tests/test_bin.py',
    'tests/test_specs.py',
    'tests/test_pooling.py',
    'tests/test_run_directory.py',
    'tests/test_unmasked_recurrent.py',
    'tests/test_onnx_export.py',
    'tests/test_kernels.py',
    'tests/test_regions.py',
    'tests/test_temporal_cnn_lstm.py',
    'tests/test_per_frame.py',
    'tests/test_cnn_lstm.py',
    'tests/reliability/test_preemption.py',
    'tests/test_warm_start.py',
    'tests/test_augment.py',
    'tests/reliability/test_hostile_input.py',
    'tests/test_user_model_fn.py',
    'tests/test_serving.py',
    'tests/reliability/test_divergence_and_disk.py',
    'tests/test_head.py',
    'tests/test_tfrecords.py',
    'tests/reliability/test_fuzz.py',
    'tests/test_pixel_row_lstm.py',
    'tests/test_embedded.py',
)


def pytest_collection_modifyitems(items):
    """Runs the longest files first (a stable sort: tests keep their order in a file)."""
    rank = {path: index for index, path in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split('::')[0], len(rank)))
