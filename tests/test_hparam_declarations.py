"""The HParam declaration, and the project's declarations: every hparam a model takes is
declared once, and each default a declaration or a model gives passes its own check."""

import re

import pytest

from estimator_models import registry
from estimator_models.layers.hparam_declarations import (FRACTION, NON_NEGATIVE, POSITIVE, HParam,
                                                          choices_of, defaults_of)
from estimator_models.legacy import user_model_fn
from estimator_models.running import hparams
from estimator_models.running.common_hparams import COMMON_HPARAMS

DECLARED = {declared.name: declared for declared in COMMON_HPARAMS + (user_model_fn.KIND_HPARAM,)}
for _module in registry.MODELS.values():
    DECLARED.update((declared.name, declared) for declared in _module.HPARAMS)


@pytest.mark.parametrize('declared, value, message', [
    (HParam('cell', 'lstm', 'doc', choices=('lstm', 'gru')), 'rnn', "hparam cell='rnn' must be one of lstm, gru"),
    (HParam('units', 8, 'doc', bound=POSITIVE), 0, 'hparam units must be positive, got 0'),
    (HParam('steps', 8, 'doc', bound=NON_NEGATIVE), -1, 'hparam steps must be 0 or more, got -1'),
    (HParam('rate', 0.5, 'doc', bound=FRACTION), 1.0, 'hparam rate must lie in [0, 1), got 1.0'),
    (HParam('sizes', (8,), 'doc'), [8, 0], 'hparam sizes must list positive sizes, got [8, 0]'),
    (HParam('sizes', (8,), 'doc'), [], 'hparam sizes must list positive sizes, got []'),
])
def test_check_refuses_what_the_declaration_does_not_allow(declared, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        declared.check(value)


def test_a_tuple_default_declares_a_list_of_sizes_given_as_a_new_list():
    declared = HParam('sizes', (32, 64), 'doc')
    assert declared.type_name == 'list of ints' and declared.default_value == [32, 64]
    assert declared.default_value is not declared.default_value
    assert defaults_of([declared]) == {'sizes': [32, 64]} and choices_of([declared]) == {}


@pytest.mark.parametrize('name', sorted(DECLARED))
def test_each_declaration_takes_its_own_default_and_has_one_line_of_doc(name):
    declared = DECLARED[name]
    if not declared.from_data:  # its 0 stands for the data's value
        declared.check(declared.default_value)
    assert declared.doc and '\n' not in declared.doc and len(declared.doc) <= 140
    assert declared.choices is None or isinstance(declared.choices, tuple)


@pytest.mark.parametrize('name', list(registry.MODELS))
def test_every_hparam_of_a_model_is_declared_once_and_its_own_defaults_pass(name):
    module = registry.get(name)
    names = [declared.name for declared in COMMON_HPARAMS + module.HPARAMS]
    assert len(names) == len(set(names))
    declared = hparams.declarations_for(module)
    assert set(hparams.resolve(module, {}, (32, 32, 1, 10))) == set(declared)
    for key, default in module.DEFAULT_HPARAMS.items():
        assert type(default) is type(declared[key].default_value), key
        declared[key].check(default)


def test_a_user_model_declares_its_kind_and_keeps_the_undeclared_hparams_of_its_module():
    model = registry.get('examples.legacy_clip_rnn:model_fn')
    assert hparams.declarations_for(model)['kind'] is user_model_fn.KIND_HPARAM
    assert hparams.defaults_for(model)['frame_units'] == 64
    assert 'frame_units' not in hparams.declarations_for(model)


def test_the_resumable_hparams_are_the_training_ones():
    assert {name for name, declared in DECLARED.items() if declared.resumable} == {
        'batch_size', 'learning_rate', 'lr_schedule', 'warmup_steps', 'clip_norm', 'dropout',
        'input_dropout', 'summary_images_every', 'histograms', 'shuffle_buffer', 'skip_bad_records',
        'rnn_implementation', 'cache_train_mb', 'augment', 'label_smoothing', 'weight_decay', 'precision'}
