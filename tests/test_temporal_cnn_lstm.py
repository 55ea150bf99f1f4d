"""temporal_cnn_lstm learns, and reads exactly the frames it should: padding never
changes its output, and with max_frames=1 (the single-frame baseline) nothing after
the first frame does."""

import numpy as np
import pytest

from conftest import train_on_a_few_examples, train_without_evaluating
from estimator_models.running import experiment
from input_fns.sources.arrays import LabelledArrays

FAST = {'rnn_units': '32', 'cnn_filters': '[8,16]', 'frame_features': '32', 'batch_size': '16',
        'learning_rate': '0.005', 'warmup_steps': '1', 'lr_schedule': 'constant'}


def _random_clips(rng, num_clips, num_frames):
    return rng.integers(0, 256, (num_clips, num_frames, 32, 32, 1), dtype=np.uint8)


def _clips(frames, lengths):
    return LabelledArrays(frames, np.zeros(len(frames), np.int64), np.array(lengths, np.int32))


def test_loss_falls_on_a_small_batch(clips_npz, tmp_path):
    _, before, after = train_on_a_few_examples(
        'temporal_cnn_lstm', clips_npz, str(tmp_path), steps=40, overrides=FAST, num_examples=16)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize('pooling', ['last', 'mean', 'max', 'attention'])
def test_padding_never_changes_predictions(clips_npz, tmp_path, pooling):
    run = train_without_evaluating('temporal_cnn_lstm', clips_npz, str(tmp_path),
                                   {**FAST, 'bidirectional': 'true', 'pooling': pooling}, steps=2, num_examples=32)
    rng = np.random.default_rng(0)
    short, noise, long = _random_clips(rng, 1, 6), _random_clips(rng, 1, 6), _random_clips(rng, 1, 12)
    # The six-frame clip alone, then padded with six frames of noise and batched next
    # to a twelve-frame clip, so that its batch really is twelve frames long.
    [alone] = experiment.predict(run, _clips(short, [6]))
    padded = experiment.predict(
        run, _clips(np.concatenate([np.concatenate([short, noise], axis=1), long]), [6, 12]))[0]
    np.testing.assert_allclose(padded['logits'], alone['logits'], atol=1e-5)
    np.testing.assert_allclose(padded['probabilities'], alone['probabilities'], atol=1e-6)


def test_single_frame_baseline_ignores_later_frames(clips_npz, tmp_path):
    run = train_without_evaluating('temporal_cnn_lstm', clips_npz, str(tmp_path), {**FAST, 'max_frames': '1'},
                                   steps=2, num_examples=32)
    rng = np.random.default_rng(1)
    clips = _random_clips(rng, 2, 8)
    clips[1, 0] = clips[0, 0]  # same first frame, different later frames
    first, second = experiment.predict(run, _clips(clips, [8, 8]))
    np.testing.assert_allclose(first['probabilities'], second['probabilities'], atol=1e-6)
    assert not np.array_equal(clips[0, 1:], clips[1, 1:])
