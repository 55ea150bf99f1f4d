"""Backbones (`backbone=small_cnn|resnet50|mobilenet_v2`): each trains and serves like
Estimator.predict; `backbone_weights` loads a Keras `.h5`; frozen stays exactly as
loaded, fine-tuned moves; mistakes are one line."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, held_out_arrays, run_bin, served_in_a_fresh_process, train_on_a_few_examples
from estimator_models.running import experiment
from estimator_models.serving import exporting

SIZE_32 = {'height': '32', 'width': '32'}

def assert_served_like_estimator_predict(run, model_dir, tmp_path):
    export = exporting.export_saved_model(run, tf.train.latest_checkpoint(model_dir),
                                          os.path.join(model_dir, 'export'))
    examples = held_out_arrays(run, 8)
    if run.module.KIND == 'image':
        # The 28x28 digits, padded to the model's 32x32, so serving_default takes them as they are.
        margins = [(0, 0), (2, 2), (2, 2)] + [(0, 0)] * (examples.inputs.ndim - 3)
        examples = dataclasses.replace(examples, inputs=np.pad(examples.inputs, margins))
    predicted = np.stack([row['probabilities'] for row in experiment.predict(run, examples)])
    np.testing.assert_allclose(served_in_a_fresh_process(export, run, examples, tmp_path)['probabilities'], predicted,
                               atol=1e-5)


# temporal_cnn_lstm with mobilenet_v2 is served in the frozen-backbone test below.
@pytest.mark.parametrize('backbone', ['mobilenet_v2', 'resnet50'])
def test_each_backbone_trains_and_serves_like_estimator_predict(backbone, digits_npz, tmp_path):
    model_dir = str(tmp_path / 'run')
    # Eval reads BatchNorm's moving statistics: in 25 steps they follow the weights only
    # at a low momentum.
    overrides = dict(TINY['cnn_lstm'], backbone=backbone, batch_size='8', backbone_batch_norm_momentum='0.5',
                     **SIZE_32)
    run, before, after = train_on_a_few_examples('cnn_lstm', digits_npz, model_dir, steps=25,
                                                 overrides=overrides, num_examples=16)
    assert after < before
    assert_served_like_estimator_predict(run, model_dir, tmp_path)


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


def train_from_weights(clips_npz, model_dir, weights_path, trainable):
    overrides = dict(TINY['temporal_cnn_lstm'], backbone='mobilenet_v2', backbone_weights=weights_path,
                     backbone_trainable=str(trainable).lower(), batch_size='8')
    return train_on_a_few_examples('temporal_cnn_lstm', clips_npz, model_dir, steps=20,
                                   overrides=overrides, num_examples=16)


def test_frozen_backbone_keeps_the_loaded_weights_and_statistics_bit_for_bit(known_weights, clips_npz,
                                                                             tmp_path):
    path, known = known_weights
    model_dir = str(tmp_path / 'frozen')
    run, before, after = train_from_weights(clips_npz, model_dir, path, trainable=False)
    assert after < before
    assert any('moving_variance' in name for name in known)
    assert backbone_differences(checkpoint_at(model_dir, 20), known) == []
    assert_served_like_estimator_predict(run, model_dir, tmp_path)


def test_fine_tuned_backbone_starts_from_the_file_and_moves(known_weights, clips_npz, tmp_path):
    path, known = known_weights
    model_dir = str(tmp_path / 'fine_tuned')
    train_from_weights(clips_npz, model_dir, path, trainable=True)
    assert backbone_differences(checkpoint_at(model_dir, 0), known) == []
    changed = backbone_differences(checkpoint_at(model_dir, 20), known)
    assert any(name.endswith('kernel') for name in changed)
    assert any(name.endswith('moving_mean') for name in changed)


def small_cnn_kernel_moves(digits_npz, model_dir, **overrides):
    """How far cnn_lstm's first small_cnn kernel moves in 10 steps: the largest change."""
    run, train_source, _ = experiment.prepare_training(
        'cnn_lstm', model_dir, digits_npz, None, dict(TINY['cnn_lstm'], **overrides))
    estimator = experiment.make_estimator(run, experiment.run_config(model_dir, seed=1, checkpoint_every=10),
                                          train_steps=10)
    estimator.train(run.input_fn(train_source, tf.estimator.ModeKeys.TRAIN, seed=1), max_steps=10)
    kernels = [checkpoint_at(model_dir, step).get_tensor('cnn/cnn_conv_0/kernel') for step in (0, 10)]
    return np.abs(kernels[1] - kernels[0]).max()


def test_backbone_rate_scale_and_freezing_apply_to_small_cnn_too(digits_npz, tmp_path):
    full = small_cnn_kernel_moves(digits_npz, str(tmp_path / 'full'))
    scaled = small_cnn_kernel_moves(digits_npz, str(tmp_path / 'scaled'), backbone_learning_rate_scale='0.01')
    frozen = small_cnn_kernel_moves(digits_npz, str(tmp_path / 'frozen'), backbone_trainable='false')
    assert 0 < scaled < full / 10
    assert frozen == 0


def refusal(tmp_path, *hparams, model='cnn_lstm', data=None):
    result = run_bin('train', f'--model={model}', f'--model_dir={tmp_path / "run"}', '--train_steps=2',
                     f'--hparams={",".join(hparams)}', *([f'--data={data}'] if data else []), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / 'run' / 'model.ckpt-0.index')
    return lines[0]


def test_mistakes_are_one_line(tmp_path, clips_npz, known_weights):
    assert 'at least 32' in refusal(tmp_path, 'backbone=mobilenet_v2', 'height=28', 'width=28')
    assert 'No such file' in refusal(tmp_path, 'backbone=resnet50', 'backbone_weights=/nonexistent.h5')
    not_hdf5 = tmp_path / 'weights.h5'
    not_hdf5.write_text('not weights')
    assert 'not an HDF5' in refusal(tmp_path, 'backbone=resnet50', f'backbone_weights={not_hdf5}')
    assert '--warm_start_from' in refusal(tmp_path, f'backbone_weights={known_weights[0]}')
    # MobileNetV2's weights do not fit ResNet50: found when the run starts, before any step.
    message = refusal(tmp_path, 'backbone=resnet50', f'backbone_weights={known_weights[0]}',
                      'rnn_units=8', model='temporal_cnn_lstm', data=clips_npz)
    assert 'does not fit backbone=resnet50' in message
