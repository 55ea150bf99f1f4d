"""Keras twins of the project's models (bin/benchmark --train): plain tf.keras models of
the same architecture and parameters, written as someone writing the model in Keras
would, and the work of a training example through one, counted from its layers.
"""

import contextlib

import numpy as np
import tensorflow as tf

from estimator_models.errors import UserError
from input_fns import FRAMES_KEY, IMAGE_KEY, LENGTH_KEY

# A training step is a forward pass, then a backward pass that computes the gradients
# of both the activations and the weights: twice the forward's multiply-adds.
TRAINING_FLOPS_PER_FORWARD_FLOP = 3
# The Keras mixed-precision policies a twin is built under.
FLOAT32 = 'float32'
MIXED_BFLOAT16 = 'mixed_bfloat16'


def keras_twin(model_name, hparams, policy=FLOAT32):
    """An uncompiled tf.keras.Model with the architecture and parameters of the project's
    `model_name` at resolved `hparams`, its layers built under the mixed-precision
    `policy` (FLOAT32 or MIXED_BFLOAT16: computing in bfloat16 on float32 variables). The
    logits layer is float32 under either, as the Keras mixed-precision guide has it, so
    that the loss is float32. The global policy is restored when it returns.

    Inputs are raw uint8 pixels keyed as the project's features: IMAGE_KEY [B, H, W, C],
    or FRAMES_KEY [B, T, H, W, C] with LENGTH_KEY int32 [B]; the output is logits [B, K].
    """
    builders = {'pixel_row_lstm': _pixel_row_twin, 'cnn_lstm': _cnn_lstm_twin,
                'temporal_cnn_lstm': _temporal_twin}
    if model_name not in builders:
        raise UserError(f'bin/benchmark --train has a Keras twin of {", ".join(builders)} only, '
                        f'not of {model_name}')
    with _global_policy(policy):
        inputs, sequence, lengths = builders[model_name](hparams)
        final = _recurrent_stack(sequence, hparams, lengths)                    # [B, U]
        logits = tf.keras.layers.Dense(hparams['num_classes'], name='logits', dtype=FLOAT32)(final)
        return tf.keras.Model(inputs, logits, name=f'{model_name}_twin')


@contextlib.contextmanager
def _global_policy(policy):
    """Layers made inside take `policy`; the global policy before is restored after."""
    before = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(before)


def _image_input(hparams):
    """(uint8 input [B, H, W, C], the same as float32 in 0..1)."""
    image = tf.keras.Input((hparams['height'], hparams['width'], hparams['channels']),
                           dtype=tf.uint8, name=IMAGE_KEY)
    return image, tf.keras.layers.Rescaling(1 / 255)(image)


def _pixel_row_twin(hparams):
    image, pixels = _image_input(hparams)
    return image, _as_sequence(pixels, hparams['scan']), None


def _cnn_lstm_twin(hparams):
    image, pixels = _image_input(hparams)
    feature_map = _cnn_blocks(pixels, hparams['cnn_filters'], hparams['cnn_batch_norm'])
    return image, _as_sequence(feature_map, hparams['sequence']), None


def _temporal_twin(hparams):
    frame_shape = (hparams['height'], hparams['width'], hparams['channels'])
    frames = tf.keras.Input((None,) + frame_shape, dtype=tf.uint8, name=FRAMES_KEY)
    lengths = tf.keras.Input((), dtype=tf.int32, name=LENGTH_KEY)
    pixels, true_lengths = tf.keras.layers.Rescaling(1 / 255)(frames), lengths
    if hparams['max_frames']:
        pixels = pixels[:, :hparams['max_frames']]
        true_lengths = tf.minimum(lengths, hparams['max_frames'])
    if hparams['frame_differences']:
        previous = tf.concat([pixels[:, :1], pixels[:, :-1]], axis=1)   # the first frame's is 0
        pixels = tf.concat([pixels, pixels - previous], axis=-1)        # [B, T, H, W, 2C]
    per_frame = tf.keras.layers.TimeDistributed(
        _frame_network(pixels.shape[2:], hparams), name='per_frame')(pixels)  # [B, T, D]
    return [frames, lengths], per_frame, true_lengths


def _frame_network(frame_shape, hparams):
    """One frame [H, W, C'] -> its feature vector [D]: the CNN, flattened, then dense."""
    frame = tf.keras.Input(frame_shape)
    flat = tf.keras.layers.Flatten()(_cnn_blocks(frame, hparams['cnn_filters'], hparams['cnn_batch_norm']))
    features = tf.keras.layers.Dense(hparams['frame_features'], activation='relu')(flat)
    return tf.keras.Model(frame, features, name='frame_network')


def _cnn_blocks(images, filters, batch_norm=False):
    """[N, H, W, C] -> [N, H / 2^k, W / 2^k, filters[-1]]: 3x3 conv + ReLU, 2x2 max-pool;
    with `batch_norm` (cnn_batch_norm), BatchNorm between the bias-free conv and the ReLU."""
    for channels in filters:
        if batch_norm:
            images = tf.keras.layers.Conv2D(channels, 3, padding='same', use_bias=False)(images)
            images = tf.keras.layers.ReLU()(tf.keras.layers.BatchNormalization()(images))
        else:
            images = tf.keras.layers.Conv2D(channels, 3, padding='same', activation='relu')(images)
        images = tf.keras.layers.MaxPool2D(2)(images)
    return images


def _as_sequence(feature_map, how):
    """[B, H, W, C] -> [B, T, F], read as the project's sequencing.SEQUENCERS[how] reads it."""
    _, height, width, channels = feature_map.shape
    if how == 'rows':
        return tf.keras.layers.Reshape((height, width * channels))(feature_map)
    if how == 'columns':
        columns = tf.keras.layers.Permute((2, 1, 3))(feature_map)
        return tf.keras.layers.Reshape((width, height * channels))(columns)
    if how == 'flatten':
        return tf.keras.layers.Reshape((height * width, channels))(feature_map)
    if how == 'pooled':
        pooled = tf.keras.layers.GlobalAveragePooling2D()(feature_map)
        return tf.keras.layers.RepeatVector(height)(pooled)
    raise UserError(f'the Keras twin cannot read a feature map as {how!r}')


def _recurrent_stack(sequence, hparams, lengths=None):
    """[B, T, F] -> [B, U] (x2 if bidirectional), masked past `lengths` [B] if given."""
    mask = None if lengths is None else tf.sequence_mask(lengths, maxlen=tf.shape(sequence)[1])
    outputs = sequence
    if hparams['input_dropout']:
        outputs = tf.keras.layers.Dropout(hparams['input_dropout'])(outputs)
    for index in range(hparams['rnn_layers']):
        return_sequences = index < hparams['rnn_layers'] - 1
        if hparams['cell'] == 'gru':
            layer = tf.keras.layers.GRU(hparams['rnn_units'], reset_after=hparams['gru_reset_after'],
                                        return_sequences=return_sequences)
        else:
            layer = tf.keras.layers.LSTM(hparams['rnn_units'], return_sequences=return_sequences)
        if hparams['bidirectional']:
            layer = tf.keras.layers.Bidirectional(layer)
        outputs = layer(outputs, mask=mask)
        if hparams['dropout']:
            outputs = tf.keras.layers.Dropout(hparams['dropout'])(outputs)
    return outputs


def trainable_parameter_count(model):
    """Trainable parameters of a Keras model (BatchNorm's moving statistics are not)."""
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def flops_per_example(model, frames=None):
    """FLOPs of one training example through `model` (a twin): 2 per multiply-add of
    its Conv2D, Dense, LSTM and GRU layers (activations, pooling and gate arithmetic are
    not counted), times TRAINING_FLOPS_PER_FORWARD_FLOP for the backward pass. A time
    dimension the model leaves open (clips) counts as `frames` steps: a masked
    recurrent layer computes every step of the padded batch."""
    return TRAINING_FLOPS_PER_FORWARD_FLOP * _forward_flops(model, frames)


def _forward_flops(model, frames):
    return sum(_layer_flops(layer, frames) for layer in model.layers)


def _layer_flops(layer, frames):
    """Forward FLOPs of one layer for one example."""
    if isinstance(layer, tf.keras.layers.TimeDistributed):
        return _time_steps(layer, frames) * _forward_flops(layer.layer, frames)
    if isinstance(layer, tf.keras.layers.Bidirectional):
        steps = _time_steps(layer, frames)
        return _rnn_flops(layer.forward_layer, steps) + _rnn_flops(layer.backward_layer, steps)
    if isinstance(layer, tf.keras.layers.RNN):
        return _rnn_flops(layer, _time_steps(layer, frames))
    if isinstance(layer, tf.keras.layers.Conv2D):
        _, out_height, out_width, _ = layer.output_shape
        return 2 * layer.kernel.shape.num_elements() * out_height * out_width
    if isinstance(layer, tf.keras.layers.Dense):
        # The twins apply Dense to one vector per example (per frame under TimeDistributed).
        return 2 * layer.kernel.shape.num_elements()
    return 0


def _time_steps(layer, frames):
    return layer.input_shape[1] or frames


def _rnn_flops(layer, steps):
    """Each step multiplies the input [I] by the kernel [I, G] and the state [U] by the
    recurrent kernel [U, G] (G = 4U for an LSTM, 3U for a GRU)."""
    cell = layer.cell
    return 2 * steps * (cell.kernel.shape.num_elements() + cell.recurrent_kernel.shape.num_elements())


def first_recurrent_shape(model):
    """(input size I, units U) of the twin's first recurrent layer."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Bidirectional):
            layer = layer.forward_layer
        if isinstance(layer, tf.keras.layers.RNN):
            return layer.cell.kernel.shape[0], layer.cell.units
    raise ValueError(f'{model.name} has no recurrent layer')
