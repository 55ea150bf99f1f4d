"""bin/benchmark --train against its peers: the PyTorch twins are the project's models (same
trainable parameters, weight for weight, and the project's learning-rate schedule), the
Keras mixed_bfloat16 twin computes in bfloat16, a tiny run reports every implementation,
and a PyTorch environment that cannot be had is one line.

The PyTorch environment is made once per machine in the user's cache folder (conftest's
torch_python)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli
from estimator_models import cache, registry
from estimator_models.benchmarks import keras_twins, torch_environment, training
from estimator_models.errors import UserError
from estimator_models.layers import head

# Each model's defaults, a smaller LSTM, and stacks other than the default one.
CASES = {
    **{f'{model}-default': (model, {}) for model in sorted(registry.MODELS)},
    **{f'{model}-rnn_units_16': (model, {'rnn_units': '16'}) for model in sorted(registry.MODELS)},
    'pixel_row_lstm-bidirectional_columns': (
        'pixel_row_lstm', {'rnn_layers': '2', 'bidirectional': 'true', 'scan': 'columns', 'dropout': '0.1'}),
    'cnn_lstm-gru_pooled': ('cnn_lstm', {'cell': 'gru', 'sequence': 'pooled', 'cnn_batch_norm': 'false'}),
    'temporal_cnn_lstm-bidirectional_gru': (
        'temporal_cnn_lstm', {'cell': 'gru', 'bidirectional': 'true', 'rnn_layers': '2',
                              'frame_differences': 'false', 'max_frames': '4'}),
}
TINY_RUN = ('--train', '--model=pixel_row_lstm', '--steps=12', '--warmup_steps=4', '--rounds=1', '--nostartup')
TINY_HPARAMS = '--hparams=rnn_units=16,batch_size=16'


def _describe(torch_python, model, overrides, parameters=None):
    """The PyTorch twin's `describe` answer for `model` at `overrides`, told that the
    project has `parameters` (default: the project's count)."""
    hparams = training.resolved_hparams(model, overrides)[1]
    if parameters is None:
        parameters = training.estimator_parameter_count(model, hparams)
    spec = {'model': model, 'hparams': hparams, 'parameters': parameters}
    return json.loads(training.run_torch_twins(torch_python, 'describe', spec)[-1]), hparams


@pytest.fixture(scope='module')
def described(torch_python):
    """{case: (the twin's `describe` answer, hparams)} of every case of CASES, one PyTorch
    process for all (each checks the twin against the project's parameter count)."""
    specs, resolved = {}, {}
    for case, (model, overrides) in CASES.items():
        resolved[case] = hparams = training.resolved_hparams(model, overrides)[1]
        specs[case] = {'model': model, 'hparams': hparams,
                       'parameters': training.estimator_parameter_count(model, hparams)}
    program = ('import torch_twins; specs = json.loads(sys.argv[1]); '
               'print(json.dumps({case: torch_twins.describe(spec) for case, spec in specs.items()}))')
    answers = _in_torch(torch_python, program, specs)
    return {case: (answers[case], resolved[case]) for case in CASES}


@pytest.mark.parametrize('case', list(CASES))
def test_the_torch_twin_has_the_projects_trainable_parameters(described, case):
    model = CASES[case][0]
    answer, hparams = described[case]
    assert answer['parameters'] == training.estimator_parameter_count(model, hparams)
    assert answer['logits_shape'] == [2, hparams['num_classes']]
    assert answer['logits_dtype'] == 'float32'
    if hparams['cell'] == 'lstm':
        # Weight for weight: Keras' layouts are torch's transposed, and the LSTMs' frozen
        # second biases are not listed.
        keras = keras_twins.keras_twin(model, hparams)
        assert sorted(int(np.prod(shape)) for shape in answer['parameter_shapes'].values()) == \
            sorted(weight.shape.num_elements() for weight in keras.trainable_weights)


def test_a_torch_twin_of_another_size_than_the_projects_is_refused(torch_python):
    with pytest.raises(UserError, match=r'^the PyTorch twin of cnn_lstm failed \(describe\): the PyTorch twin '
                                        r'of cnn_lstm has \d+ trainable parameters, the project\'s model 7$'):
        _describe(torch_python, 'cnn_lstm', {}, parameters=7)


def _in_torch(torch_python, program, *arguments):
    """What `program` prints as JSON, run by the PyTorch environment's python with
    torch_twins importable and `arguments` (JSON) as sys.argv[1:]."""
    program = f'import json, sys; sys.path.insert(0, {os.path.dirname(torch_environment.TWINS)!r}); ' + program
    answer = subprocess.run([torch_python, '-c', program, *map(json.dumps, arguments)],
                            capture_output=True, text=True, check=True)
    return json.loads(answer.stdout)


def test_the_torch_twins_learning_rate_is_the_projects(torch_python):
    hparams = training.resolved_hparams('pixel_row_lstm', {'warmup_steps': '10'})[1]
    steps = [0, 1, 5, 9, 10, 11, 50, 99, 120]
    program = ('import torch_twins; hparams, steps = map(json.loads, sys.argv[1:]); '
               'print(json.dumps([torch_twins.learning_rate(step, hparams, 100) for step in steps]))')
    project = [float(head.learning_rate_schedule(step, dict(hparams, train_steps=100))) for step in steps]
    np.testing.assert_allclose(_in_torch(torch_python, program, hparams, steps), project, rtol=1e-6)


# The state at each clip's last true step: gathered from a forward LSTM over the padded
# batch, and as packed sequences give it; and in bfloat16 under autocast.
LAST_TRUE_STEP = """
import torch, torch_twins
from torch.nn.utils import rnn
torch.manual_seed(0)
lstm, steps, lengths = torch.nn.LSTM(8, 16, batch_first=True), torch.randn(4, 6, 8), torch.tensor([6, 3, 2, 4])
gathered = torch_twins._run_layer(lstm, steps, lengths, last=True)
_, (packed, _) = lstm(rnn.pack_padded_sequence(steps, lengths, batch_first=True, enforce_sorted=False))
with torch.autocast('cpu', dtype=torch.bfloat16):
    dtype = torch_twins._run_layer(lstm, steps, lengths, last=True).dtype
print(json.dumps({'difference': float((gathered - packed[0]).abs().max()), 'autocast_dtype': str(dtype)}))
"""


def test_the_torch_lstm_reads_each_clip_to_its_last_true_frame(torch_python):
    answer = _in_torch(torch_python, LAST_TRUE_STEP)
    assert answer['difference'] < 1e-6 and answer['autocast_dtype'] == 'torch.bfloat16'


@pytest.mark.parametrize('model', ['cnn_lstm', 'temporal_cnn_lstm'])
def test_the_mixed_bfloat16_keras_twin_computes_in_bfloat16_and_restores_the_policy(model):
    hparams = training.resolved_hparams(model, {'rnn_implementation': 'keras'})[1]
    twin = keras_twins.keras_twin(model, hparams, keras_twins.MIXED_BFLOAT16)
    assert tf.keras.mixed_precision.global_policy().name == 'float32'
    layers = _all_layers(twin)
    computing = {type(layer).__name__: layer.compute_dtype for layer in layers
                 if isinstance(layer, (tf.keras.layers.LSTM, tf.keras.layers.Conv2D))}
    assert computing == {'LSTM': 'bfloat16', 'Conv2D': 'bfloat16'}
    assert {weight.dtype for weight in twin.trainable_weights} == {tf.float32}
    assert twin.get_layer('logits').compute_dtype == 'float32' and twin.output.dtype == tf.float32
    assert keras_twins.trainable_parameter_count(twin) == training.estimator_parameter_count(model, hparams)


def _all_layers(model):
    """The layers of `model`, those inside its TimeDistributed models included."""
    layers = []
    for layer in model.layers:
        inner = getattr(layer, 'layer', None)
        layers += [layer] + (_all_layers(inner) if isinstance(inner, tf.keras.Model) else [])
    return layers


def test_the_global_policy_is_restored_when_a_twin_cannot_be_built():
    tf.keras.mixed_precision.set_global_policy('mixed_float16')
    try:
        with pytest.raises(UserError, match='cannot read a feature map'):
            keras_twins.keras_twin('cnn_lstm', dict(training.resolved_hparams('cnn_lstm', {})[1], sequence='regions'),
                                   keras_twins.MIXED_BFLOAT16)
        assert tf.keras.mixed_precision.global_policy().name == 'mixed_float16'
    finally:
        tf.keras.mixed_precision.set_global_policy('float32')


def test_a_tiny_benchmark_reports_every_implementation_and_the_ratio_to_the_best_peer(torch_python, tmp_path):
    result = run_cli('benchmark', *TINY_RUN, TINY_HPARAMS, f'--json_out={tmp_path / "result.json"}')
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == json.loads((tmp_path / 'result.json').read_text())
    assert sorted(report['peers']) == sorted(training.PEERS)
    for name, side in {'project': report['project'], **report['peers']}.items():
        assert side['examples_per_sec'] > 0 and len(side['examples_per_sec_rounds']) == 1, name
    assert {name: side['precision'] for name, side in report['peers'].items()} == training.PEER_PRECISIONS
    assert report['float32_peers'] == ['keras_float32', 'torch_float32']
    best = max(report['peers'], key=lambda name: report['peers'][name]['examples_per_sec'])
    assert report['best_peer'] == best
    assert report['ratio_to_best_peer'] == pytest.approx(
        report['project']['examples_per_sec'] / report['peers'][best]['examples_per_sec'], rel=1e-2)
    assert report['best_float32_peer'] in report['float32_peers'] and report['ratio_to_best_float32_peer'] > 0
    assert report['keras'] == report['peers']['keras_float32'] and report['ratio'] > 0
    assert report['versions']['torch'].startswith('2.13.0')
    assert f'/ the fastest peer ({best}): ' in result.stderr


def test_an_unknown_peer_is_one_line():
    result = run_cli('benchmark', *TINY_RUN, TINY_HPARAMS, '--peers=keras_float32,torch_bfloat16', check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no peer 'torch_bfloat16': did you mean torch_float32 or torch_autocast_bfloat16? (choose from "
        "keras_float32, keras_mixed_bfloat16, torch_float32, torch_autocast_bfloat16)"]


@pytest.mark.parametrize('interpreter, why', [('/nonexistent/python', 'No such file'),
                                               (sys.executable, "No module named 'torch'")])
def test_a_torch_python_that_cannot_run_the_twins_is_one_line(interpreter, why):
    result = run_cli('benchmark', *TINY_RUN, TINY_HPARAMS, f'--torch_python={interpreter}', check=False)
    assert result.returncode == 2
    line, = result.stderr.strip().splitlines()
    assert line.startswith(f'error: --torch_python={interpreter} cannot run the PyTorch twins (')
    assert why in line and line.endswith('; it needs torch and numpy')


def test_an_environment_that_cannot_be_made_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A fresh cache folder, and a pip that finds no packages: the venv is made, pip fails."""
    (tmp_path / 'no_wheels').mkdir()
    monkeypatch.setenv(cache.ENV, str(tmp_path / 'cache'))
    monkeypatch.setenv('PIP_CONFIG_FILE', os.devnull)
    monkeypatch.setenv('PIP_NO_INDEX', '1')
    monkeypatch.setenv('PIP_FIND_LINKS', str(tmp_path / 'no_wheels'))
    result = run_cli('benchmark', *TINY_RUN, TINY_HPARAMS, check=False)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith('error: cannot make the PyTorch environment: pip install -r requirements-torch.txt '
                           'failed (')
    assert line.endswith('; pass --torch_python=PATH to use an existing one')
    made = tmp_path / 'cache' / torch_environment.CACHE_DIR
    assert [name for name in os.listdir(made) if not name.endswith('.lock')] == []


def test_without_torch_peers_no_environment_is_made(tmp_path, monkeypatch):
    # A cache of its own, without the fused kernel: Keras' LSTM rather than a minute's build.
    monkeypatch.setenv(cache.ENV, str(tmp_path / 'cache'))
    result = run_cli('benchmark', *TINY_RUN, '--peers=keras_float32',
                     '--hparams=rnn_units=8,batch_size=8,rnn_implementation=keras')
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(report['peers']) == ['keras_float32'] and report['best_float32_peer'] == 'keras_float32'
    assert not (tmp_path / 'cache' / torch_environment.CACHE_DIR).exists()
