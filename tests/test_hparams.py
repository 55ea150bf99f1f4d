"""Hparams: overrides, data-derived shapes, and what a resumed run may change."""

import re

import pytest

from estimator_models import cnn_lstm, pixel_row_lstm, temporal_cnn_lstm
from estimator_models.errors import UserError
from estimator_models.running import hparams


def test_overrides_parse_scalars_and_lists():
    assert hparams.parse_overrides('rnn_units=64, cnn_filters=[8,16], cell=gru') == {
        'rnn_units': '64', 'cnn_filters': '[8,16]', 'cell': 'gru'}
    assert hparams.parse_overrides('') == {}
    with pytest.raises(UserError, match='cannot parse'):
        hparams.parse_overrides('rnn_units')


def test_resolve_types_values_and_fills_data_shape():
    resolved = hparams.resolve(
        temporal_cnn_lstm, {'cnn_filters': '[8,16]', 'bidirectional': 'true', 'dropout': '0.25'},
        data_shape=(32, 32, 1, 8))
    assert resolved['cnn_filters'] == [8, 16]
    assert resolved['bidirectional'] is True and resolved['dropout'] == 0.25
    assert (resolved['height'], resolved['width'], resolved['channels'], resolved['num_classes']) == (32, 32, 1, 8)
    assert resolved['batch_size'] == temporal_cnn_lstm.DEFAULT_HPARAMS['batch_size']


def test_explicit_input_size_wins_over_the_data():
    resolved = hparams.resolve(pixel_row_lstm, {'height': '32', 'width': '32'}, data_shape=(28, 28, 1, 10))
    assert (resolved['height'], resolved['width']) == (32, 32)


@pytest.mark.parametrize('overrides, message', [
    ({'no_such_key': '1'}, 'unknown hparam'),
    ({'rnn_units': 'many'}, 'not a valid int'),
    ({'cell': 'transformer'}, 'must be one of'),
    ({'scan': 'diagonal'}, 'must be one of'),
    ({'dropout': '1.5'}, 'dropout must lie'),
    ({'input_dropout': '-0.1'}, 'input_dropout must lie'),
    ({'bidirectional': 'maybe'}, 'not a valid bool'),
    ({'summary_images_every': '-1'}, 'summary_images_every must be 0 or more'),
])
def test_bad_hparams_are_named_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        hparams.resolve(pixel_row_lstm, overrides, data_shape=(28, 28, 1, 10))


def test_resumed_run_may_change_training_keys_only(tmp_path):
    saved = hparams.resolve(pixel_row_lstm, {}, data_shape=(28, 28, 1, 10))
    hparams.save_run(str(tmp_path), {'model': 'pixel_row_lstm', 'hparams': saved})
    record = hparams.load_run(str(tmp_path))
    resumed = hparams.resolve(pixel_row_lstm, {'learning_rate': '0.01'}, saved=record['hparams'])
    assert resumed['learning_rate'] == 0.01 and resumed['rnn_units'] == saved['rnn_units']
    with pytest.raises(UserError, match='rnn_units=64 differs from rnn_units=128'):
        hparams.resolve(pixel_row_lstm, {'rnn_units': '64'}, saved=record['hparams'])


@pytest.mark.parametrize('model, overrides, message', [
    (cnn_lstm, {'cnn_filters': '[32,0]'}, 'hparam cnn_filters must list positive sizes, got [32, 0]'),
    (cnn_lstm, {'step': '0'}, 'hparam step must be positive, got 0'),
    (cnn_lstm, {'backbone_batch_norm_momentum': '1.0'}, 'backbone_batch_norm_momentum must lie in [0, 1)'),
    (cnn_lstm, {'backbone_learning_rate_scale': '-1'}, 'backbone_learning_rate_scale must be 0 or more'),
    (cnn_lstm, {'sequence': 'regions', 'regions': 'boxes', 'resize': 'pad'}, 'regions=boxes needs resize=resize'),
    (temporal_cnn_lstm, {'max_frames': '-2'}, 'hparam max_frames must be 0 or more, got -2'),
    (temporal_cnn_lstm, {'head': 'per_clip'}, "hparam head='per_clip' must be one of clip, per_frame"),
    (pixel_row_lstm, {'channels': '2'}, 'hparam channels=2 must be one of 1, 3'),
    (pixel_row_lstm, {'label_smoothing': '1'}, 'hparam label_smoothing must lie in [0, 1), got 1.0'),
    (pixel_row_lstm, {'learning_rate': '0'}, 'hparam learning_rate must be positive, got 0.0'),
])
def test_declared_choices_and_bounds_are_named_errors(model, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        hparams.resolve(model, overrides, data_shape=(32, 32, 1, 10))


def test_shape_keys_wait_for_the_data_and_boxes_turn_the_warps_off():
    unshaped = hparams.resolve(cnn_lstm, {'sequence': 'regions', 'regions': 'boxes'})
    assert unshaped['height'] == 0 and unshaped['channels'] == 0 and unshaped['augment'] == 'none'
    with pytest.raises(UserError, match='hparam height must be positive, got -28'):
        hparams.resolve(cnn_lstm, {'height': '-28'})


def test_a_resumed_run_keeps_what_it_saved_and_takes_new_hparams_at_their_defaults():
    saved = hparams.resolve(temporal_cnn_lstm, {'batch_size': '8'}, data_shape=(32, 32, 1, 8))
    older = {key: value for key, value in saved.items() if key != 'frame_differences'}
    resumed = hparams.resolve(temporal_cnn_lstm, {'augment': 'light'}, saved=older)
    assert resumed == dict(saved, augment='light')
    with pytest.raises(UserError, match=r'cnn_filters=\[8\] differs from cnn_filters=\[32, 64, 64\]'):
        hparams.resolve(temporal_cnn_lstm, {'cnn_filters': '[8]'}, saved=older)
