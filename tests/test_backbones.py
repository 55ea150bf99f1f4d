"""Backbones (`backbone=small_cnn|resnet50|mobilenet_v2`): small_cnn's blocks compute
what Keras' conv, ReLU and pool layers do; each application trains and serves like
Estimator.predict; `backbone_weights` loads a Keras `.h5`; frozen stays exactly as
loaded, fine-tuned moves; mistakes are one line."""

import dataclasses
import os
from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf

from conftest import (TINY, held_out_arrays, run_cli, serve_each_in_one_fresh_process, train_on_a_few_examples,
                      train_without_evaluating)
from estimator_models.layers import backbones
from estimator_models.running import experiment
from estimator_models.serving import exporting
from input_fns.embedded import moving_glyphs

# cnn_lstm with each application at its smallest size. Eval reads BatchNorm's moving
# statistics: in 12 steps they follow the weights only at a low momentum.
APPLICATION = dict(TINY['cnn_lstm'], batch_size='8', backbone_batch_norm_momentum='0.5', height='32', width='32')
APPLICATION_STEPS = 12
# Steps of the frozen-backbone run: its loss falls while the backbone stays as loaded.
FROZEN_STEPS = 20


def keras_small_cnn(filters, batch_norm):
    """small_cnn as plain Keras layers in the textbook order: conv, [BatchNorm,] ReLU, pool."""
    layers = []
    for channels in filters:
        if batch_norm:
            layers += [tf.keras.layers.Conv2D(channels, 3, padding='same', use_bias=False),
                       tf.keras.layers.BatchNormalization(), tf.keras.layers.ReLU()]
        else:
            layers.append(tf.keras.layers.Conv2D(channels, 3, padding='same', activation='relu'))
        layers.append(tf.keras.layers.MaxPool2D(2))
    return tf.keras.Sequential(layers)


@pytest.mark.parametrize('batch_norm', [False, True])
def test_small_cnn_gives_keras_layers_values_and_gradients(batch_norm):
    images = tf.constant(np.random.default_rng(0).random((4, 15, 14, 2)), tf.float32)
    ours, keras = backbones.small_cnn((8, 16), batch_norm=batch_norm), keras_small_cnn((8, 16), batch_norm)
    ours(images), keras(images)
    # Biases and BatchNorm offsets away from zero, so the pool meets both signs.
    keras.set_weights([np.random.default_rng(1).normal(size=weight.shape) for weight in keras.get_weights()])
    ours.set_weights(keras.get_weights())
    results = []
    for network in (ours, keras):
        with tf.GradientTape() as tape:
            tape.watch(images)
            feature_map = network(images, training=True)                      # [4, 3, 3, 16]
            loss = tf.reduce_sum(feature_map * tf.range(16, dtype=tf.float32))
        results.append([feature_map, *tape.gradient(loss, [images, *network.trainable_weights])])
    assert results[0][0].shape == (4, 3, 3, 16)
    assert 0 < np.mean(results[0][0].numpy() > 0) < 1
    for ours_value, keras_value in zip(*results):
        np.testing.assert_allclose(ours_value, keras_value, rtol=1e-5, atol=1e-5)


def test_small_cnn_kernel_gradients_wait_for_the_inputs_gradients():
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 1])
        network = backbones.small_cnn((8, 16, 16))
        tf.gradients(tf.reduce_sum(network(images)), network.trainable_weights)
        operations = tf.compat.v1.get_default_graph().get_operations()
    waits = {op.name.split('/')[2]: [control.type for control in op.control_inputs]
             for op in operations if op.type == 'Conv2DBackpropFilter'}
    # The first convolution reads the images, which need no gradient: nothing to wait for.
    assert waits == {'cnn_conv_0': [], 'cnn_conv_1': ['Conv2DBackpropInput'],
                     'cnn_conv_2': ['Conv2DBackpropInput']}


def write_known_weights(path, seed=3):
    """Saves a MobileNetV2 (no top, 32x32) with seeded weights as Keras' .h5; returns
    {variable name without ':0': value}. Variances stay positive, as real ones are."""
    rng = np.random.default_rng(seed)
    network = tf.keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    values = [np.abs(rng.normal(1.0, 0.2, weight.shape)) if 'variance' in weight.name
              else rng.normal(0.0, 0.1, weight.shape) for weight in network.weights]
    network.set_weights([value.astype(np.float32) for value in values])
    network.save_weights(path)
    return {weight.name[:-2]: weight.numpy() for weight in network.weights}


def checkpoint_at(model_dir, step):
    return tf.train.load_checkpoint(os.path.join(model_dir, f'model.ckpt-{step}'))


def backbone_differences(reader, known):
    """Names of the backbone variables whose checkpointed values differ from `known`."""
    return [name for name, value in known.items()
            if not np.array_equal(reader.get_tensor(f'mobilenet_v2/{name}'), value)]


@pytest.fixture(scope='module')
def known_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('weights') / 'mobilenet_v2_no_top.h5')
    return path, write_known_weights(path)


@pytest.fixture(scope='module')
def short_clips(tmp_path_factory):
    """200 moving-glyph clips of 2 or 3 frames as .npz: MobileNetV2 runs on every frame, and
    what the tests below check does not depend on how many there are."""
    frames, lengths, labels = moving_glyphs.render_clips(200, seed=7, min_frames=2, max_frames=3)
    path = str(tmp_path_factory.mktemp('data') / 'short_clips.npz')
    np.savez(path, x=frames, y=labels, lengths=lengths)
    return path


def from_weights(weights_path, trainable):
    """temporal_cnn_lstm's overrides for a mobilenet_v2 backbone that starts from the .h5."""
    return dict(TINY['temporal_cnn_lstm'], backbone='mobilenet_v2', backbone_weights=weights_path,
                backbone_trainable=str(trainable).lower(), batch_size='8')


class Trained(NamedTuple):
    """A run trained a few steps on 16 examples: its loss after the first step and after
    the last, and for 8 held-out examples the probabilities of Estimator.predict and of
    its SavedModel served by a fresh process."""
    model_dir: str
    loss_before: float
    loss_after: float
    predicted: np.ndarray
    served: np.ndarray


def serving_examples(run):
    """8 held-out examples of the run, as its SavedModel takes them: the 28x28 digits padded
    to an application's 32x32 (serving_default reads them as they are), and clips with
    their lengths."""
    examples = held_out_arrays(run, 8)
    if run.module.KIND == 'clip':
        return examples, (
            'predict_with_lengths', {'frames': examples.inputs.astype(np.float32),
                                     'lengths': examples.lengths.astype(np.int32)})
    padded = np.pad(examples.inputs, [(0, 0), (2, 2), (2, 2)] + [(0, 0)] * (examples.inputs.ndim - 3))
    return dataclasses.replace(examples, inputs=padded), ('serving_default', {'image': padded.astype(np.float32)})


@pytest.fixture(scope='module')
def trained(digits_npz, short_clips, known_weights, tmp_path_factory):
    """{case: Trained}: cnn_lstm with each application ('mobilenet_v2', 'resnet50'), and
    temporal_cnn_lstm with a frozen mobilenet_v2 that starts from the known weights
    ('frozen'). One fresh process serves every export, as a server that only loads them."""
    runs = {backbone: ('cnn_lstm', digits_npz, dict(APPLICATION, backbone=backbone), APPLICATION_STEPS)
            for backbone in ('mobilenet_v2', 'resnet50')}
    runs['frozen'] = ('temporal_cnn_lstm', short_clips, from_weights(known_weights[0], trainable=False),
                      FROZEN_STEPS)
    results, requests = {}, {}
    for case, (model, data, overrides, steps) in runs.items():
        model_dir = str(tmp_path_factory.mktemp(case))
        run, before, after = train_on_a_few_examples(model, data, model_dir, steps=steps, overrides=overrides,
                                                     num_examples=16)
        export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                              os.path.join(model_dir, 'export'))
        examples, (signature, inputs) = serving_examples(run)
        predicted = np.stack([row['probabilities'] for row in experiment.predict(run, examples)])
        results[case] = (model_dir, before, after, predicted)
        requests[case] = (export, signature, inputs)
    served = serve_each_in_one_fresh_process(requests, tmp_path_factory.mktemp('served'))
    return {case: Trained(*results[case], served[case]['probabilities']) for case in runs}


# temporal_cnn_lstm with mobilenet_v2 is served in the frozen-backbone test below.
@pytest.mark.parametrize('backbone', ['mobilenet_v2', 'resnet50'])
def test_each_backbone_trains_and_serves_like_estimator_predict(backbone, trained):
    _, before, after, predicted, served = trained[backbone]
    assert after < before
    np.testing.assert_allclose(served, predicted, atol=1e-5)


def test_frozen_backbone_keeps_the_loaded_weights_and_statistics_bit_for_bit(known_weights, trained):
    _, known = known_weights
    model_dir, before, after, predicted, served = trained['frozen']
    assert after < before
    assert any('moving_variance' in name for name in known)
    assert backbone_differences(checkpoint_at(model_dir, FROZEN_STEPS), known) == []
    np.testing.assert_allclose(served, predicted, atol=1e-5)


def test_fine_tuned_backbone_starts_from_the_file_and_moves(known_weights, short_clips, tmp_path):
    path, known = known_weights
    model_dir = str(tmp_path / 'fine_tuned')
    # No evaluation, and two steps: each one already moves the kernels and the BatchNorm moving means.
    train_without_evaluating('temporal_cnn_lstm', short_clips, model_dir, from_weights(path, trainable=True),
                             steps=2, num_examples=16)
    assert backbone_differences(checkpoint_at(model_dir, 0), known) == []
    changed = backbone_differences(checkpoint_at(model_dir, 2), known)
    assert any(name.endswith('kernel') for name in changed)
    assert any(name.endswith('moving_mean') for name in changed)


def small_cnn_kernel_moves(digits_npz, model_dir, **overrides):
    """How far cnn_lstm's first small_cnn kernel moves in 10 steps: the largest change."""
    train_without_evaluating('cnn_lstm', digits_npz, model_dir, dict(TINY['cnn_lstm'], **overrides), steps=10)
    kernels = [checkpoint_at(model_dir, step).get_tensor('cnn/cnn_conv_0/kernel') for step in (0, 10)]
    return np.abs(kernels[1] - kernels[0]).max()


def test_backbone_rate_scale_and_freezing_apply_to_small_cnn_too(digits_npz, tmp_path):
    full = small_cnn_kernel_moves(digits_npz, str(tmp_path / 'full'))
    scaled = small_cnn_kernel_moves(digits_npz, str(tmp_path / 'scaled'), backbone_learning_rate_scale='0.01')
    frozen = small_cnn_kernel_moves(digits_npz, str(tmp_path / 'frozen'), backbone_trainable='false')
    assert 0 < scaled < full / 10
    assert frozen == 0


def refusal(tmp_path, *hparams, model='cnn_lstm', data=None):
    result = run_cli('train', f'--model={model}', f'--model_dir={tmp_path / "run"}', '--train_steps=2',
                     f'--hparams={",".join(hparams)}', *([f'--data={data}'] if data else []), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / 'run' / 'model.ckpt-0.index')
    return lines[0]


def test_mistakes_are_one_line(tmp_path, short_clips, known_weights):
    assert 'at least 32' in refusal(tmp_path, 'backbone=mobilenet_v2', 'height=28', 'width=28')
    assert 'No such file' in refusal(tmp_path, 'backbone=resnet50', 'backbone_weights=/nonexistent.h5')
    not_hdf5 = tmp_path / 'weights.h5'
    not_hdf5.write_text('not weights')
    assert 'not an HDF5' in refusal(tmp_path, 'backbone=resnet50', f'backbone_weights={not_hdf5}')
    assert '--warm_start_from' in refusal(tmp_path, f'backbone_weights={known_weights[0]}')
    # MobileNetV2's weights do not fit ResNet50: found when the run starts, before any step.
    message = refusal(tmp_path, 'backbone=resnet50', f'backbone_weights={known_weights[0]}',
                      'rnn_units=8', model='temporal_cnn_lstm', data=short_clips)
    assert 'does not fit backbone=resnet50' in message
