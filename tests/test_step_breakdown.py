"""bin/benchmark --step_breakdown: a training step's op time by op type and by what the
ops do, from a real traced Estimator run."""

import json

import pytest

from conftest import run_cli
from estimator_models.benchmarks import step_breakdown


def test_a_traced_run_of_the_fused_lstm_attributes_its_step_to_the_recurrent_kernel(tmp_path):
    result_file = tmp_path / 'breakdown.json'
    result = run_cli('benchmark', '--step_breakdown', '--model=pixel_row_lstm', '--steps=26', '--warmup_steps=4',
                     '--hparams=rnn_units=16,batch_size=16,rnn_implementation=fused', f'--json_out={result_file}')
    breakdown = json.loads(result_file.read_text())
    assert json.loads(result.stdout) == breakdown
    assert breakdown['traced_steps'] == step_breakdown.TRACED_STEPS
    assert breakdown['step_ms'] > 0 and breakdown['examples_per_sec'] > 0
    # Two threads at most: a step's CPU time is within twice its wall time, and training is not free.
    assert 0 < breakdown['cpu_ms_per_step'] < 2.5 * breakdown['step_ms']
    ops = {row['name']: row for row in breakdown['ops']}
    # The forward and backward kernels, the logits' matmul and Adam all ran in every traced step.
    assert {'LstmSequence', 'LstmSequenceGrad', 'ResourceApplyAdam'} <= set(ops)
    groups = {row['name']: row for row in breakdown['groups']}
    kernel_ms = ops['LstmSequence']['ms_per_step'] + ops['LstmSequenceGrad']['ms_per_step']
    assert abs(groups['recurrent kernel']['ms_per_step'] - kernel_ms) < 0.002
    assert sum(row['share'] for row in breakdown['groups']) == pytest.approx(1.0, abs=0.01)
    assert '| recurrent kernel |' in result.stderr


def test_too_few_steps_to_trace_is_one_line():
    result = run_cli('benchmark', '--step_breakdown', '--model=pixel_row_lstm', '--steps=20', '--warmup_steps=5',
                     check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'error: --step_breakdown traces 10 steps after --warmup_steps and times 10 more: --steps must be at '
        'least --warmup_steps + 20, got --steps=20 --warmup_steps=5']
