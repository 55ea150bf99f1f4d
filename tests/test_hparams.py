"""Hparams: overrides, data-derived shapes, and what a resumed run may change."""

import pytest

from estimator_models import pixel_row_lstm, temporal_cnn_lstm
from estimator_models.running import hparams
from input_fns.errors import UserError


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
