"""The command-line tools, run as a user runs them: bin/train, bin/evaluate, bin/export.

One short real training run per model kind (the digits one shared with other test files);
the tests then check what it left behind. The commands run in this process where their
behaviour is under test, and in a fresh one where the process is: its exit status and
one-line error, a second run reproducing the first, a SavedModel loaded with nothing else.
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

from conftest import DIGITS_RUN_STEPS, digits_run_args, held_out_arrays, run_bin, run_cli
from estimator_models.layers import precision
from estimator_models.running import experiment
from estimator_models.running.cli import failures
from estimator_models.serving import exporting
from input_fns import specs
from input_fns.sources import arrays

STEPS = DIGITS_RUN_STEPS
# For runs that only have to finish (and leave a model for bin/export): one checkpoint.
SHORT_STEPS = 4
SMALL = {
    'pixel_row_lstm': 'rnn_units=16,batch_size=32',
    'temporal_cnn_lstm': 'rnn_units=16,cnn_filters=[8,16],frame_features=16,batch_size=16',
}
# A process that only loads SavedModels: argv holds, for each, its path, an .npy of inputs,
# the input's name and the .npy to write the probabilities to.
LOAD_AND_PREDICT = '''
import sys
import numpy as np
import tensorflow as tf
for export, inputs_path, input_name, outputs_path in zip(*[iter(sys.argv[1:])] * 4):
    signature = tf.saved_model.load(export).signatures['serving_default']
    inputs = np.load(inputs_path, allow_pickle=False)
    outputs = signature(**{input_name: tf.constant(inputs)})
    np.save(outputs_path, outputs['probabilities'].numpy())
'''


def _train_briefly(model, data, model_dir, *extra):
    return run_cli('train', f'--model={model}', f'--data={data}', f'--model_dir={model_dir}',
                   f'--train_steps={SHORT_STEPS}', f'--checkpoint_every={SHORT_STEPS}',
                   f'--hparams={SMALL[model]}', *extra)


@pytest.fixture(scope='module')
def clips_run(tmp_path_factory, clips_npz):
    model_dir = str(tmp_path_factory.mktemp('runs') / 'temporal_cnn_lstm')
    return model_dir, _train_briefly('temporal_cnn_lstm', clips_npz, model_dir)


def _copy(model_dir, tmp_path):
    """A copy of a shared run directory in tmp_path, for a test that writes into it."""
    copy = str(tmp_path / os.path.basename(model_dir))
    shutil.copytree(model_dir, copy)
    return copy


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
    result = json.loads(run_cli('evaluate', f'--model_dir={model_dir}').stdout)
    assert result['global_step'] == STEPS
    # About a tenth of the 600 is held out, by a hash of each record's file and index.
    assert result['num_examples'] == len(held_out_arrays(experiment.load_run(model_dir)))
    assert 30 <= result['num_examples'] <= 90
    assert result['accuracy'] == pytest.approx(_eval_accuracy_at(model_dir, STEPS), abs=1e-6)
    assert np.isfinite(result['loss'])


def test_train_resumes_from_the_checkpoint(digits_run, tmp_path):
    model_dir = _copy(digits_run[0], tmp_path)
    result = run_cli('train', '--model=pixel_row_lstm', f'--model_dir={model_dir}',
                     f'--train_steps={STEPS + 2}')
    assert f'step {STEPS + 1}/{STEPS + 2}' in result.stdout  # first step run is the next one
    evaluated = json.loads(run_cli('evaluate', f'--model_dir={model_dir}').stdout)
    assert evaluated['global_step'] == STEPS + 2


def test_exported_models_in_a_fresh_process_match_estimator_predict(digits_run, clips_run, tmp_path):
    load_and_predict, expected = [], {}
    for model_dir in (_copy(digits_run[0], tmp_path), clips_run[0]):
        export_path = run_cli('export', f'--model_dir={model_dir}').stdout.strip().splitlines()[-1]
        assert os.path.exists(os.path.join(export_path, 'saved_model.pb'))
        assert os.path.basename(export_path).isdigit()

        run = experiment.load_run(model_dir)
        held_out = held_out_arrays(run)
        examples = held_out.take(np.arange(12))
        if run.module.KIND == 'clip':  # serving_default takes equal-length clips
            examples = examples.take(np.flatnonzero(examples.lengths == examples.inputs.shape[1])[:4])
            assert len(examples) > 0
        inputs_path, outputs_path = str(tmp_path / f'{run.model}_inputs.npy'), str(tmp_path / f'{run.model}.npy')
        np.save(inputs_path, examples.inputs.astype(np.float32))
        input_name = 'frames' if run.module.KIND == 'clip' else 'image'
        load_and_predict += [export_path, inputs_path, input_name, outputs_path]
        expected[outputs_path] = np.stack([row['probabilities'] for row in experiment.predict(run, examples)])
    subprocess.run([sys.executable, '-c', LOAD_AND_PREDICT, *load_and_predict], check=True, capture_output=True)
    for outputs_path, probabilities in expected.items():
        np.testing.assert_allclose(np.load(outputs_path, allow_pickle=False), probabilities, atol=1e-5)


def test_export_writes_a_checkpoint_once_where_the_trainer_prunes_nothing(digits_run, tmp_path):
    model_dir = _copy(digits_run[0], tmp_path)
    export_dir = os.path.join(model_dir, 'export')
    latest_before = _versions(os.path.join(export_dir, 'latest'))
    first = run_cli('export', f'--model_dir={model_dir}').stdout.strip().splitlines()
    second = run_cli('export', f'--model_dir={model_dir}').stdout.strip().splitlines()
    assert second == first
    manual = os.path.join(export_dir, 'manual')
    assert first == [os.path.join(manual, _versions(manual)[0])] and len(_versions(manual)) == 1
    with open(os.path.join(first[0], 'assets.extra', 'checkpoint.json')) as stream:
        assert json.load(stream)['global_step'] == STEPS
    run = experiment.load_run(model_dir)
    pruned = {exporter.name for exporter in experiment.exporters(run, export_dir)
              if isinstance(exporter, exporting.ServingExporter)}
    assert pruned and 'manual' not in pruned
    assert _versions(os.path.join(export_dir, 'latest')) == latest_before


def test_export_of_another_checkpoint_is_a_new_version(digits_run, tmp_path):
    model_dir = _copy(digits_run[0], tmp_path)
    exports = str(tmp_path / 'exports')
    latest = run_cli('export', f'--model_dir={model_dir}', f'--export_dir={exports}').stdout.strip()
    earlier = tf.train.get_checkpoint_state(model_dir).all_model_checkpoint_paths[-2]
    tf.compat.v1.train.update_checkpoint_state(model_dir, earlier)
    older = run_cli('export', f'--model_dir={model_dir}', f'--export_dir={exports}').stdout.strip()
    assert older != latest and sorted([latest, older]) == [os.path.join(exports, name) for name in _versions(exports)]
    steps = [json.load(open(os.path.join(path, 'assets.extra', 'checkpoint.json')))['global_step']
             for path in (latest, older)]
    assert steps == [STEPS, int(earlier.rsplit('-', 1)[1])]


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
    _assert_one_line_error(run_cli(*args, check=False, cwd=str(tmp_path)), message, tmp_path)


def test_a_user_mistake_ends_the_process_with_one_line_and_status_2(tmp_path):
    """A fresh process: absl parses the flags, and TensorFlow's start-up lines stay quiet."""
    result = run_bin('train', '--model=pixel_row_lstm', '--no_such_flag=1', check=False, cwd=str(tmp_path))
    assert result.returncode == 2
    _assert_one_line_error(result, "Unknown command line flag 'no_such_flag'", tmp_path)


def _assert_one_line_error(result, message, cwd):
    """`result` failed with one `error: ` line holding `message`, and wrote no runs/ in cwd."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert message in lines[0]
    assert not os.path.exists(cwd / 'runs')


def test_a_conflicting_flag_leaves_the_model_dir_as_it_was(digits_run):
    model_dir, _ = digits_run
    before = {path: os.path.getmtime(path) for path in glob.glob(os.path.join(model_dir, '*'))}
    result = run_cli('train', '--model=pixel_row_lstm', f'--model_dir={model_dir}',
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
    result = run_cli('predict', f'--saved_model={model_dir}/export/latest', f'--input={png}',
                     f'--input={npz}')
    predictions = json.loads(result.stdout)['predictions']
    expected = experiment.predict(run, examples)
    assert len(predictions) == 3
    for got, want in zip(predictions, expected):
        assert got['classes'] == want['classes']
        np.testing.assert_allclose(got['probabilities'], want['probabilities'], atol=1e-5)
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not an image')
    failed = run_cli('predict', f'--saved_model={model_dir}/export/latest', f'--input={bad}', check=False)
    assert failed.returncode == 2 and failed.stderr.strip() == (
        f'error: cannot decode {bad} as an image: not an image: 12 bytes in none of the formats PNG, JPEG, GIF, BMP')


def test_the_same_seed_trains_the_same_model(digits_run, tmp_path, digits_npz):
    """The digits run again, in a process of its own."""
    model_dir, _ = digits_run
    again = str(tmp_path / 'again')
    run_bin('train', *digits_run_args(digits_npz, again))
    first = json.loads(run_cli('evaluate', f'--model_dir={model_dir}').stdout)
    second = json.loads(run_cli('evaluate', f'--model_dir={again}').stdout)
    assert second['loss'] == pytest.approx(first['loss'], rel=1e-6)


def test_mirrored_on_a_machine_without_a_gpu_trains_one_replica_and_says_so(tmp_path, digits_npz):
    result = _train_briefly('pixel_row_lstm', digits_npz, str(tmp_path / 'mirrored'), '--distribution=mirrored')
    assert 'mirrored: no GPU, so one replica on the CPU' in result.stdout
    assert 'done: accuracy' in result.stdout and f'at step {SHORT_STEPS}' in result.stdout


def test_make_tfrecords_converts_a_source_and_never_writes_over_one(clips_npz, tmp_path):
    prefix = str(tmp_path / 'clips')
    result = run_cli('make_tfrecords', f'--input={clips_npz}', f'--output={prefix}', '--shards=3')
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
    again = run_cli('make_tfrecords', f'--input={clips_npz}', f'--output={prefix}', check=False)
    assert again.returncode == 2 and 'already exists' in again.stderr.strip().splitlines()[-1]


def test_a_graph_execution_error_is_told_by_its_message_not_its_header():
    with tf.Graph().as_default():
        pixels = tf.compat.v1.placeholder(tf.float32)
        checked = tf.debugging.check_numerics(pixels, 'pixels are not finite')
        with tf.compat.v1.Session() as session, pytest.raises(tf.errors.OpError) as raised:
            session.run(checked, {pixels: float('nan')})
    assert raised.value.message.startswith('Graph execution error')
    assert failures.first_line(raised.value.message) == 'pixels are not finite : Tensor had NaN values'
