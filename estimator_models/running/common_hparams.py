"""The hparams every model takes: the built-in models and a user's own model_fn alike.

A model's module declares its own hparams beside these, and may give these other
defaults (estimator_models.registry).
"""

from estimator_models.layers import pooling, precision, recurrent
from estimator_models.layers.hparam_declarations import FRACTION, NON_NEGATIVE, POSITIVE, HParam
from input_fns import augment, preprocess

# The shape keys in the order of a data shape (running.hparams.DATA_SHAPE_DECLARATIONS).
_INPUT_SIZE = (
    HParam('height', 0, 'input height in pixels; images of other sizes are fitted as resize says',
           bound=POSITIVE, from_data=True),
    HParam('width', 0, 'input width in pixels; images of other sizes are fitted as resize says',
           bound=POSITIVE, from_data=True),
    HParam('channels', 0, 'input channels: 1 (grayscale) or 3 (RGB); the other count is converted',
           choices=(1, 3), from_data=True),
    HParam('num_classes', 0, 'classes the model tells apart', bound=POSITIVE, from_data=True),
    HParam('resize', 'resize', 'how an image of another size is fitted: stretched, padded with zeros '
           'or centre-cropped (the last two keep its aspect)', choices=preprocess.RESIZE_POLICIES),
)

_RECURRENT_STACK = (
    HParam('cell', 'lstm', 'the recurrent cell', choices=('lstm', 'gru')),
    HParam('gru_reset_after', True, "GRU only: reset gate after the recurrent matmul (Keras' default) "
           "or, false, before it (TF1's GRUCell)",
           details="false is what a checkpoint of TF1's GRUCell needs to warm-start a GRU."),
    HParam('rnn_units', 128, 'units of each recurrent layer', bound=POSITIVE),
    HParam('rnn_layers', 1, 'recurrent layers, stacked', bound=POSITIVE),
    HParam('bidirectional', False, 'run each recurrent layer in both directions'),
    HParam('dropout', 0.0, 'dropout between the recurrent layers and before the logits, in training',
           bound=FRACTION, resumable=True,
           details='Off because 0.1 and 0.2 cost pixel_row_lstm 0.2-0.4 points and changed cnn_lstm '
                   'by one test digit ([models.md](models.md#defaults-measured)).'),
    HParam('input_dropout', 0.0, "dropout of the first recurrent layer's input sequence, in training",
           bound=FRACTION, resumable=True,
           details='The sequence is the pixel rows, the CNN features or the frame vectors. Off because '
                   '0.1 and 0.2 changed nothing beyond noise ([models.md](models.md#defaults-measured)).'),
    HParam('rnn_implementation', 'auto', 'how an LSTM runs; every choice reads the same checkpoints',
           choices=recurrent.IMPLEMENTATIONS, resumable=True,
           details="""
               `keras` runs Keras' layers; `fused` one compiled op per layer on the CPU; `cudnn`
               cuDNN's kernel on a GPU; `auto` cudnn where a GPU is visible, else fused where its
               kernel builds, else keras (a GRU always runs keras). `unmasked` runs Keras' layers
               without a mask over the end padding and takes each sequence's output at its length:
               the form an ONNX export converts, for GRU too (e.g.
               `cell=gru,rnn_implementation=unmasked`). [performance.md](performance.md) has the rates."""),
    HParam('pooling', 'last', "what the logits read from the last recurrent layer's outputs over the "
           'true steps', choices=pooling.POOLINGS,
           details='`last` takes the last true step; `mean` and `max` pool over the true steps; '
                   '`attention` weighs each step by an additive attention score (0 on padding, the '
                   'weights summing to 1), and exports then also answer `attention` [batch, T].'),
    HParam('attention_units', 64, "width of the attention's scoring layer (pooling=attention)",
           bound=POSITIVE),
)

_TRAINING = (
    HParam('precision', 'auto', 'the arithmetic of training; evaluation, prediction and exports run '
           'float32', choices=precision.PRECISIONS, resumable=True,
           details="""
               `mixed_bfloat16` computes the training graph's convolutions (small_cnn) and the fused
               LSTM's input projection, per-step recurrent products (on AVX512_BF16, with rnn_units a
               multiple of 16) and both kernels' gradients in bfloat16, on float32 variables; the
               LSTM state and gates, the loss and Adam stay float32, so every precision reads the
               same checkpoints. `auto` is mixed_bfloat16 on a machine without a GPU whose CPU has
               bfloat16 instructions (AVX512_BF16 or AMX-BF16), with oneDNN on, and float32
               otherwise; a TF_CONFIG cluster trains float32, and refuses an explicit
               mixed_bfloat16, because its distributed sessions lack a bfloat16 fused convolution.
               Why `auto`: training ran 1.36x (pixel_row_lstm), 1.6x (cnn_lstm) and 1.41x
               (temporal_cnn_lstm) as fast as in float32 (BENCHMARKS.md), and the defaults scored
               the same: pixel_row_lstm 99.65% and 99.75% (seeds 42 and 7) against 99.55% and
               99.70% in float32, cnn_lstm 99.95% and 99.90% in both, temporal_cnn_lstm's default
               run 100.00% in both."""),
    HParam('batch_size', 128, 'examples in a training and evaluation batch', bound=POSITIVE,
           resumable=True),
    HParam('learning_rate', 1e-3, "Adam's learning rate, after the warm-up", bound=POSITIVE,
           resumable=True,
           details='0.003 gains pixel_row_lstm 0.2-0.45 points in a short run; cnn_lstm scores '
                   'within a test digit or two of 100% at every rate tried, so it keeps 0.001 '
                   '([models.md](models.md#defaults-measured)).'),
    HParam('lr_schedule', 'cosine', 'after the warm-up: cosine decay to 5% at the last step, or constant',
           choices=('cosine', 'constant'), resumable=True,
           details='A constant rate cost 0.15-0.75 points in the measured runs.'),
    HParam('warmup_steps', 100, 'steps of linear warm-up of the learning rate', bound=NON_NEGATIVE,
           resumable=True,
           details='Without a warm-up pixel_row_lstm lost 0.25-0.6 points in the measured runs.'),
    HParam('clip_norm', 5.0, 'gradients are clipped to this global norm', bound=POSITIVE, resumable=True),
    HParam('label_smoothing', 0.0, 'targets 1 - s + s/K on the label and s/K on each other class, '
           'in the training and evaluation loss', bound=FRACTION, resumable=True,
           details='Off because 0.1 changed nothing beyond noise '
                   '([models.md](models.md#defaults-measured)).'),
    HParam('weight_decay', 0.0, 'decoupled (AdamW-like) decay: each step shrinks every kernel by '
           'learning_rate x weight_decay of itself', bound=NON_NEGATIVE, resumable=True,
           details="Biases and BatchNorm's scale and offset do not decay. Off because 1e-4 changed "
                   'nothing beyond noise ([models.md](models.md#defaults-measured)).'),
)

_INPUT_PIPELINE = (
    HParam('shuffle_buffer', 10000, 'examples in the training shuffle buffer, decoded and fitted',
           bound=POSITIVE, resumable=True,
           details='The buffer holds examples at the input size: mind the memory for large inputs. '
                   "temporal_cnn_lstm's clips are up to 12 frames, so a tenth of the buffer holds as "
                   'many frames.'),
    HParam('skip_bad_records', False, 'drop and count records that cannot be read, instead of '
           'stopping the run (also --skip_bad_records)', resumable=True),
    HParam('cache_train_mb', 1024, 'training examples stay decoded in memory after the first pass '
           'when they fit in this many MB (0: decode on every pass)', bound=NON_NEGATIVE, resumable=True,
           details='Counted as float32 at the input size, a clip as 12 frames (max_frames when set).'),
    HParam('augment', 'none', 'random warps of each training example; never in evaluation, '
           'prediction or serving', choices=augment.AUGMENTATIONS, resumable=True,
           details="""
               `light`: shift +-2 px, rotation +-8 degrees, scale 0.9-1.1, shear +-0.1 (pixel amounts
               for a 28 px side, scaled with the image). `strong`: +-3 px, +-12 degrees, 0.85-1.15,
               +-0.15 and an elastic deformation (alpha 36, sigma 6). A clip gets one warp for all
               its frames, so its motion is kept; warps follow --seed and are fresh on every pass.
               They cost about 7% (light) and 22% (strong) of pixel_row_lstm's training rate. Light
               warps gain pixel_row_lstm 0.7 points on the handwriting-like digits
               ([models.md](models.md#defaults-measured)). With regions=boxes the default is none,
               since a warp would move the image under its boxes."""),
    # Hostile input: what a header or a request claims is refused before it is decoded.
    HParam('max_image_pixels', preprocess.DEFAULT_MAX_IMAGE_PIXELS, 'an encoded image whose header '
           'claims more pixels is refused before decoding (input functions and serving)',
           bound=POSITIVE),
    HParam('max_frames_served', 512, 'a served clip of more frames is refused', bound=POSITIVE),
)

_TENSORBOARD = (
    HParam('summary_images_every', 500, 'steps between input images in TensorBoard (0: none; '
           'also --summary_images_every)', bound=NON_NEGATIVE, resumable=True),
    HParam('histograms', False, 'weight and activation histograms in TensorBoard (also --histograms)',
           resumable=True),
)

COMMON_HPARAMS = _INPUT_SIZE + _RECURRENT_STACK + _TRAINING + _INPUT_PIPELINE + _TENSORBOARD
