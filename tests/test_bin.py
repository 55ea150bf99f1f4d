"""The command-line tools, run as a user runs them: bin/train, bin/evaluate, bin/export.

One short real training run per model kind; the tests then check what it left behind.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import held_out_arrays, run_bin
from estimator_models.layers import precision
from estimator_models.running import cli
from estimator_models.running import experiment
from input_fns import arrays, specs

STEPS = 30
SMALL = {
    'pixel_row_lstm': 'rnn_units=16,batch_size=32',
    'temporal_cnn_lstm': 'rnn_units=16,cnn_filters=[8,16],frame_features=16,batch_size=16',
}
LOAD_AND_PREDICT = '''
import sys
import numpy as np
import tensorflow as tf
signature = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
inputs = np.load(sys.argv[2], allow_pickle=False)
outputs = signature(**{sys.argv[3]: tf.constant(inputs)})
np.save(sys.argv[4], outputs['probabilities'].numpy())
'''


def _train(model, data, model_dir, *extra):
    return run_bin('train', f'--model={model}', f'--data={data}', f'--model_dir={model_dir}',
                   f'--train_steps={STEPS}', '--checkpoint_every=15', f'--hparams={SMALL[model]}', *extra)


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory, digits_npz):
    model_dir = str(tmp_path_factory.mktemp('runs') / 'pixel_row_lstm')
    return model_dir, _train('pixel_row_lstm', digits_npz, model_dir)


@pytest.fixture(scope='module')
def clips_run(tmp_path_factory, clips_npz):
    model_dir = str(tmp_path_factory.mktemp('runs') / 'temporal_cnn_lstm')
    return model_dir, _train('temporal_cnn_lstm', clips_npz, model_dir)


def _eval_accuracy_at(model_dir, step):
    """The eval accuracy that train_and_evaluate wrote to MODEL_DIR/eval at `step`."""
    for path in glob.glob(os.path.join(model_dir, 'eval', 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == 'accuracy' and event.step == step:
                    return value.simple_value
    raise AssertionError(f'no eval accuracy at step {step} in {model_dir}/eval')


def _versions(export_base):
    return sorted(name for name in os.listdir(export_base) if name.isdigit())


def test_train_prints_and_fills_its_output_directories(digits_run):
    model_dir, result = digits_run
    assert f'tensorboard --logdir {model_dir}' in result.stdout
    assert f'step {STEPS}/{STEPS}' in result.stdout
    # This machine has a compiler: auto picks the fused kernel, and says so.
    assert 'LSTM: fused (rnn_implementation=auto)' in result.stdout
    assert f'training in {precision.resolved({"precision": "auto"})} (precision=auto)' in result.stdout
    assert 'Traceback' not in result.stderr
    for exporter in ('best', 'latest'):
        base = os.path.join(model_dir, 'export', exporter)
        assert base in result.stdout
        versions = _versions(base)
        assert versions, f'no SavedModel under {base}'
        assert os.path.exists(os.path.join(base, versions[-1], 'saved_model.pb'))
    assert json.load(open(os.path.join(model_dir, 'hparams.json')))['hparams']['rnn_units'] == 16


def test_evaluate_reproduces_the_final_eval(digits_run):
    model_dir, _ = digits_run
    result = json.loads(run_bin('evaluate', f'--model_dir={model_dir}').stdout)
    assert result['global_step'] == STEPS
    # About a tenth of the 600 is held out, by a hash of each record's file and index.
    assert result['num_examples'] == len(held_out_arrays(experiment.load_run(model_dir)))
    assert 30 <= result['num_examples'] <= 90
    assert result['accuracy'] == pytest.approx(_eval_accuracy_at(model_dir, STEPS), abs=1e-6)
    assert np.isfinite(result['loss'])


def test_train_resumes_from_the_checkpoint(digits_run, tmp_path, digits_npz):
    model_dir = str(tmp_path / 'resumed')
    shutil.copytree(digits_run[0], model_dir)
    result = run_bin('train', '--model=pixel_row_lstm', f'--model_dir={model_dir}',
                     f'--train_steps={STEPS + 10}')
    assert f'step {STEPS + 1}/{STEPS + 10}' in result.stdout  # first step run is the next one
    evaluated = json.loads(run_bin('evaluate', f'--model_dir={model_dir}').stdout)
    assert evaluated['global_step'] == STEPS + 10


@pytest.mark.parametrize('run_fixture', ['digits_run', 'clips_run'])
def test_exported_model_in_a_fresh_process_matches_estimator_predict(request, run_fixture, tmp_path):
    model_dir, _ = request.getfixturevalue(run_fixture)
    export_path = run_bin('export', f'--model_dir={model_dir}').stdout.strip().splitlines()[-1]
    assert os.path.exists(os.path.join(export_path, 'saved_model.pb'))
    assert os.path.basename(export_path).isdigit()

    run = experiment.load_run(model_dir)
    held_out = held_out_arrays(run)
    examples = held_out.take(np.arange(12))
    if run.module.KIND == 'clip':  # serving_default takes equal-length clips
        examples = examples.take(np.flatnonzero(examples.lengths == examples.inputs.shape[1])[:4])
        assert len(examples) > 0
    inputs_path, outputs_path = str(tmp_path / 'inputs.npy'), str(tmp_path / 'probabilities.npy')
    np.save(inputs_path, examples.inputs.astype(np.float32))
    input_name = 'frames' if run.module.KIND == 'clip' else 'image'
    subprocess.run([sys.executable, '-c', LOAD_AND_PREDICT, export_path, inputs_path, input_name,
                    outputs_path], check=True, capture_output=True)
    expected = np.stack([row['probabilities'] for row in experiment.predict(run, examples)])
    np.testing.assert_allclose(np.load(outputs_path, allow_pickle=False), expected, atol=1e-5)


@pytest.mark.parametrize('args, message', [
    (['train', '--model=resnet'], "unknown model 'resnet'"),
    (['train'], '--model is required'),
    (['train', '--model=pixel_row_lstm', '--no_such_flag=1'], "Unknown command line flag 'no_such_flag'"),
    (['train', '--model=pixel_row_lstm', '--data=/no/such/file.npz'], 'no such .npz file'),
    (['train', '--model=pixel_row_lstm', '--data={digits}', '--hparams=cell=transformer'],
     'hparam cell='),
    (['train', '--model=pixel_row_lstm', '--data={digits}', '--train_steps=-5'],
     'train_steps must be positive'),
    (['train', '--model=temporal_cnn_lstm', '--data={digits}'], 'expected clip arrays'),
    (['evaluate', '--model_dir=/no/such/dir'], 'holds no trained model'),
    (['export', '--model_dir=/no/such/dir'], 'holds no trained model'),
])
def test_user_mistakes_are_one_line_errors(args, message, digits_npz, tmp_path):
    args = [arg.format(digits=digits_npz) for arg in args]
    result = run_bin(*args, check=False, cwd=str(tmp_path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert message in lines[0]
    assert not os.path.exists(tmp_path / 'runs')


def test_a_conflicting_flag_leaves_the_model_dir_as_it_was(digits_run):
    model_dir, _ = digits_run
    before = {path: os.path.getmtime(path) for path in glob.glob(os.path.join(model_dir, '*'))}
    result = run_bin('train', '--model=pixel_row_lstm', f'--model_dir={model_dir}',
                     '--hparams=rnn_units=64', check=False)
    assert result.returncode == 2
    assert 'rnn_units=64 differs from rnn_units=16' in result.stderr
    assert {path: os.path.getmtime(path) for path in glob.glob(os.path.join(model_dir, '*'))} == before


def test_predict_answers_in_the_tf_serving_rest_format(digits_run, tmp_path):
    model_dir, _ = digits_run
    run = experiment.load_run(model_dir)
    held_out = held_out_arrays(run)
    examples = held_out.take(np.arange(3))
    png = str(tmp_path / 'digit.png')
    tf.io.write_file(png, tf.io.encode_png(examples.inputs[0]))
    npz = str(tmp_path / 'more.npz')
    np.savez(npz, x=examples.inputs[1:, ..., 0], y=examples.labels[1:])
    result = run_bin('predict', f'--saved_model={model_dir}/export/latest', f'--input={png}',
                     f'--input={npz}')
    predictions = json.loads(result.stdout)['predictions']
    expected = experiment.predict(run, examples)
    assert len(predictions) == 3
    for got, want in zip(predictions, expected):
        assert got['classes'] == want['classes']
        np.testing.assert_allclose(got['probabilities'], want['probabilities'], atol=1e-5)
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not an image')
    failed = run_bin('predict', f'--saved_model={model_dir}/export/latest', f'--input={bad}', check=False)
    assert failed.returncode == 2 and failed.stderr.strip() == (
        f'error: cannot decode {bad} as an image: not an image: 12 bytes in none of the formats PNG, JPEG, GIF, BMP')


def test_the_same_seed_trains_the_same_model(digits_run, tmp_path, digits_npz):
    model_dir, _ = digits_run
    again = str(tmp_path / 'again')
    _train('pixel_row_lstm', digits_npz, again)
    first = json.loads(run_bin('evaluate', f'--model_dir={model_dir}').stdout)
    second = json.loads(run_bin('evaluate', f'--model_dir={again}').stdout)
    assert second['loss'] == pytest.approx(first['loss'], rel=1e-6)


def test_mirrored_on_a_machine_without_a_gpu_trains_one_replica_and_says_so(tmp_path, digits_npz):
    result = _train('pixel_row_lstm', digits_npz, str(tmp_path / 'mirrored'), '--distribution=mirrored')
    assert 'mirrored: no GPU, so one replica on the CPU' in result.stdout
    assert 'done: accuracy' in result.stdout and f'at step {STEPS}' in result.stdout


def test_make_tfrecords_converts_a_source_and_never_writes_over_one(clips_npz, tmp_path):
    prefix = str(tmp_path / 'clips')
    result = run_bin('make_tfrecords', f'--input={clips_npz}', f'--output={prefix}', '--shards=3')
    assert 'wrote 200 clips of 8 classes' in result.stdout and '100%' in result.stderr
    assert len(glob.glob(prefix + '.tfrecord-*')) == 3
    with open(prefix + '.metadata.json') as stream:
        assert json.load(stream)['num_examples'] == 200
    # Written round-robin and read back interleaved: the original order.
    written = arrays.read_all(specs.open_splits(prefix + '.tfrecord*')[0])
    original = arrays.read_all(specs.open_splits(clips_npz)[0])
    np.testing.assert_array_equal(written.inputs, original.inputs)
    np.testing.assert_array_equal(written.labels, original.labels)
    np.testing.assert_array_equal(written.lengths, original.lengths)
    again = run_bin('make_tfrecords', f'--input={clips_npz}', f'--output={prefix}', check=False)
    assert again.returncode == 2 and 'already exists' in again.stderr.strip().splitlines()[-1]


def test_a_graph_execution_error_is_told_by_its_message_not_its_header():
    with tf.Graph().as_default():
        pixels = tf.compat.v1.placeholder(tf.float32)
        checked = tf.debugging.check_numerics(pixels, 'pixels are not finite')
        with tf.compat.v1.Session() as session, pytest.raises(tf.errors.OpError) as raised:
            session.run(checked, {pixels: float('nan')})
    assert raised.value.message.startswith('Graph execution error')
    assert cli._first_line(raised.value.message) == 'pixels are not finite : Tensor had NaN values'
