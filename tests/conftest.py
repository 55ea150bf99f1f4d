"""Shared fixtures: small real datasets from the embedded generators, and helpers that
run the pipeline the way a user does: a bin/ command in this process (run_cli) or, where
the process itself is under test, in a fresh one (run_bin)."""

import os

# What a user who has set nothing sees: the commands keep TensorFlow's C++ start-up lines
# at this level unless told otherwise, whatever the shell running the tests exported.
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'

import contextlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from estimator_models.layers import kernels  # noqa: E402
from estimator_models.running import cli, experiment  # noqa: E402
from estimator_models.serving import exporting  # noqa: E402
from input_fns import arrays, glyphs, moving_glyphs, npz  # noqa: E402

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


@pytest.fixture(scope='session', autouse=True)
def data_dirs(tmp_path_factory):
    """TFDS datasets (the embedded ones too) and uncompressed .npz copies made by tests go
    to temporary directories, not ~/tensorflow_datasets and ~/.cache. The fused kernel
    that `make` built for this machine is used where it is (the tests that build one set
    a cache of their own)."""
    installed_kernel = kernels.library_path()
    os.environ[npz.CACHE_ENV] = str(tmp_path_factory.mktemp('cache'))
    os.environ['TFDS_DATA_DIR'] = str(tmp_path_factory.mktemp('tensorflow_datasets'))
    if os.path.exists(installed_kernel):
        os.makedirs(os.path.dirname(kernels.library_path()))
        os.symlink(installed_kernel, kernels.library_path())


@pytest.fixture(scope='session')
def digits_npz(tmp_path_factory):
    """600 glyph digits as a one-split .npz (x [N,28,28] uint8, y [N])."""
    images, labels = glyphs.render_digits(600, seed=7)
    path = str(tmp_path_factory.mktemp('data') / 'digits.npz')
    np.savez(path, x=images, y=labels)
    return path


@pytest.fixture(scope='session')
def clips_npz(tmp_path_factory):
    """200 moving-glyph clips as .npz (x [N,T,32,32] uint8, y [N], lengths [N])."""
    frames, lengths, labels = moving_glyphs.render_clips(200, seed=7)
    path = str(tmp_path_factory.mktemp('data') / 'clips.npz')
    np.savez(path, x=frames, y=labels, lengths=lengths)
    return path


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


def train_on_a_few_examples(model, data, model_dir, steps, overrides, num_examples=32):
    """Trains `model` on the first `num_examples` of `data` for `steps` steps.

    Returns (run, loss after 1 step, loss after `steps`), the losses evaluated on
    those examples; the checkpoint stays in model_dir for predictions.
    """
    run, train_source, _ = experiment.prepare_training(model, model_dir, data, None, overrides)
    config = experiment.run_config(model_dir, seed=1, checkpoint_every=steps)
    estimator = experiment.make_estimator(run, config, train_steps=steps)
    train_input = run.input_fn(train_source, ModeKeys.TRAIN, seed=1, num_examples=num_examples)
    eval_input = run.input_fn(train_source, ModeKeys.EVAL, num_examples=num_examples)
    estimator.train(train_input, max_steps=1)
    before = estimator.evaluate(eval_input)['loss']
    estimator.train(train_input, max_steps=steps)
    return run, before, estimator.evaluate(eval_input)['loss']


def briefly_trained_export(model, data, tmp_path_factory):
    """Trains `model` 3 steps on `data` and exports it: (run, SavedModel path, held-out examples)."""
    model_dir = str(tmp_path_factory.mktemp(model))
    run, _, _ = train_on_a_few_examples(model, data, model_dir, steps=3, overrides=TINY[model])
    path = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                        os.path.join(model_dir, 'export'))
    return run, path, held_out_arrays(run)


def held_out_arrays(run, num_examples=None):
    """The run's evaluation examples (the first `num_examples`) as in-memory LabelledArrays."""
    return arrays.read_all(run.sources()[1], num_examples)


@pytest.fixture(scope='session')
def digits_export(tmp_path_factory, digits_npz):
    """(run, SavedModel path, held-out examples) of a pixel_row_lstm trained 3 steps."""
    return briefly_trained_export('pixel_row_lstm', digits_npz, tmp_path_factory)


@pytest.fixture(scope='session')
def clips_export(tmp_path_factory, clips_npz):
    """(run, SavedModel path, held-out examples) of a temporal_cnn_lstm trained 3 steps."""
    return briefly_trained_export('temporal_cnn_lstm', clips_npz, tmp_path_factory)


# A process that only loads the SavedModel and calls one signature: what a server does.
SERVE = '''
import sys
import numpy as np
import tensorflow as tf
signature = tf.saved_model.load(sys.argv[1]).signatures[sys.argv[2]]
inputs = dict(np.load(sys.argv[3]))
outputs = signature(**{key: tf.constant(value) for key, value in inputs.items()})
np.savez(sys.argv[4], **{key: value.numpy() for key, value in outputs.items()})
'''


def serve_in_a_fresh_process(export, inputs, tmp_path, signature='serving_default'):
    """{output name: numpy value} of `signature` of the SavedModel at `export` called with
    `inputs` ({input name: numpy value}) in a fresh Python process."""
    np.savez(tmp_path / 'inputs.npz', **inputs)
    subprocess.run([sys.executable, '-c', SERVE, export, signature, str(tmp_path / 'inputs.npz'),
                    str(tmp_path / 'outputs.npz')], check=True, capture_output=True)
    return dict(np.load(tmp_path / 'outputs.npz'))


def served_in_a_fresh_process(export, run, examples, tmp_path):
    """The export's outputs for in-memory `examples` (LabelledArrays) as raw pixels: clips
    through predict_with_lengths, images through serving_default."""
    if run.module.KIND == 'clip':
        signature, inputs = 'predict_with_lengths', {'frames': examples.inputs.astype(np.float32),
                                                     'lengths': examples.lengths.astype(np.int32)}
    else:
        signature, inputs = 'serving_default', {'image': examples.inputs.astype(np.float32)}
    return serve_in_a_fresh_process(export, inputs, tmp_path, signature)
