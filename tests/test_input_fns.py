"""The input functions: embedded data, .npz files, and the batches an Estimator sees."""

import os

import numpy as np
import pytest
import tensorflow as tf

from input_fns import FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, arrays, dataset, embedded, sources
from input_fns.errors import UserError

ModeKeys = tf.estimator.ModeKeys
DIGIT_SIZE = {'height': 28, 'width': 28, 'channels': 1, 'resize': 'resize'}
CLIP_SIZE = {'height': 32, 'width': 32, 'channels': 1, 'resize': 'resize'}


def _batches(input_fn, count):
    """The first `count` (features, labels) batches of an input_fn, as numpy."""
    with tf.Graph().as_default():
        iterator = tf.compat.v1.data.make_one_shot_iterator(input_fn())
        next_batch = iterator.get_next()
        with tf.compat.v1.Session() as session:
            return [session.run(next_batch) for _ in range(count)]


def _all_batches(input_fn):
    with tf.Graph().as_default():
        next_batch = tf.compat.v1.data.make_one_shot_iterator(input_fn()).get_next()
        batches = []
        with tf.compat.v1.Session() as session:
            while True:
                try:
                    batches.append(session.run(next_batch))
                except tf.errors.OutOfRangeError:
                    return batches


def test_embedded_digits_are_generated_once_and_cached():
    first = embedded.load('glyph_digits', 'test', num_examples=50)
    cached = os.path.join(embedded.cache_dir(),
                          f'glyph_digits-v{embedded.GENERATOR_VERSION}-test-50.npz')
    modified = os.path.getmtime(cached)
    again = embedded.load('glyph_digits', 'test', num_examples=50)
    assert os.path.getmtime(cached) == modified
    np.testing.assert_array_equal(first.inputs, again.inputs)
    assert first.inputs.shape == (50, 28, 28, 1) and first.inputs.dtype == np.uint8
    assert first.kind == 'image' and first.num_classes == 10
    assert set(first.labels) <= set(range(10))


def test_embedded_splits_differ():
    train = embedded.load('glyph_digits', 'train', num_examples=20)
    test = embedded.load('glyph_digits', 'test', num_examples=20)
    assert not np.array_equal(train.inputs, test.inputs)


def test_embedded_clips_vary_in_length():
    clips = embedded.load('moving_glyphs', 'test', num_examples=100)
    assert clips.kind == 'clip' and clips.inputs.shape[1:] == (12, 32, 32, 1)
    assert clips.lengths.min() >= 6 and clips.lengths.max() <= 12
    assert len(set(clips.lengths)) > 3
    for frames, length in zip(clips.inputs, clips.lengths):
        assert not frames[length:].any()  # nothing past a clip's end
        assert frames[length - 1].any()


def test_image_batches_have_the_model_input_shape(digits_npz):
    examples, _ = arrays.load_npz(digits_npz, 'image')
    input_fn = dataset.make_input_fn(examples, ModeKeys.TRAIN, DIGIT_SIZE, batch_size=16, seed=3)
    [(features, labels)] = _batches(input_fn, 1)
    assert features[IMAGE_KEY].shape == (16, 28, 28, 1)
    assert features[IMAGE_KEY].dtype == np.float32
    assert features[IMAGE_KEY].max() > 200  # raw pixels: scaling is the model's job
    assert labels.shape == (16,) and labels.dtype == np.int32


def test_training_batches_shuffle_and_repeat(digits_npz):
    examples, _ = arrays.load_npz(digits_npz, 'image')
    input_fn = dataset.make_input_fn(examples, ModeKeys.TRAIN, DIGIT_SIZE, batch_size=200, seed=3)
    labels = np.concatenate([batch[1] for batch in _batches(input_fn, 6)])  # two epochs
    assert len(labels) == 1200
    assert not np.array_equal(labels[:600], examples.labels)
    np.testing.assert_array_equal(np.sort(labels[:600]), np.sort(examples.labels))


def test_eval_reads_every_example_once_in_order(digits_npz):
    examples, _ = arrays.load_npz(digits_npz, 'image')
    input_fn = dataset.make_input_fn(examples, ModeKeys.EVAL, DIGIT_SIZE, batch_size=64)
    batches = _all_batches(input_fn)
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in batches]), examples.labels)
    assert batches[-1][1].shape == (600 % 64,)


def test_clip_batches_are_padded_to_their_longest_clip(clips_npz):
    examples, _ = arrays.load_npz(clips_npz, 'clip')
    input_fn = dataset.make_input_fn(examples, ModeKeys.EVAL, CLIP_SIZE, batch_size=8)
    for index, (features, labels) in enumerate(_all_batches(input_fn)):
        expected_lengths = examples.lengths[index * 8:(index + 1) * 8]
        frames = features[FRAMES_KEY]
        np.testing.assert_array_equal(features[LENGTH_KEY], expected_lengths)
        assert features[LENGTH_KEY].dtype == np.int32
        assert frames.shape == (len(expected_lengths), expected_lengths.max(), 32, 32, 1)
        assert frames.dtype == np.float32
        for clip, length in zip(frames, expected_lengths):
            assert not clip[length:].any()


@pytest.mark.parametrize('policy', ['resize', 'pad', 'crop'])
def test_other_sizes_are_fitted_to_the_model_input(tmp_path, policy):
    path = str(tmp_path / 'rgb.npz')
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (5, 40, 60, 3), dtype=np.uint8), y=np.arange(5))
    examples, _ = arrays.load_npz(path, 'image')
    size = {'height': 28, 'width': 28, 'channels': 1, 'resize': policy}
    [(features, _)] = _batches(dataset.make_input_fn(examples, ModeKeys.EVAL, size, 5), 1)
    assert features[IMAGE_KEY].shape == (5, 28, 28, 1)
    if policy == 'pad':  # 40x60 keeps its aspect: bands of padding above and below
        assert not features[IMAGE_KEY][:, 0].any()


def test_npz_with_train_and_test_splits(tmp_path):
    path = str(tmp_path / 'mnist_like.npz')
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), y_train=np.arange(30) % 10,
             x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_test=np.arange(10))
    train, test = sources.train_and_eval_data(path, None, 'image', 'glyph_digits')
    assert len(train) == 30 and len(test) == 10


def test_single_split_npz_holds_out_an_eval_split(digits_npz):
    train, held_out = sources.train_and_eval_data(digits_npz, None, 'image', 'glyph_digits')
    assert len(held_out) == 60 and len(train) == 540
    train_rows = {row.tobytes() for row in train.inputs}
    assert not any(row.tobytes() in train_rows for row in held_out.inputs)


@pytest.mark.parametrize('contents, message', [
    ({'x': np.zeros((4, 28, 28), np.uint8)}, 'but no y'),
    ({'x': np.zeros((4, 28, 28), np.uint8), 'y': np.zeros(3, int)}, '4 inputs but 3 labels'),
    ({'x': np.zeros((4, 28), np.uint8), 'y': np.zeros(4, int)}, 'expected image arrays'),
    ({'x': np.zeros((4, 28, 28), np.uint8), 'y': np.zeros(4, float)}, 'labels must be integers'),
    ({'pixels': np.zeros(3)}, 'expected arrays x and y'),
])
def test_bad_npz_files_are_named_errors(tmp_path, contents, message):
    path = str(tmp_path / 'bad.npz')
    np.savez(path, **contents)
    with pytest.raises(UserError, match=message):
        sources.train_and_eval_data(path, None, 'image', 'glyph_digits')


def test_unreadable_and_unknown_sources_are_named_errors(tmp_path):
    corrupt = tmp_path / 'corrupt.npz'
    corrupt.write_bytes(b'not a zip file')
    with pytest.raises(UserError, match='cannot read'):
        sources.evaluation_data(str(corrupt), 'image', 'glyph_digits')
    with pytest.raises(UserError, match='no such .npz'):
        sources.evaluation_data(str(tmp_path / 'missing.npz'), 'image', 'glyph_digits')
    with pytest.raises(UserError, match='unknown data spec'):
        sources.evaluation_data('no_such_dataset', 'image', 'glyph_digits')
    with pytest.raises(UserError, match='holds clips'):
        sources.evaluation_data('moving_glyphs', 'image', 'glyph_digits')
