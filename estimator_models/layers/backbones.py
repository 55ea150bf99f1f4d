"""Convolutional backbones shared by cnn_lstm and temporal_cnn_lstm.

  small_cnn     [3x3 conv + ReLU, 2x2 max-pool] blocks, `cnn_filters` wide (the default)
  resnet50      tf.keras.applications.ResNet50 without its top
  mobilenet_v2  tf.keras.applications.MobileNetV2 without its top

The two applications start from `backbone_weights`, the `.h5` file Keras would
otherwise download (nothing downloads here), or from random weights. They take
3-channel pixels with their own preprocessing, so grayscale is tiled to 3 channels and
the preprocessing runs in the graph: serving still takes raw pixels.

`backbone_trainable=false` freezes a backbone: its variables get no gradient and its
BatchNorm layers run in inference mode, so weights and moving statistics stay exactly
as loaded. Fine-tuned, it trains at `backbone_learning_rate_scale` times the run's
learning rate (estimator_models.layers.head).
"""

from typing import Callable, List, NamedTuple, Optional

import tensorflow as tf

from estimator_models.errors import UserError
from estimator_models.layers import precision
from estimator_models.layers.hparam_declarations import FRACTION, NON_NEGATIVE, HParam

BACKBONES = ('small_cnn', 'resnet50', 'mobilenet_v2')
# The smallest height and width the applications accept.
APPLICATION_MIN_SIZE = 32
HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'

# Declared as theirs by the models built on a backbone.
HPARAMS = (
    HParam('backbone', 'small_cnn', 'the CNN: small_cnn, or a Keras application without its top',
           choices=BACKBONES,
           details='An application runs at the input size, which must be at least '
                   f'{APPLICATION_MIN_SIZE}x{APPLICATION_MIN_SIZE}; grayscale is tiled to 3 channels and '
                   "the application's own preprocessing runs in the graph, so serving still takes raw "
                   'pixels. E.g. `backbone=mobilenet_v2,height=64,width=64`.'),
    HParam('cnn_filters', (32, 64), 'small_cnn: one 3x3 convolution and 2x2 max-pool block per entry, '
           'this many filters wide'),
    HParam('cnn_batch_norm', False, 'small_cnn: BatchNorm after each convolution (inference mode in '
           'evaluation and serving)',
           details='cnn_lstm turns it on: with light warps it gains 0.2 points on the handwriting-like '
                   'digits ([models.md](models.md#defaults-measured)).'),
    HParam('backbone_weights', '', "the application's ImageNet .h5 (include_top=False); empty: random "
           'weights',
           details='The file Keras would otherwise download (nothing downloads here); it is read when '
                   'a run starts without a checkpoint.'),
    HParam('backbone_trainable', True, 'false freezes the backbone: no gradient, BatchNorm in inference '
           'mode, its weights and statistics kept exactly as loaded',
           details='It applies to small_cnn too, e.g. after --warm_start_from.'),
    HParam('backbone_learning_rate_scale', 1.0, 'a fine-tuned backbone trains at this times the '
           'learning rate (with an Adam of its own unless 1.0)', bound=NON_NEGATIVE),
    HParam('backbone_batch_norm_momentum', 0.99, "momentum of a fine-tuned application's BatchNorm "
           'moving statistics', bound=FRACTION,
           details="Keras builds them with 0.999, made for ImageNet's long runs: over a few thousand "
                   'steps the statistics then lag far behind the weights, and evaluation, which uses '
                   'them, fails.'),
)


class Backbone(NamedTuple):
    """A backbone applied to a batch of images.

    feature_map: [N, h, w, F], float32, or bfloat16 from small_cnn in a bfloat16
      training graph (precision=mixed_bfloat16): cast it where float32 is needed.
    variables: every variable the backbone holds (weights and BatchNorm statistics).
    trainable: whether the head trains them.
    init_fn: Scaffold init_fn that loads `backbone_weights` into a new run, or None.
    """
    feature_map: tf.Tensor
    variables: List[tf.Variable]
    trainable: bool
    init_fn: Optional[Callable]


def apply_backbone(images, params, mode):
    """Runs the `backbone` hparam's network on images: float32 [N, H, W, C] pixels in 0..1.

    Returns a Backbone whose feature map is [N, H/2^k, W/2^k, cnn_filters[-1]] for
    small_cnn (k = len(cnn_filters)), [N, H/32, W/32, 2048] for resnet50 and
    [N, H/32, W/32, 1280] for mobilenet_v2 (sizes rounded up for the applications).
    """
    trainable = params['backbone_trainable']
    training = mode == tf.estimator.ModeKeys.TRAIN and trainable
    if params['backbone'] == 'small_cnn':
        network = small_cnn(params['cnn_filters'], batch_norm=params.get('cnn_batch_norm', False),
                            compute_dtype=precision.compute_dtype(params, mode))
        feature_map = network(images, training=training)
        _collect_batch_norm_updates(network, images, training)
        return Backbone(feature_map, network.weights, trainable, None)
    network = _application(params['backbone'], images.shape[1:3])
    for layer in network.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = params['backbone_batch_norm_momentum']
    pixels = _PREPROCESSING[params['backbone']](as_rgb(images) * 255.0)   # [N, H, W, 3]
    feature_map = network(pixels, training=training)
    _collect_batch_norm_updates(network, pixels, training)
    init_fn = None
    if params['backbone_weights'] and mode == tf.estimator.ModeKeys.TRAIN:
        init_fn = weights_loader(network.weights, params['backbone'], params['backbone_weights'],
                                 images.shape[1:3])
    return Backbone(feature_map, network.weights, trainable, init_fn)


def small_cnn(filters, name='cnn', batch_norm=False, compute_dtype=tf.float32):
    """A stack of [3x3 conv + ReLU, 2x2 max-pool] blocks, one per entry of `filters`;
    with `batch_norm`, [3x3 conv, BatchNorm, ReLU, 2x2 max-pool].

    The returned Keras model maps float32 [N, H, W, C] (pixels in 0..1) to a feature
    map [N, H / 2^k, W / 2^k, filters[-1]] (k = len(filters), sizes rounded down) of
    `compute_dtype` (with tf.bfloat16 its variables stay float32, so every precision
    reads the same checkpoints: estimator_models.layers.precision). Built fresh on each
    call, with fixed layer names, so checkpoints keep their keys.

    Each block pools before its ReLU and its bias, which give the same values: both rise
    with their input, so a window's maximum is the same taken before them as after. They
    and their gradients then run on a quarter of the values.
    """
    # A per-layer policy, not Keras' global one: the rest of the graph stays float32.
    policy = tf.keras.mixed_precision.Policy(
        'mixed_bfloat16' if compute_dtype == tf.bfloat16 else 'float32')
    layers = []
    for index, channels in enumerate(filters):
        # The first convolution reads the images, which need no gradient.
        reads_pixels = index == 0
        conv_name = f'{name}_conv_{index}'
        if not batch_norm:
            layers.append(PooledConv2D(channels, reads_pixels, name=conv_name, dtype=policy))
            continue
        # BatchNorm's offset does what the convolution's bias would; its scale may be
        # negative, so it stays before the pool.
        layers += [Conv2DInputGradientFirst(channels, reads_pixels, use_bias=False, name=conv_name, dtype=policy),
                   tf.keras.layers.BatchNormalization(name=f'{name}_batch_norm_{index}', dtype=policy),
                   tf.keras.layers.MaxPool2D(2, name=f'{name}_pool_{index}', dtype=policy),
                   tf.keras.layers.ReLU(name=f'{name}_relu_{index}', dtype=policy)]
    return tf.keras.Sequential(layers, name=name)


class Conv2DInputGradientFirst(tf.keras.layers.Conv2D):
    """Keras' 3x3 'same' Conv2D, [N, H, W, C] -> [N, H, W, filters], with the same
    variables under the same names, whose gradient computes the inputs' gradient before
    the kernel's.

    The layers below wait for the inputs' gradient; the kernel's only feeds the
    optimizer. Run side by side, the two share the cores and both finish late; in this
    order the kernel's gradient runs beside the layers below (BENCHMARKS.md). With
    `reads_pixels` the inputs need no gradient and the convolution is TensorFlow's own.
    """

    def __init__(self, filters, reads_pixels, **kwargs):
        super().__init__(filters, 3, padding='same', **kwargs)
        self.reads_pixels = reads_pixels

    def convolution_op(self, inputs, kernel):
        if self.reads_pixels:
            return super().convolution_op(inputs, kernel)
        return _convolution_input_gradient_first(inputs, tf.convert_to_tensor(kernel))


def _convolution_input_gradient_first(inputs, kernel):
    """A 3x3 'same' convolution, [N, H, W, C] x [3, 3, C, F] -> [N, H, W, F], whose kernel
    gradient waits for its inputs' gradient."""
    strides = [1, 1, 1, 1]

    @tf.custom_gradient
    def convolve(inputs, kernel):
        def gradient(grad):                                                    # [N, H, W, F]
            grad_inputs = tf.compat.v1.nn.conv2d_backprop_input(
                tf.shape(inputs), kernel, grad, strides, 'SAME')               # [N, H, W, C]
            kernel_shape = tf.shape(kernel)  # made here: inside, it would carry the wait instead
            with tf.control_dependencies([grad_inputs]):
                grad_kernel = tf.compat.v1.nn.conv2d_backprop_filter(
                    inputs, kernel_shape, grad, strides, 'SAME')               # [3, 3, C, F]
            return grad_inputs, grad_kernel

        return tf.nn.conv2d(inputs, kernel, strides, 'SAME'), gradient

    return convolve(inputs, kernel)


class PooledConv2D(Conv2DInputGradientFirst):
    """A 3x3 convolution with bias and ReLU and a 2x2 max-pool after it, [N, H, W, C] ->
    [N, H/2, W/2, filters] (sizes rounded down), computed as convolution, pool, bias,
    ReLU."""

    def call(self, inputs):
        convolved = self.convolution_op(inputs, self.kernel)                  # [N, H, W, F]
        pooled = tf.nn.max_pool2d(convolved, 2, 2, 'VALID')                   # [N, H/2, W/2, F]
        return tf.nn.relu(tf.nn.bias_add(pooled, self.bias))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = tf.TensorShape(super().compute_output_shape(input_shape))
        return tf.TensorShape([batch, height and height // 2, width and width // 2, channels])


def _collect_batch_norm_updates(network, inputs, training):
    """Keras keeps BatchNorm's moving-average updates to itself; the head runs UPDATE_OPS."""
    if not training:
        return
    for update in network.get_updates_for(inputs):
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, update)


def as_rgb(images):
    """[N, H, W, 1 or 3] -> [N, H, W, 3]: grayscale repeated in the three channels."""
    if images.shape[-1] == 1:
        return tf.tile(images, [1, 1, 1, 3])
    return images


_CONSTRUCTORS = {
    'resnet50': tf.keras.applications.ResNet50,
    'mobilenet_v2': tf.keras.applications.MobileNetV2,
}
# Each maps RGB pixels 0..255 to what its ImageNet weights were trained on.
_PREPROCESSING = {
    'resnet50': tf.keras.applications.resnet50.preprocess_input,
    'mobilenet_v2': tf.keras.applications.mobilenet_v2.preprocess_input,
}


def _application(name, size, weights=None):
    """The Keras application `name` without its top, for 3-channel inputs of `size` (H, W).

    Its variables are created under the scope `name`, so checkpoint keys read
    `mobilenet_v2/Conv1/kernel` and stay the same in every graph."""
    # The constructor also applies the network once to a placeholder of its own, a graph
    # no run uses: at learning phase 0 its BatchNorms are built without a training branch
    # (in graph mode the default phase is a tensor, and each BatchNorm then builds both
    # branches, about half of a graph's build time). Calls with training= are unaffected.
    with tf.compat.v1.variable_scope(name), tf.keras.backend.learning_phase_scope(0):
        return _CONSTRUCTORS[name](include_top=False, weights=weights,
                                   input_shape=(int(size[0]), int(size[1]), 3))


def weights_loader(variables, name, path, size):
    """A Scaffold init_fn that sets `variables` (the application's, in Keras' order) from
    the `.h5` at `path`. It runs only when a run starts without a checkpoint, so a resumed
    run keeps what it trained; the file is read then, not at every graph build."""
    placeholders = [tf.compat.v1.placeholder(variable.dtype.base_dtype, variable.shape)
                    for variable in variables]
    assign = tf.group([variable.assign(value) for variable, value in zip(variables, placeholders)])

    def init_fn(unused_scaffold, session):
        values = read_weights(name, path, size)
        session.run(assign, dict(zip(placeholders, values)))
        print(f'{name}: weights loaded from {path}', flush=True)

    return init_fn


def read_weights(name, path, size):
    """The weights in `path` as numpy arrays, in the order of the application's variables,
    read by Keras itself (as `weights=path` would) in a graph of their own."""
    with tf.Graph().as_default():
        try:
            network = _application(name, size, weights=path)
        except (ValueError, OSError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f'backbone_weights={path} does not fit backbone={name} at '
                            f'{int(size[0])}x{int(size[1])}: {first_line}') from None
        return tf.keras.backend.batch_get_value(network.weights)


def describe(hparams):
    """One line for the run's header: where the backbone starts and how it trains."""
    name, path = hparams['backbone'], hparams['backbone_weights']
    start = f'weights from {path}' if path else 'random weights (no backbone_weights given)'
    if not hparams['backbone_trainable']:
        return f'{name}, {start}, frozen'
    return f'{name}, {start}, fine-tuned at {hparams["backbone_learning_rate_scale"]:g}x the learning rate'


def check_size(hparams):
    """Refuses images too small for a Keras application; a size still 0 (left to the data)
    passes."""
    name = hparams['backbone']
    if name == 'small_cnn':
        return
    small = [f'{key}={hparams[key]}' for key in ('height', 'width')
             if 0 < hparams[key] < APPLICATION_MIN_SIZE]
    if small:
        raise UserError(f'backbone={name} needs height and width of at least '
                        f'{APPLICATION_MIN_SIZE} (got {", ".join(small)}); add height=32,width=32 '
                        f'(or larger) to --hparams')


def check_hparams(hparams):
    """Refuses backbone hparams that cannot work, before any data is read."""
    check_size(hparams)
    name, path = hparams['backbone'], hparams['backbone_weights']
    if not path:
        return
    if name == 'small_cnn':
        raise UserError('backbone_weights loads a Keras application (backbone=resnet50 or mobilenet_v2); '
                        'to start small_cnn from a checkpoint use --warm_start_from')
    try:
        with open(path, 'rb') as stream:
            signature = stream.read(len(HDF5_SIGNATURE))
    except OSError as error:
        raise UserError(f'backbone_weights={path}: {error.strerror or error}') from None
    if signature != HDF5_SIGNATURE:
        raise UserError(f'backbone_weights={path} is not an HDF5 (.h5) weights file')
