""".npz files read in place as fixed-length records."""

import re
import tempfile

import numpy as np
import pytest

from estimator_models import cache
from estimator_models.errors import UserError
from input_fns.sources import arrays, npz


def test_rows_read_in_place_equal_the_arrays(digits_npz):
    digits, test = npz.open_npz(digits_npz, 'image')
    assert test is None
    assert digits.inputs.path == digits_npz  # no copy
    assert digits.info.num_examples == 600 and digits.info.frame_shape == (28, 28, 1)
    read = arrays.read_all(digits)
    saved = np.load(digits_npz, allow_pickle=False)
    np.testing.assert_array_equal(read.inputs[..., 0], saved['x'])
    np.testing.assert_array_equal(read.labels, saved['y'])


def test_compressed_and_float_arrays_are_read_through_a_cached_copy(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (20, 9, 7, 3)).astype(np.float64)
    labels = rng.integers(0, 4, 20).astype(np.int16)
    path = str(tmp_path / 'compressed.npz')
    np.savez_compressed(path, x=pixels, y=labels, class_names=np.array(['a', 'b', 'c', 'd']))
    images, _ = npz.open_npz(path)
    assert images.inputs.path != path
    assert images.info.class_names == ('a', 'b', 'c', 'd') and images.info.kind == 'image'
    read = arrays.read_all(images)
    np.testing.assert_array_equal(read.inputs, pixels)
    np.testing.assert_array_equal(read.labels, labels)


def test_clips_are_cut_to_their_lengths(clips_npz):
    clips, _ = npz.open_npz(clips_npz, 'clip')
    saved = np.load(clips_npz, allow_pickle=False)
    read = arrays.read_all(clips, num_examples=20)
    np.testing.assert_array_equal(read.lengths, saved['lengths'][:20])
    assert read.inputs.shape[1] == saved['lengths'][:20].max()
    np.testing.assert_array_equal(read.inputs[..., 0], saved['x'][:20, :read.inputs.shape[1]])


def test_keras_layout_gives_train_and_test_splits(tmp_path):
    path = str(tmp_path / 'mnist_like.npz')
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), y_train=np.arange(30) % 10,
             x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_test=np.arange(10))
    train, test = npz.open_npz(path, 'image')
    assert train.info.num_examples == 30 and test.info.num_examples == 10
    np.testing.assert_array_equal(arrays.read_all(test).labels, np.arange(10))


@pytest.mark.parametrize('contents, message', [
    ({'x': np.zeros((4, 28, 28), np.uint8)}, 'but no y'),
    ({'x': np.zeros((4, 28, 28), np.uint8), 'y': np.zeros(3, int)}, '4 inputs but 3 labels'),
    ({'x': np.zeros((4, 28), np.uint8), 'y': np.zeros(4, int)}, 'expected image arrays'),
    ({'x': np.zeros((4, 28, 28), np.uint8), 'y': np.zeros(4, float)}, 'labels must be integers'),
    ({'x': np.zeros((4, 28, 28), np.uint8), 'y': -np.ones(4, int)}, 'negative label'),
    ({'x': np.zeros((4, 28, 28, 2), np.uint8), 'y': np.zeros(4, int)}, '1 or 3 channels'),
    ({'pixels': np.zeros(3)}, 'expected arrays x and y'),
])
def test_bad_npz_files_are_named_errors(tmp_path, contents, message):
    path = str(tmp_path / 'bad.npz')
    np.savez(path, **contents)
    with pytest.raises(UserError, match=message):
        npz.open_npz(path, 'image')


def test_clip_lengths_must_fit(tmp_path):
    path = str(tmp_path / 'clips.npz')
    np.savez(path, x=np.zeros((2, 5, 8, 8), np.uint8), y=np.zeros(2, int), lengths=np.array([3, 6]))
    with pytest.raises(UserError, match='lengths must lie in 1..5'):
        npz.open_npz(path, 'clip')


def test_unreadable_files_are_named_errors(tmp_path):
    corrupt = tmp_path / 'corrupt.npz'
    corrupt.write_bytes(b'not a zip file')
    with pytest.raises(UserError, match='cannot read'):
        npz.open_npz(str(corrupt), 'image')
    with pytest.raises(UserError, match='no such .npz'):
        npz.open_npz(str(tmp_path / 'missing.npz'), 'image')


def test_with_no_writable_cache_at_all_a_compressed_npz_is_refused_naming_the_cache(tmp_path, monkeypatch):
    (tmp_path / 'a_file').write_text('')
    monkeypatch.setenv(cache.ENV, str(tmp_path / 'a_file/cache'))
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'a_file/tmp'))
    path = str(tmp_path / 'compressed.npz')
    np.savez_compressed(path, x=np.zeros((4, 28, 28), np.uint8), y=np.arange(4))
    refusal = (f'cannot write the uncompressed copy of {path} (x.npy) into the cache: Not a directory; '
               f'set {cache.ENV} to a writable folder')
    with pytest.raises(UserError, match=re.escape(refusal)):
        npz.open_npz(path, 'image')
