"""The RunPlan that bin/train makes of its flags before it reads any data."""

import dataclasses
import os

from absl import flags
import pytest

from estimator_models import pixel_row_lstm
from estimator_models.running import cluster, hparams, run_plan
from estimator_models.running.cli import train
from estimator_models.errors import UserError

CHIEF = cluster.Task('chief', 0, {'chief': ['localhost:2222'], 'ps': ['localhost:2223']})


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _plan(*args, task=cluster.Task()):
    """The plan of bin/train --model=pixel_row_lstm ARGS."""
    options = flags.FlagValues()
    train.COMMAND.define_flags(options)
    options(['bin/train', '--model=pixel_row_lstm', *args])
    return run_plan.from_flags(options, task)


def test_the_plan_fills_in_the_defaults_and_writes_nothing(tmp_path):
    plan = _plan()
    model_dir = os.path.join('runs', 'pixel_row_lstm')
    assert plan.unopened_run.model_dir == model_dir
    assert plan.export_dir == os.path.join(model_dir, 'export')
    assert plan.train_steps == pixel_row_lstm.DEFAULT_TRAIN_STEPS
    assert plan.checkpoint_every is None  # every experiment.CHECKPOINT_EVERY_SECS, and at the end
    assert (plan.seed, plan.export_formats, plan.distribution) == (42, ('saved_model',), 'none')
    assert (plan.warm_start, plan.profile_steps, plan.save_every_secs) == (None, None, 600)
    assert plan.precision in ('float32', 'mixed_bfloat16')
    # The embedded digits' test split is counted without preparing them.
    assert plan.unopened_run.eval_examples == 10000
    assert plan.unopened_run.hparams['height'] == 0  # the data fills it
    assert os.listdir(tmp_path) == []


def test_the_plan_carries_the_flags(tmp_path):
    plan = _plan(f'--model_dir={tmp_path / "run"}', '--train_steps=10', '--profile_steps=2,4',
                 '--batch_size=32', '--hparams=rnn_units=8', '--xla', '--seed=7', '--checkpoint_every=5')
    assert (plan.train_steps, plan.checkpoint_every, plan.profile_steps) == (10, 5, (2, 4))
    assert plan.unopened_run.hparams['batch_size'] == 32 and plan.unopened_run.hparams['rnn_units'] == 8
    assert plan.xla and plan.seed == 7


def test_the_plan_is_frozen():
    plan = _plan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.train_steps = 1


def test_a_resumed_run_plans_with_what_its_model_dir_saved(tmp_path):
    model_dir = tmp_path / 'saved'
    saved = hparams.resolve(pixel_row_lstm, {'rnn_units': '16'}, (28, 28, 1, 10))
    hparams.save_run(str(model_dir), {'model': 'pixel_row_lstm', 'data': 'glyph_digits', 'eval_data': None,
                                      'class_names': None, 'hparams': saved})
    plan = _plan(f'--model_dir={model_dir}')
    assert plan.unopened_run.data == 'glyph_digits'
    assert plan.unopened_run.hparams == saved


def test_a_cluster_plans_float32():
    assert _plan('--hparams=precision=auto', task=CHIEF).precision == 'float32'


@pytest.mark.parametrize('args, message', [
    (['--train_steps=0'], '--train_steps must be positive, got 0'),
    (['--export_formats=saved_model,tflite'], '--export_formats: unknown format tflite'),
    (['--train_steps=10', '--profile_steps=5,11'], '--profile_steps=5,11 must satisfy'),
    (['--distribution=ring'], "unknown --distribution 'ring'"),
    (['--hparams=rnn_units=0'], 'hparam rnn_units must be positive'),
])
def test_a_bad_flag_is_one_user_error(args, message, tmp_path):
    with pytest.raises(UserError, match=message):
        _plan(*args)
    assert os.listdir(tmp_path) == []


def test_a_cluster_refuses_bfloat16_before_any_data():
    with pytest.raises(UserError, match='cannot train in a TF_CONFIG cluster'):
        _plan('--hparams=precision=mixed_bfloat16', task=CHIEF)
