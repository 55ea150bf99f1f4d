"""The input_fn factory: batches an Estimator sees from any source."""

import json

import numpy as np
import pytest
import tensorflow as tf

from input_fns import BAD_RECORDS_KEY, FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, dataset, specs
from input_fns.sources import npz, source
from input_fns.sources.arrays import LabelledArrays

ModeKeys = tf.estimator.ModeKeys
DIGITS = {'height': 28, 'width': 28, 'channels': 1, 'num_classes': 10, 'resize': 'resize',
          'shuffle_buffer': 1000}
CLIPS = dict(DIGITS, height=32, width=32, num_classes=8)


def batches_of(input_fn, count=None):
    """The first `count` (default: all) (features, labels) batches of an input_fn, as numpy.

    Read eagerly: the iterator, and with it the pipeline's parallel map and prefetch
    threads, is stopped and joined when the loop ends, before the next test starts. (A
    graph session closed while an endless training pipeline is still filling its
    buffers can take the process down with it.)"""
    batches = input_fn() if count is None else input_fn().take(count)
    return [tf.nest.map_structure(lambda tensor: tensor.numpy(), batch) for batch in batches]


def test_image_batches_have_the_model_input_shape(digits_npz):
    digits, _ = npz.open_npz(digits_npz, 'image')
    input_fn = dataset.make_input_fn(digits, ModeKeys.TRAIN, DIGITS, batch_size=16, seed=3)
    [(features, labels)] = batches_of(input_fn, 1)
    assert features[IMAGE_KEY].shape == (16, 28, 28, 1)
    assert features[IMAGE_KEY].dtype == np.float32
    assert features[IMAGE_KEY].max() > 200  # raw pixels: scaling is the model's job
    assert labels.shape == (16,) and labels.dtype == np.int32
    assert not features[BAD_RECORDS_KEY].any()


def test_training_batches_shuffle_and_repeat_the_same_way_for_a_seed(digits_npz):
    digits, _ = npz.open_npz(digits_npz, 'image')
    saved = np.load(digits_npz, allow_pickle=False)
    hparams = dict(DIGITS, shuffle_buffer=100)  # smaller than a pass: still a permutation
    input_fn = dataset.make_input_fn(digits, ModeKeys.TRAIN, hparams, batch_size=200, seed=3)
    batches = batches_of(input_fn, 6)  # two passes over the 600 examples
    labels = np.concatenate([batch_labels for _, batch_labels in batches])
    images = np.concatenate([features[IMAGE_KEY] for features, _ in batches])
    assert len(labels) == 1200
    assert not np.array_equal(labels[:600], saved['y'])
    for one_pass in (slice(0, 600), slice(600, 1200)):  # each pass reads every example once
        assert sorted(image.tobytes() for image in images[one_pass].astype(np.uint8)) == sorted(
            image[..., None].tobytes() for image in saved['x'])
    again = np.concatenate([batch_labels for _, batch_labels in batches_of(input_fn, 6)])
    np.testing.assert_array_equal(labels, again)


def test_training_data_that_fits_is_cached_and_reads_the_same(digits_npz):
    digits, _ = npz.open_npz(digits_npz, 'image')
    cached = dict(DIGITS, shuffle_buffer=100, cache_train_mb=2)    # 600 x 3 KB fits in 2 MB
    assert dataset.fits_in_memory(digits.info, cached)
    assert not dataset.fits_in_memory(digits.info, dict(cached, cache_train_mb=0))
    assert not dataset.fits_in_memory(digits.info, dict(cached, height=280, width=280))
    # A held-out part's exact size is unknown: the whole's bounds it.
    training_part = specs.HeldOutPart(digits, evaluation=False)
    assert training_part.info.num_examples is None and dataset.fits_in_memory(training_part.info, cached)
    streams = [batches_of(dataset.make_input_fn(digits, ModeKeys.TRAIN, hparams, batch_size=200, seed=3), 9)
               for hparams in (cached, dict(cached, cache_train_mb=0))]
    for (features, labels), (features_again, labels_again) in zip(*streams):  # three passes
        np.testing.assert_array_equal(features[IMAGE_KEY], features_again[IMAGE_KEY])
        np.testing.assert_array_equal(labels, labels_again)


def test_eval_reads_every_example_once_in_order(digits_npz):
    digits, _ = npz.open_npz(digits_npz, 'image')
    batches = batches_of(dataset.make_input_fn(digits, ModeKeys.EVAL, DIGITS, batch_size=64))
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in batches]),
                                  np.load(digits_npz, allow_pickle=False)['y'])
    assert batches[-1][1].shape == (600 % 64,)


def test_clip_batches_are_padded_to_their_longest_clip(clips_npz):
    clips, _ = npz.open_npz(clips_npz, 'clip')
    lengths = np.load(clips_npz, allow_pickle=False)['lengths']
    batches = batches_of(dataset.make_input_fn(clips, ModeKeys.EVAL, CLIPS, batch_size=8))
    for index, (features, _) in enumerate(batches):
        expected_lengths = lengths[index * 8:(index + 1) * 8]
        frames = features[FRAMES_KEY]
        np.testing.assert_array_equal(features[LENGTH_KEY], expected_lengths)
        assert features[LENGTH_KEY].dtype == np.int32
        assert frames.shape == (len(expected_lengths), expected_lengths.max(), 32, 32, 1)
        for clip, length in zip(frames, expected_lengths):
            assert not clip[length:].any()
            assert clip[length - 1].any()


@pytest.mark.parametrize('policy', ['resize', 'pad', 'crop'])
def test_images_of_any_size_are_fitted_to_the_model_input(policy):
    rng = np.random.default_rng(0)
    wide = LabelledArrays(rng.integers(0, 256, (5, 40, 60, 3), dtype=np.uint8), np.arange(5))
    size = dict(DIGITS, resize=policy)
    [(features, _)] = batches_of(dataset.make_input_fn(wide, ModeKeys.EVAL, size, 5))
    assert features[IMAGE_KEY].shape == (5, 28, 28, 1)
    if policy == 'pad':  # 40x60 keeps its aspect: bands of padding above and below
        assert not features[IMAGE_KEY][:, 0].any()


def test_each_worker_of_a_cluster_trains_on_its_own_examples(digits_npz):
    digits, _ = npz.open_npz(digits_npz, 'image')
    seen = []
    for worker in range(3):
        shard = source.Shard(worker, 3)
        examples = digits.examples(1, 10, shard)
        seen.append({features[IMAGE_KEY].tobytes() for features, _ in examples.as_numpy_iterator()})
    assert sum(len(part) for part in seen) == 600
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_the_shard_follows_the_run_config_or_the_input_context(monkeypatch):
    context = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=2)
    assert dataset.training_shard(input_context=context) == source.Shard(2, 4)
    assert dataset.training_shard() == source.Shard(0, 1)
    cluster = {'chief': ['127.0.0.1:2220'], 'worker': ['127.0.0.1:2221', '127.0.0.1:2222'],
               'ps': ['127.0.0.1:2223']}
    for task, expected in ((('chief', 0), source.Shard(0, 3)), (('worker', 1), source.Shard(2, 3))):
        monkeypatch.setenv('TF_CONFIG', json.dumps(
            {'cluster': cluster, 'task': {'type': task[0], 'index': task[1]}}))
        assert dataset.training_shard(config=tf.estimator.RunConfig()) == expected
