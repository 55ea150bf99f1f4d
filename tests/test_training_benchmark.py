"""bin/benchmark --train: the Keras twin is the project's model (same parameters, for
every model and a non-default stack), and a tiny side-by-side run reports both rates."""

import pytest

from conftest import run_cli
from estimator_models import registry
from estimator_models.benchmarks import keras_twins, training
from estimator_models.layers import precision

# rnn_implementation=keras: building the fused kernel would cost a minute of this file's
# budget, and every implementation holds the same variables (tests/test_recurrent.py).
KERAS = {'rnn_implementation': 'keras'}
# A stack and each model's reading of its input other than the defaults.
STACK = {**KERAS, 'rnn_layers': '2', 'bidirectional': 'true', 'cell': 'gru', 'dropout': '0.1'}
NON_DEFAULT = {
    'pixel_row_lstm': {**STACK, 'scan': 'columns'},
    'cnn_lstm': {**STACK, 'sequence': 'pooled', 'cnn_filters': '[8,16,16]'},
    'temporal_cnn_lstm': {**STACK, 'frame_differences': 'false', 'max_frames': '4'},
}


def _resolved(model, overrides):
    """The hparams a run resolves from the data the benchmark writes for `model`."""
    return training.resolved_hparams(model, overrides)[1]


@pytest.mark.parametrize('model, overrides', [
    *(pytest.param(model, KERAS, id=f'{model}-default') for model in sorted(registry.MODELS)),
    *(pytest.param(model, overrides, id=f'{model}-non_default') for model, overrides in NON_DEFAULT.items()),
])
def test_twin_has_the_parameters_of_the_estimator(model, overrides):
    hparams = _resolved(model, overrides)
    twin = keras_twins.keras_twin(model, hparams)
    assert keras_twins.trainable_parameter_count(twin) == \
        training.estimator_parameter_count(model, hparams)


def test_flops_of_pixel_row_lstm_are_those_of_its_lstm_and_logits():
    twin = keras_twins.keras_twin('pixel_row_lstm', _resolved('pixel_row_lstm', KERAS))
    # 28 steps of [28 + 128] x [128, 512], then [128] x [128, 10]; x2 per multiply-add,
    # x3 for forward and backward.
    forward = 2 * (28 * (28 + 128) * 512 + 128 * 10)
    assert keras_twins.flops_per_example(twin) == 3 * forward
    assert keras_twins.first_recurrent_shape(twin) == (28, 128)


def test_a_tiny_benchmark_reports_both_sides():
    result = training.train_benchmark(
        'pixel_row_lstm', {**KERAS, 'rnn_units': '8', 'batch_size': '8'},
        training.Timing(steps=10, rounds=1, warmup_steps=3), peers=('keras_float32',), with_startup=False)
    for side in ('project', 'keras'):
        assert result[side]['examples_per_sec'] > 0
        assert result[side]['examples_per_sec_min'] <= result[side]['examples_per_sec_max']
        assert result[side]['gflops_per_sec'] > 0
    assert result['model'] == 'pixel_row_lstm'
    assert result['hparams'] == {'batch_size': 8, 'rnn_units': 8, 'rnn_implementation': 'keras',
                                 'precision': 'auto'}
    assert result['project_precision'] == precision.resolved({'precision': 'auto'})
    assert result['ratio'] > 0 and result['matmul_gflops_per_sec'] > 0
    assert result['matmul_shape'] == [8, 28 + 8, 32]
    assert result['flops_per_example'] > 0 and result['peak_rss_mb'] > 0
    assert result['startup_secs'] is None
    # 10 steps never reach the project's step 101: it is timed as the peers are.
    assert result['project_steps_and_warmup'] == [10, 3]


def test_the_project_is_timed_after_its_first_summary_step_when_the_window_would_hold_it():
    assert training.FIRST_STEADY_STEP == 101
    # 180 timed steps after 20: the project warms up through step 101 and trains 180 more.
    assert training.project_window(200, 20) == (281, 101)
    # Windows that end before it, or start after it, stay as asked.
    assert training.project_window(100, 20) == (100, 20)
    assert training.project_window(300, 150) == (300, 150)


def test_bin_benchmark_train_refuses_bad_flags_in_one_line():
    result = run_cli('benchmark', '--train', '--model=pixel_row_lstm', '--steps=10',
                     '--warmup_steps=10', check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'error: --warmup_steps must lie in 1..9 (below --steps), got 10']
