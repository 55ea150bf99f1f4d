"""The built-in models in Keras 3, for a trained checkpoint to live on after Estimator.

This file runs in an environment of its own (requirements-keras3.txt: Keras 3 and a
backend) and imports nothing from TensorFlow 2.15 or the rest of the project; the
project's `bin/export --format=keras3` runs it as a script:

  python keras3_model.py build VARIABLES.npz DESCRIPTION.json OUTPUT.keras
         [--verify_inputs IN.npz --verify_outputs OUT.npz]
  python keras3_model.py versions

VARIABLES.npz holds the checkpoint's model variables by their checkpoint names
(`rnn_0/lstm_cell/kernel`, `cnn/cnn_conv_0/kernel`, ...), DESCRIPTION.json the model's
name, kind and hparams. `build` writes a functional model of Keras layers and
`keras.ops` only, so OUTPUT.keras loads with `keras.saving.load_model` alone, on any
backend. It takes the raw inputs of the SavedModel's predict signature and answers its
outputs:

  images  inputs  image float32 [N, H, W, C], pixels 0..255 (regions=boxes also: boxes
                  float32 [N, R, 4], num_boxes int32 [N])
  clips   inputs  frames float32 [N, T, H, W, C], lengths int32 [N]
  both    outputs classes, probabilities, logits (attention with pooling=attention)

The graph computes what the Estimator's PREDICT graph computes, step for step: the
scaling to 0..1, the backbone (an application's own preprocessing and grayscale tiled
to 3 channels included), the sequence, the masked recurrent stack, the pooling and the
head. Dropout layers stand where training had them, inactive in inference, so
`model.fit` trains as the Estimator did.
"""

import argparse
import json
import os
import sys

import keras
import numpy as np
from keras import layers, ops

FORMAT = 1
REGION_CROP = 2
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)
# What the ImageNet weights of each application were trained on, from RGB pixels 0..255.
CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)


class Unsupported(Exception):
    """An option the Keras 3 model cannot express: exits 2 with one line."""


def build_model(description):
    """The Keras 3 model of DESCRIPTION.json's {model, kind, hparams}, with fresh weights."""
    hparams = description['hparams']
    builders = {'pixel_row_lstm': pixel_row_lstm, 'cnn_lstm': cnn_lstm,
                'temporal_cnn_lstm': temporal_cnn_lstm}
    if description['model'] not in builders:
        raise Unsupported(f'model {description["model"]!r} has no Keras 3 form (built-in models only)')
    inputs, outputs = builders[description['model']](hparams)
    return keras.Model(inputs, outputs, name=description['model'])


# --- the three models: raw inputs in, predictions out ------------------------------------

def pixel_row_lstm(hparams):
    image = image_input(hparams)                                             # [N, H, W, C]
    images = layers.Rescaling(1.0 / 255.0, name='pixels_to_unit')(image)
    sequence = SEQUENCERS[hparams['scan']](images)                          # [N, H, W*C] (rows)
    final, attention = pooled_recurrent_stack(sequence, hparams)            # [N, U], [N, T]
    logits = layers.Dense(hparams['num_classes'], name='logits')(final)      # [N, K]
    return {'image': image}, predictions(logits, attention)


def cnn_lstm(hparams):
    image = image_input(hparams)                                             # [N, H, W, C]
    inputs = {'image': image}
    images = layers.Rescaling(1.0 / 255.0, name='pixels_to_unit')(image)
    feature_map = backbone(hparams, images.shape[1:])(images)                # [N, h, w, F]
    lengths = None
    if hparams['sequence'] != 'regions':
        sequence = SEQUENCERS[hparams['sequence']](feature_map)             # [N, h, w*F] (rows)
    elif hparams['regions'] == 'grid':
        sequence = grid_as_sequence(feature_map, hparams['grid'])           # [N, R*C, 4F]
    else:
        inputs['boxes'] = keras.Input((None, 4), name='boxes')
        inputs['num_boxes'] = keras.Input((), dtype='int32', name='num_boxes')
        boxes, lengths = whole_image_when_boxless(inputs['boxes'], inputs['num_boxes'])
        sequence = boxes_as_sequence(feature_map, boxes)                    # [N, max(R, 1), 4F]
    step = hparams['step']
    if step > 1:
        sequence = sequence[:, ::step]                                      # [N, ceil(T/step), D]
        if lengths is not None:
            lengths = ops.floor_divide(lengths - 1, step) + 1
    final, attention = pooled_recurrent_stack(sequence, hparams, lengths)   # [N, U], [N, T]
    logits = layers.Dense(hparams['num_classes'], name='logits')(final)      # [N, K]
    return inputs, predictions(logits, attention)


def temporal_cnn_lstm(hparams):
    size = (hparams['height'], hparams['width'], hparams['channels'])
    frames_input = keras.Input((None,) + size, name='frames')                # [N, T, H, W, C]
    lengths_input = keras.Input((), dtype='int32', name='lengths')           # [N]
    frames = layers.Rescaling(1.0 / 255.0, name='pixels_to_unit')(frames_input)
    lengths = lengths_input
    if hparams['max_frames']:
        frames = frames[:, :hparams['max_frames']]                          # [N, T', H, W, C]
        lengths = ops.minimum(lengths, hparams['max_frames'])
    pixel_differences = hparams['frame_differences'] and hparams['backbone'] == 'small_cnn'
    if pixel_differences:
        frames = with_frame_differences(frames)                             # [N, T, H, W, 2C]
    # One network shared by every frame; flattened rather than pooled, as the motion is
    # in where things are.
    per_frame_network = keras.Sequential([
        keras.Input(frames.shape[2:]),
        backbone(hparams, frames.shape[2:]),
        layers.Flatten(name='flatten_frame'),
        layers.Dense(hparams['frame_features'], activation='relu', name='frame_features'),
    ], name='per_frame')
    sequence = layers.TimeDistributed(per_frame_network, name='each_frame')(frames)  # [N, T, D]
    if hparams['frame_differences'] and not pixel_differences:
        sequence = with_frame_differences(sequence)                         # [N, T, 2D]
    if hparams['head'] == 'per_frame':
        outputs = recurrent_stack(sequence, hparams, lengths, return_sequences=True)   # [N, T, U]
        logits = layers.Dense(hparams['num_frame_classes'], name='frame_logits')(outputs)  # [N, T, K]
        return {'frames': frames_input, 'lengths': lengths_input}, predictions(logits, None)
    final, attention = pooled_recurrent_stack(sequence, hparams, lengths)   # [N, U], [N, T]
    logits = layers.Dense(hparams['num_classes'], name='logits')(final)      # [N, K]
    return {'frames': frames_input, 'lengths': lengths_input}, predictions(logits, attention)


def image_input(hparams):
    return keras.Input((hparams['height'], hparams['width'], hparams['channels']), name='image')


def predictions(logits, attention):
    """`classes`, `probabilities` and `logits` of logits [..., K] (and `attention`)."""
    outputs = {'classes': ops.argmax(logits, axis=-1), 'probabilities': ops.softmax(logits, axis=-1),
               'logits': logits}
    if attention is not None:
        outputs['attention'] = attention
    return outputs


def with_frame_differences(frames):
    """[N, T, ..., C] -> [N, T, ..., 2C]: each frame, then itself minus the frame before
    (zero for the first)."""
    previous = ops.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    return ops.concatenate([frames, frames - previous], axis=-1)


# --- sequences ------------------------------------------------------------------------------

def rows_as_sequence(images):
    """[N, H, W, C] -> [N, H, W*C]: one step per row, top to bottom."""
    _, height, width, channels = images.shape
    return ops.reshape(images, (-1, height, width * channels))


def columns_as_sequence(images):
    """[N, H, W, C] -> [N, W, H*C]: one step per column, left to right."""
    return rows_as_sequence(ops.transpose(images, (0, 2, 1, 3)))


def positions_as_sequence(feature_map):
    """[N, H, W, C] -> [N, H*W, C]: one step per position, in raster order."""
    _, height, width, channels = feature_map.shape
    return ops.reshape(feature_map, (-1, height * width, channels))


def pooled_as_sequence(feature_map):
    """[N, H, W, C] -> [N, H, C]: the spatial average repeated H times."""
    pooled = ops.mean(feature_map, axis=(1, 2), keepdims=True)               # [N, 1, 1, C]
    return ops.tile(pooled[:, 0], (1, feature_map.shape[1], 1))


SEQUENCERS = {'rows': rows_as_sequence, 'columns': columns_as_sequence,
              'flatten': positions_as_sequence, 'pooled': pooled_as_sequence}


def parse_grid(text):
    rows, _, columns = str(text).partition('x')
    return int(rows), int(columns)


def grid_as_sequence(feature_map, grid):
    """[N, h, w, F] -> [N, R*C, 4F]: the cells of grid 'RxC', in raster order. The cells
    are the same for every image, so their sampling weights are constants."""
    rows, columns = parse_grid(grid)
    tops = np.arange(rows, dtype=np.float32) / np.float32(rows)
    lefts = np.arange(columns, dtype=np.float32) / np.float32(columns)
    top, left = (edge.reshape(-1) for edge in np.meshgrid(tops, lefts, indexing='ij'))
    cells = np.stack([top, left, top + np.float32(1.0 / rows), left + np.float32(1.0 / columns)],
                     axis=1).astype(np.float32)                             # [R*C, 4]
    height, width = feature_map.shape[1:3]
    row_weights, column_weights = sampling_weights(np, cells, height, width)   # [R*C, crop, h], [R*C, crop, w]
    return sampled_regions(feature_map, row_weights.astype(np.float32), column_weights.astype(np.float32))


def whole_image_when_boxless(boxes, counts):
    """(float32 [N, R, 4], int32 [N]) -> ([N, max(R, 1), 4], [N]): an image without boxes
    reads one box, the whole image."""
    # The sum over at most one box is that box, or zeros when R is 0: room for the whole
    # image without a branch on R.
    first = ops.sum(boxes[:, :1], axis=1)                                       # [N, 4]
    whole = ops.convert_to_tensor(np.array([WHOLE_IMAGE], np.float32))         # [1, 4]
    first = ops.where(ops.expand_dims(ops.equal(counts, 0), -1), whole, first)
    boxes = ops.concatenate([ops.expand_dims(first, 1), boxes[:, 1:]], axis=1)
    return boxes, ops.maximum(counts, 1)


def boxes_as_sequence(feature_map, boxes):
    """[N, h, w, F], float32 [N, R, 4] boxes -> [N, R, 4F]."""
    height, width = feature_map.shape[1:3]
    row_weights, column_weights = sampling_weights(ops, boxes, height, width)
    return sampled_regions(feature_map, row_weights, column_weights)


def sampling_weights(math, boxes, height, width):
    """The bilinear weights of each box's REGION_CROP x REGION_CROP samples: rows
    [..., R, REGION_CROP, h] and columns [..., R, REGION_CROP, w], from float32
    [..., R, 4] boxes (`math` is numpy for boxes known in advance, else keras.ops).

    The samples are the centres of the box's equal parts, placed as TensorFlow's
    crop_and_resize places them: evenly from y1 * (h - 1) to y2 * (h - 1) in pixel
    centres, after the box is moved half a part inside and half a pixel back. A sample
    outside the map reads zero, as crop_and_resize's extrapolation does. Pixel i's
    weight for a sample at y is max(0, 1 - |y - i|): linear interpolation between the
    two pixels around y.
    """
    scale = np.array([height, width, height, width], np.float32)
    edges = boxes * scale                                                     # [..., R, 4] pixels
    inset = (edges[..., 2:] - edges[..., :2]) / np.float32(2.0 * REGION_CROP)
    first, last = edges[..., :2] + inset - 0.5, edges[..., 2:] - inset - 0.5
    spans = np.array([max(height - 1, 1), max(width - 1, 1)], np.float32)
    first, last = first / spans, last / spans                                 # what crop_and_resize reads
    fractions = np.linspace(0.0, 1.0, REGION_CROP).astype(np.float32)
    weights = []
    for axis, size in enumerate((height, width)):
        start, end = first[..., axis] * (size - 1), last[..., axis] * (size - 1)     # [..., R]
        samples = math.expand_dims(start, -1) + math.expand_dims(end - start, -1) * fractions  # [..., R, crop]
        inside = math.logical_and(samples >= 0, samples <= size - 1)
        pixels = np.arange(size, dtype=np.float32)
        tent = math.maximum(1.0 - math.abs(math.expand_dims(samples, -1) - pixels), 0.0)  # [..., R, crop, size]
        weights.append(tent * math.expand_dims(_as_float(math, inside), -1))
    return weights


def _as_float(math, values):
    return values.astype(np.float32) if math is np else ops.cast(values, 'float32')


def sampled_regions(feature_map, row_weights, column_weights):
    """[N, h, w, F] sampled at each region's crop x crop points -> [N, R, crop*crop*F],
    each region's samples in raster order, as crop_and_resize's crops flattened. The
    weights are [R, crop, h] and [R, crop, w] for regions shared by every image, else
    [N, R, crop, h] and [N, R, crop, w]."""
    batch = '' if len(row_weights.shape) == 3 else 'n'
    rows = ops.einsum(f'{batch}rah,nhwf->nrawf', row_weights, feature_map)        # [N, R, crop, w, F]
    sampled = ops.einsum(f'{batch}rbw,nrawf->nrabf', column_weights, rows)       # [N, R, crop, crop, F]
    # A layer, not ops.reshape: the batch and the region count may both be unknown.
    return layers.Reshape((-1, REGION_CROP * REGION_CROP * feature_map.shape[-1]))(sampled)


# --- the recurrent stack and its pooling -------------------------------------------------

def steps_mask(sequence, lengths):
    """bool [N, T]: True on each sequence's first lengths[n] steps (T may be unknown
    until called, so the step numbers are counted from the sequence itself)."""
    ones = ops.ones_like(sequence[:, :, 0])                                  # [N, T]
    steps = ops.cumsum(ones, axis=1) - 1.0                                   # 0, 1, ..., T-1
    return ops.less(steps, ops.expand_dims(ops.cast(lengths, 'float32'), -1))


def pooled_recurrent_stack(sequence, hparams, lengths=None):
    """The stack's last layer pooled over the true steps: ([N, U], [N, T] attention or None)."""
    if hparams['pooling'] == 'last':
        return recurrent_stack(sequence, hparams, lengths), None
    outputs = recurrent_stack(sequence, hparams, lengths, return_sequences=True)   # [N, T, U]
    mask = None if lengths is None else steps_mask(sequence, lengths)
    return pool_steps(outputs, mask, hparams['pooling'], hparams['attention_units'])


def recurrent_stack(sequence, hparams, lengths=None, return_sequences=False):
    """`rnn_layers` LSTM or GRU layers over [N, T, D], masked past `lengths`: [N, U], or
    [N, T, U] with return_sequences (U = rnn_units, doubled when bidirectional)."""
    mask = None if lengths is None else steps_mask(sequence, lengths)
    outputs = sequence
    if hparams.get('input_dropout'):
        outputs = layers.Dropout(hparams['input_dropout'], name='rnn_input_dropout')(outputs)
    for index in range(hparams['rnn_layers']):
        layer_sequences = return_sequences or index < hparams['rnn_layers'] - 1
        layer = recurrent_layer(hparams, f'rnn_{index}', layer_sequences)
        if hparams['bidirectional']:
            layer = layers.Bidirectional(layer, name=f'bidirectional_rnn_{index}')
        outputs = layer(outputs) if mask is None else layer(outputs, mask=mask)
        if hparams['dropout']:
            outputs = layers.Dropout(hparams['dropout'], name=f'rnn_dropout_{index}')(outputs)
    return outputs


def recurrent_layer(hparams, name, return_sequences):
    if hparams['cell'] == 'gru':
        return layers.GRU(hparams['rnn_units'], reset_after=hparams['gru_reset_after'],
                          return_sequences=return_sequences, name=name)
    return layers.LSTM(hparams['rnn_units'], return_sequences=return_sequences, name=name)


def pool_steps(outputs, mask, pooling, attention_units):
    """[N, T, U] over the true steps (mask bool [N, T], or None: all) -> ([N, U], weights)."""
    if mask is None:
        mask = ops.greater(ops.ones_like(outputs[:, :, 0]), 0.0)
    steps = ops.expand_dims(ops.cast(mask, 'float32'), -1)                   # [N, T, 1]
    if pooling == 'mean':
        return ops.sum(outputs * steps, axis=1) / ops.sum(steps, axis=1), None
    if pooling == 'max':
        lowest = ops.full_like(outputs, np.finfo(np.float32).min)
        return ops.max(ops.where(ops.expand_dims(mask, -1), outputs, lowest), axis=1), None
    hidden = layers.Dense(attention_units, activation='tanh', name='attention_hidden')(outputs)
    scores = layers.Dense(1, use_bias=False, name='attention_score')(hidden)[..., 0]     # [N, T]
    scores = ops.where(mask, scores, ops.full_like(scores, np.finfo(np.float32).min))
    weights = ops.softmax(scores, axis=-1)
    return ops.sum(outputs * ops.expand_dims(weights, -1), axis=1), weights


# --- backbones ------------------------------------------------------------------------------

def backbone(hparams, input_shape):
    """The `backbone` hparam's network as a model of its own: float32 [N, H, W, C] in 0..1
    -> feature map. `backbone_trainable=false` freezes it (BatchNorm in inference mode)."""
    if hparams['backbone'] == 'small_cnn':
        network = small_cnn(hparams['cnn_filters'], hparams.get('cnn_batch_norm', False), input_shape)
    else:
        network = application(hparams, input_shape)
    network.trainable = hparams.get('backbone_trainable', True)
    return network


def small_cnn(filters, batch_norm, input_shape):
    """[3x3 conv + ReLU, 2x2 max-pool] blocks (with BatchNorm: conv, BatchNorm, ReLU, pool)."""
    stack = [keras.Input(input_shape)]
    for index, channels in enumerate(filters):
        if batch_norm:
            stack += [layers.Conv2D(channels, 3, padding='same', use_bias=False, name=f'cnn_conv_{index}'),
                      layers.BatchNormalization(name=f'cnn_batch_norm_{index}'),
                      layers.ReLU(name=f'cnn_relu_{index}')]
        else:
            stack.append(layers.Conv2D(channels, 3, padding='same', activation='relu', name=f'cnn_conv_{index}'))
        stack.append(layers.MaxPooling2D(2, name=f'cnn_pool_{index}'))
    return keras.Sequential(stack, name='cnn')


def application(hparams, input_shape):
    """A Keras application without its top, behind its own preprocessing of 0..1 pixels
    (grayscale tiled to 3 channels)."""
    name = hparams['backbone']
    height, width = input_shape[:2]
    constructors = {'resnet50': keras.applications.ResNet50, 'mobilenet_v2': keras.applications.MobileNetV2}
    network = constructors[name](include_top=False, weights=None, input_shape=(height, width, 3), name=name)
    for layer in network.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = hparams['backbone_batch_norm_momentum']
    pixels = keras.Input(input_shape)
    rgb = pixels if input_shape[-1] == 3 else ops.tile(pixels, (1, 1, 1, 3))
    rgb = rgb * 255.0
    if name == 'resnet50':
        bgr = ops.flip(rgb, axis=-1)
        prepared = bgr - np.array(CAFFE_MEANS_BGR, np.float32)
    else:
        prepared = rgb / 127.5 - 1.0
    return keras.Model(pixels, network(prepared), name=f'{name}_backbone')


# --- weights --------------------------------------------------------------------------------

# The checkpoint's name of a Keras 3 weight, where the two differ.
_CHECKPOINT_WEIGHT_NAMES = {('DepthwiseConv2D', 'kernel'): 'depthwise_kernel'}
_CELLS = {'LSTM': 'lstm_cell', 'GRU': 'gru_cell'}


def set_weights(model, variables):
    """Sets every weight of `model` from `variables` ({checkpoint name: array}); every
    model variable of the checkpoint must find its weight, and every weight its variable."""
    unused = set(variables)
    for scope, layer in _named_layers(model, ''):
        values = []
        for weight in layer.weights:
            key = scope + _checkpoint_weight_name(layer, weight)
            if key not in variables:
                raise Unsupported(f'the checkpoint has no variable {key} for the Keras 3 layer {layer.name}')
            value = variables[key]
            if tuple(value.shape) != tuple(weight.shape):
                raise Unsupported(f'{key}: the checkpoint holds shape {tuple(value.shape)}, '
                                  f'the Keras 3 layer wants {tuple(weight.shape)}')
            values.append(value)
            unused.discard(key)
        if values:
            layer.set_weights(values)
    if unused:
        raise Unsupported(f'checkpoint variables without a Keras 3 weight: {", ".join(sorted(unused)[:5])}')


def _named_layers(layer, scope):
    """(checkpoint scope, layer) of each layer holding weights of its own, through nested
    models, TimeDistributed and Bidirectional, in the checkpoint's naming."""
    if isinstance(layer, layers.Bidirectional):
        prefix = f'{scope}{layer.name}/'
        for direction in (layer.forward_layer, layer.backward_layer):
            yield f'{prefix}{direction.name}/', direction
        return
    if isinstance(layer, layers.TimeDistributed):
        yield from _named_layers(layer.layer, scope)
        return
    if isinstance(layer, keras.Model):
        # The small CNN's layers sit under its scope `cnn`, an application's under its
        # name; the models around them add none.
        inner = f'{scope}{layer.name}/' if layer.name in ('cnn', 'resnet50', 'mobilenet_v2') else scope
        for sublayer in layer.layers:
            yield from _named_layers(sublayer, inner)
        return
    if layer.weights:
        yield f'{scope}{layer.name}/', layer


def _checkpoint_weight_name(layer, weight):
    """A weight's name below its layer's scope in the checkpoint."""
    kind = type(layer).__name__
    name = weight.name.split('/')[-1]
    if kind in _CELLS:
        return f'{_CELLS[kind]}/{name}'
    return _CHECKPOINT_WEIGHT_NAMES.get((kind, name), name)


# --- the command line -----------------------------------------------------------------------

def build(arguments):
    with open(arguments.description) as stream:
        description = json.load(stream)
    if description.get('format') != FORMAT:
        raise Unsupported(f'{arguments.description} is of format {description.get("format")}, not {FORMAT}')
    with np.load(arguments.variables) as archive:
        variables = {key: archive[key] for key in archive.files}
    model = build_model(description)
    set_weights(model, variables)
    model.save(arguments.output)
    if arguments.verify_inputs:
        loaded = keras.saving.load_model(arguments.output)
        with np.load(arguments.verify_inputs) as archive:
            inputs = {key: archive[key] for key in archive.files}
        outputs = loaded.predict(inputs, batch_size=len(next(iter(inputs.values()))), verbose=0)
        np.savez(arguments.verify_outputs, **{key: np.asarray(value) for key, value in outputs.items()})


def versions():
    """{package: version} of what builds and runs the model here."""
    found = {'keras': keras.__version__, 'backend': keras.backend.backend(), 'numpy': np.__version__,
             'python': sys.version.split()[0]}
    backend_module = {'jax': 'jax', 'torch': 'torch', 'tensorflow': 'tensorflow'}.get(found['backend'])
    if backend_module:
        found[backend_module] = __import__(backend_module).__version__
    return found


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    build_parser = commands.add_parser('build')
    build_parser.add_argument('variables')
    build_parser.add_argument('description')
    build_parser.add_argument('output')
    build_parser.add_argument('--verify_inputs')
    build_parser.add_argument('--verify_outputs')
    commands.add_parser('versions')
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == 'versions':
            print(json.dumps(versions(), sort_keys=True))
        else:
            build(arguments)
    except Unsupported as error:
        if arguments.command == 'build' and os.path.exists(arguments.output):
            os.remove(arguments.output)
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
