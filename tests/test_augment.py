"""Training-time augmentation (the `augment` hparam): random warps of training examples
only, one per clip, reproducible from the seed."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, run_cli
from estimator_models import cnn_lstm, pixel_row_lstm
from estimator_models.errors import UserError
from estimator_models.running import hparams as hparams_lib
from input_fns import FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, augment, dataset, embedded
from input_fns.embedded import glyphs, moving_glyphs
from input_fns.sources import npz
from input_fns.sources.arrays import LabelledArrays
from test_dataset import CLIPS, DIGITS, batches_of

ModeKeys = tf.estimator.ModeKeys
PROJECTIVE_OP = 'ImageProjectiveTransformV3'
# Op types that only the warps bring into an input pipeline's graph.
WARP_OPS = {PROJECTIVE_OP, 'StatelessRandomUniformV2', 'Einsum'}


def pixels_key(kind):
    return FRAMES_KEY if kind == 'clip' else IMAGE_KEY


@pytest.fixture(scope='module')
def sources(digits_npz, clips_npz):
    """{'image': (source, hparams), 'clip': (source, hparams)} read from .npz files."""
    return {'image': (npz.open_npz(digits_npz, 'image')[0], DIGITS),
            'clip': (npz.open_npz(clips_npz, 'clip')[0], CLIPS)}


def training_batches(data, hparams, augmentation, count=2, seed=3, batch_size=16):
    hparams = dict(hparams, augment=augmentation)
    return batches_of(dataset.make_input_fn(data, ModeKeys.TRAIN, hparams, batch_size, seed=seed), count)


def ink_centre(images):
    """float [N, 2] (y, x) centre of mass of the ink of images [N, H, W, 1]."""
    ink = images[..., 0]
    rows, columns = np.mgrid[:ink.shape[1], :ink.shape[2]]
    total = ink.sum(axis=(1, 2))
    return np.stack([(ink * rows).sum(axis=(1, 2)) / total, (ink * columns).sum(axis=(1, 2)) / total], 1)


def op_types(graph):
    """Every op type in `graph`, those of its functions (tf.data's map functions) included."""
    graph_def = graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types


@pytest.mark.parametrize('kind', ['image', 'clip'])
def test_eval_batches_are_bit_identical_whatever_the_augmentation(sources, kind):
    data, hparams = sources[kind]
    plain, strong = (batches_of(dataset.make_input_fn(data, ModeKeys.EVAL, dict(hparams, augment=name), 64))
                     for name in ('none', 'strong'))
    assert len(plain) == len(strong) > 1
    for (features, labels), (features_strong, labels_strong) in zip(plain, strong):
        assert features[pixels_key(kind)].tobytes() == features_strong[pixels_key(kind)].tobytes()
        np.testing.assert_array_equal(labels, labels_strong)


@pytest.mark.parametrize('augmentation', ['light', 'strong'])
@pytest.mark.parametrize('kind', ['image', 'clip'])
def test_training_warps_pixels_but_keeps_labels_lengths_and_range(sources, kind, augmentation):
    data, hparams = sources[kind]
    key = pixels_key(kind)
    for (plain, labels), (warped, warped_labels) in zip(training_batches(data, hparams, 'none'),
                                                        training_batches(data, hparams, augmentation)):
        np.testing.assert_array_equal(labels, warped_labels)  # the same examples, in the same order
        assert warped[key].shape == plain[key].shape and warped[key].dtype == np.float32
        assert 0.0 <= warped[key].min() and warped[key].max() <= 255.0
        changed = np.abs(warped[key] - plain[key]).reshape(len(labels), -1).max(axis=1) > 1.0
        assert changed.all()
        if kind == 'clip':
            np.testing.assert_array_equal(plain[LENGTH_KEY], warped[LENGTH_KEY])
            for clip, length in zip(warped[key], warped[LENGTH_KEY]):
                assert not clip[length:].any()  # padding stays zero


def test_a_clip_gets_one_warp_for_all_its_frames():
    images, labels = glyphs.render_digits(8, seed=5)
    lengths = np.arange(3, 11, dtype=np.int32)
    still_clips = np.repeat(images[:, np.newaxis, :, :, np.newaxis], lengths.max(), axis=1)
    data = LabelledArrays(still_clips, labels, lengths)
    hparams = dict(DIGITS, augment='strong', shuffle_buffer=1)
    input_fn = dataset.make_input_fn(data, ModeKeys.TRAIN, hparams, 8, seed=1)
    [(features, warped_labels)] = batches_of(input_fn, 1)
    np.testing.assert_array_equal(warped_labels, labels)
    for clip, length, image in zip(features[FRAMES_KEY], features[LENGTH_KEY], images):
        assert np.abs(clip[0, ..., 0] - image).max() > 1.0
        np.testing.assert_allclose(clip[:length], np.broadcast_to(clip[0], clip[:length].shape), atol=1e-5)


@pytest.mark.parametrize('augmentation', ['light', 'strong'])
def test_warping_a_clip_warps_each_frame_as_if_alone(augmentation):
    frames, _, _ = moving_glyphs.render_clips(2, seed=2, min_frames=6, max_frames=6)
    moving = tf.constant(frames[..., np.newaxis], tf.float32)  # [2, 6, 32, 32, 1], glyphs in motion
    warps = augment.random_warps(augment.PRESETS[augmentation], 2, 32, 32, tf.constant([4, 2], tf.int64))
    warped = augment.warp_frames(moving, warps).numpy()
    assert np.abs(warped - moving.numpy()).max() > 1.0
    for clip in range(2):
        warp = augment.Warp(*(None if part is None else part[clip:clip + 1] for part in warps))
        for index in range(6):
            alone = augment.warp_frames(moving[clip:clip + 1, index:index + 1], warp).numpy()
            np.testing.assert_allclose(warped[clip:clip + 1, index:index + 1], alone, atol=1e-5)


def test_an_identity_strength_changes_nothing_and_a_shift_moves_the_ink():
    images = glyphs.render_digits(4, seed=9)[0][..., np.newaxis].astype(np.float32)
    frames = tf.constant(images[:, np.newaxis])  # [4, 1, 28, 28, 1]: clips of one frame
    seed = tf.constant([1, 2], tf.int64)
    identity = augment.Strength(shift=0.0, rotation=0.0, scale=(1.0, 1.0), shear=0.0)
    warps = augment.random_warps(identity, 4, 28, 28, seed)
    np.testing.assert_array_equal(augment.warp_frames(frames, warps).numpy(), frames.numpy())
    shift_only = augment.Strength(shift=3.0, rotation=0.0, scale=(1.0, 1.0), shear=0.0)
    warps = augment.random_warps(shift_only, 4, 28, 28, seed)
    # The map reads input x + a2, y + b2: the ink moves by (-b2, -a2).
    shifts = warps.projective.numpy()[:, [5, 2]]
    assert 0.1 < np.abs(shifts).max() and np.abs(shifts).max() <= 3.0
    moved = ink_centre(augment.warp_frames(frames, warps).numpy()[:, 0]) - ink_centre(images)
    np.testing.assert_allclose(moved, -shifts, atol=0.3)  # ink near a border would be cut


def test_the_elastic_sampler_without_displacement_agrees_with_the_projective_op():
    frames = tf.constant(np.random.default_rng(0).uniform(0, 255, (8, 3, 28, 28, 3)), tf.float32)
    warps = augment.random_warps(augment.PRESETS['strong'], 8, 28, 28, tf.constant([7, 0], tf.int64))
    by_op = augment.warp_frames(frames, augment.Warp(warps.projective, None))
    sampled = augment.warp_frames(frames, augment.Warp(warps.projective, tf.zeros_like(warps.displacement)))
    np.testing.assert_allclose(sampled.numpy(), by_op.numpy(), atol=1e-3)


def test_strong_warps_keep_the_ink_near_where_it_was(sources):
    data, hparams = sources['image']
    [(plain, _)] = training_batches(data, hparams, 'none', count=1, batch_size=128)
    [(warped, _)] = training_batches(data, hparams, 'strong', count=1, batch_size=128)
    ink_ratio = warped[IMAGE_KEY].sum(axis=(1, 2, 3)) / plain[IMAGE_KEY].sum(axis=(1, 2, 3))
    # Scaling alone changes the ink by 0.85**2 .. 1.15**2; the elastic field by up to ~25%.
    assert ink_ratio.min() > 0.5 and ink_ratio.max() < 1.6
    moved = np.linalg.norm(ink_centre(warped[IMAGE_KEY]) - ink_centre(plain[IMAGE_KEY]), axis=1)
    # At most 3 px of shift per axis (4.2 px), plus rotation, scale and shear about the
    # centre of a glyph whose own centre may lie a few pixels off it, plus elastic noise.
    assert moved.max() < 7.0 and moved.mean() > 1.0


def test_strong_warps_keep_the_ink_but_for_their_change_of_area():
    images = glyphs.render_digits(64, seed=11)[0][..., np.newaxis].astype(np.float32)
    warps = augment.random_warps(augment.PRESETS['strong'], 64, 28, 28, tf.constant([5, 3], tf.int64))
    warped = augment.warp_frames(tf.constant(images[:, np.newaxis]), warps).numpy()[:, 0]
    a0, a1, _, b0, b1 = warps.projective.numpy()[:, :5].T
    area_ratio = 1.0 / (a0 * b1 - a1 * b0)  # of the affine part; the map is output -> input
    ink_ratio = warped.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    assert (0.65 < ink_ratio / area_ratio).all() and (ink_ratio / area_ratio < 1.4).all()


@pytest.mark.parametrize('kind', ['image', 'clip'])
def test_the_same_seed_warps_the_same_way_and_another_seed_differently(sources, kind):
    data, hparams = sources[kind]
    key = pixels_key(kind)
    # No shuffling: only the warps could differ between seeds.
    hparams = dict(hparams, shuffle_buffer=1)
    first, again, other = (training_batches(data, hparams, 'strong', seed=seed) for seed in (3, 3, 4))
    for (features, labels), (features_again, _), (features_other, labels_other) in zip(first, again, other):
        assert features[key].tobytes() == features_again[key].tobytes()
        np.testing.assert_array_equal(labels, labels_other)
        assert not np.array_equal(features[key], features_other[key])


def test_every_pass_over_the_cached_data_gets_fresh_warps(sources):
    data, hparams = sources['image']
    hparams = dict(hparams, shuffle_buffer=1, cache_train_mb=2)  # read in order, cached
    assert dataset.fits_in_memory(data.info, hparams)
    [(first_pass, labels), (second_pass, labels_again)] = training_batches(
        data, hparams, 'light', count=2, batch_size=600)
    np.testing.assert_array_equal(labels, labels_again)
    changed = np.abs(first_pass[IMAGE_KEY] - second_pass[IMAGE_KEY]).reshape(600, -1).max(axis=1) > 1.0
    assert changed.mean() > 0.95


@pytest.mark.parametrize('augmentation, built', [
    ('none', set()),
    ('light', {PROJECTIVE_OP, 'StatelessRandomUniformV2'}),
    ('strong', {'StatelessRandomUniformV2', 'Einsum'}),  # Einsum: the elastic field's blur
])
def test_only_augmented_training_builds_warping_ops(sources, augmentation, built):
    data, hparams = sources['clip']
    hparams = dict(hparams, augment=augmentation)
    with tf.Graph().as_default() as graph:
        dataset.make_input_fn(data, ModeKeys.TRAIN, hparams, 8, seed=1)()
    assert op_types(graph) & WARP_OPS == built
    with tf.Graph().as_default() as graph:
        dataset.make_input_fn(data, ModeKeys.EVAL, hparams, 8)()
    assert not op_types(graph) & WARP_OPS


def test_augment_is_a_checked_hparam_that_a_resumed_run_may_change():
    saved = hparams_lib.resolve(pixel_row_lstm, {}, data_shape=(28, 28, 1, 10))
    assert saved['augment'] == 'light'                                    # the model's measured default
    resumed = hparams_lib.resolve(pixel_row_lstm, {'augment': 'strong'}, saved=saved)
    assert resumed['augment'] == 'strong'
    # A run saved before the default changed keeps what it trained with.
    assert hparams_lib.resolve(pixel_row_lstm, {}, saved=dict(saved, augment='none'))['augment'] == 'none'
    # Warps would move an image under its boxes: reading boxes turns the default off.
    boxes = hparams_lib.resolve(cnn_lstm, {'sequence': 'regions', 'regions': 'boxes'}, data_shape=(28, 28, 1, 10))
    assert boxes['augment'] == 'none'
    with pytest.raises(UserError, match='augment=.heavy. must be one of none, light, strong'):
        hparams_lib.resolve(pixel_row_lstm, {'augment': 'heavy'}, data_shape=(28, 28, 1, 10))
    with pytest.raises(ValueError, match='must be one of'):
        augment.augmented(tf.data.Dataset.range(3), 'image', 'heavy')


def test_bin_train_with_strong_augmentation_trains_to_a_finite_loss(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    embedded.open_embedded('glyph_digits', data_dir, 'small')
    model_dir = str(tmp_path_factory.mktemp('runs') / 'augmented')
    tiny = ','.join(f'{key}={value}' for key, value in TINY['pixel_row_lstm'].items())
    # rnn_implementation=keras: no fused kernel to build (a minute) in this test session.
    result = run_cli('train', '--model=pixel_row_lstm', '--data=tfds:glyph_digits/small',
                     f'--data_dir={data_dir}', f'--model_dir={model_dir}', '--train_steps=20',
                     '--checkpoint_every=20', f'--hparams={tiny},rnn_implementation=keras,augment=strong')
    losses = [float(loss) for loss in re.findall(r'^step \d+/20\s+loss\s+(\S+)', result.stdout, re.M)]
    assert losses and np.isfinite(losses).all(), result.stdout[-2000:]
    with open(os.path.join(model_dir, 'hparams.json')) as stream:
        assert json.load(stream)['hparams']['augment'] == 'strong'
