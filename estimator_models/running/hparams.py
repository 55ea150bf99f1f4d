"""Hyperparameters: defaults, `--hparams=k=v,k=v` overrides, and the copy kept in model_dir.

A run's hparams are one flat dict of ints, floats, bools, strings and int lists. The
first training run writes them, with the model name and data specs, to
MODEL_DIR/hparams.json; later runs (evaluate, export, a resumed train) read them back,
so they need no repeated flags. On resume only TRAINING_KEYS may change: anything else
would not fit the checkpoint.
"""

import json
import os
import re

from estimator_models.layers import backbones, pooling, precision, recurrent, regions
from estimator_models.serving import receivers
from input_fns import augment, preprocess
from input_fns.errors import UserError

RUN_FILE = 'hparams.json'

COMMON_DEFAULTS = {
    # Input size; 0 means "take it from the training data".
    'height': 0,
    'width': 0,
    'channels': 0,
    'num_classes': 0,
    'resize': 'resize',
    # Recurrent stack (estimator_models.layers.recurrent).
    'cell': 'lstm',
    # GRU only: Keras' default applies the reset gate after the recurrent matmul; false
    # applies it before, as TF1's GRUCell does (needed to warm-start from GRUCell).
    'gru_reset_after': True,
    'rnn_units': 128,
    'rnn_layers': 1,
    'bidirectional': False,
    'dropout': 0.0,
    'input_dropout': 0.0,
    # How an LSTM runs (estimator_models.layers.recurrent): auto | keras | fused | cudnn.
    # Every choice reads the same checkpoints, so it may change on resume.
    'rnn_implementation': 'auto',
    # Training arithmetic (estimator_models.layers.precision): auto | float32 | mixed_bfloat16.
    # auto trains in bfloat16 where the CPU has bfloat16 instructions: measured 1.36-1.6x
    # faster than float32, at the same accuracy (README).
    'precision': 'auto',
    # Pooling of the last layer's outputs over the true steps (estimator_models.layers.pooling):
    # last | mean | max | attention, and the width of attention's scoring layer.
    'pooling': 'last',
    'attention_units': 64,
    # Training (estimator_models.layers.head).
    'batch_size': 128,
    'learning_rate': 1e-3,
    'lr_schedule': 'cosine',
    'warmup_steps': 100,
    'clip_norm': 5.0,
    # Regularisation (estimator_models.layers.head): targets 1 - s + s/K on the label and
    # s/K elsewhere; AdamW-style decay of the kernels, apart from the gradient.
    'label_smoothing': 0.0,
    'weight_decay': 0.0,
    # Input (input_fns.dataset): examples in the training shuffle buffer; whether records
    # that cannot be read are dropped and counted instead of stopping the run.
    'shuffle_buffer': 10000,
    'skip_bad_records': False,
    # Training examples are kept decoded in memory after the first pass when they fit
    # in this many MB (0: decode on every pass).
    'cache_train_mb': 1024,
    # Random warps of the training examples (input_fns.augment): none | light | strong.
    'augment': 'none',
    # Hostile input: an encoded image whose header claims more pixels than this is refused
    # before it is decoded (input functions and serving); so is a served clip of more frames.
    'max_image_pixels': 4096 * 4096,
    'max_frames_served': 512,
    # TensorBoard (estimator_models.layers.summaries, running.monitoring): input images
    # every N steps (0: never), weight and activation histograms.
    'summary_images_every': 500,
    'histograms': False,
}

COMMON_CHOICES = {
    'resize': preprocess.RESIZE_POLICIES,
    'cell': ('lstm', 'gru'),
    'rnn_implementation': recurrent.IMPLEMENTATIONS,
    'precision': precision.PRECISIONS,
    'pooling': pooling.POOLINGS,
    'lr_schedule': ('cosine', 'constant'),
    'augment': augment.AUGMENTATIONS,
}

POSITIVE_KEYS = ('rnn_units', 'rnn_layers', 'batch_size', 'shuffle_buffer', 'learning_rate', 'clip_norm',
                 'max_image_pixels', 'max_frames_served', 'frame_features', 'attention_units', 'step')
NON_NEGATIVE_KEYS = ('warmup_steps', 'summary_images_every', 'max_frames', 'cache_train_mb',
                     'backbone_learning_rate_scale', 'num_frame_classes', 'weight_decay')
# List hparams of the built-in models (layer sizes), whose entries must be positive.
LAYER_SIZE_LISTS = ('cnn_filters',)
TRAINING_KEYS = ('batch_size', 'learning_rate', 'lr_schedule', 'warmup_steps', 'clip_norm', 'dropout',
                 'input_dropout', 'summary_images_every', 'histograms', 'shuffle_buffer', 'skip_bad_records',
                 'rnn_implementation', 'cache_train_mb', 'augment', 'label_smoothing', 'weight_decay',
                 'precision')
DATA_SHAPE_KEYS = ('height', 'width', 'channels', 'num_classes')

_ASSIGNMENT = re.compile(r'\s*(\w+)\s*=\s*(\[[^\]]*\]|[^,]*)\s*(?:,|$)')


def parse_overrides(text):
    """'a=1,b=[32,64],c=x' -> {'a': '1', 'b': '[32,64]', 'c': 'x'} (values still strings)."""
    overrides, position = {}, 0
    text = (text or '').strip()
    while position < len(text):
        match = _ASSIGNMENT.match(text, position)
        if not match or match.end() == position:
            raise UserError(f'cannot parse --hparams at {text[position:]!r}; expected key=value,key=value')
        overrides[match.group(1)] = match.group(2).strip()
        position = match.end()
    return overrides


def _coerce(key, text, default):
    """Parses `text` as the type of `default`."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ('true', 'false', '1', '0'):
                raise ValueError
            return text.lower() in ('true', '1')
        if isinstance(default, (list, tuple)):
            return [int(part) for part in text.strip('[]').split(',') if part.strip()]
        return type(default)(text)
    except ValueError:
        raise UserError(f'hparam {key}={text!r} is not a valid {type(default).__name__}') from None


def typed_as_written(text):
    """A value for a key the project does not know (a user's model_fn's own hparam):
    '3' -> 3, '0.5' -> 0.5, 'true' -> True, '[1,2]' -> [1, 2], anything else the string."""
    if text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text.startswith('[') and text.endswith(']'):
        return [typed_as_written(part.strip()) for part in text[1:-1].split(',') if part.strip()]
    return text


def defaults_for(model_module):
    return {**COMMON_DEFAULTS, **model_module.DEFAULT_HPARAMS}


def resolve(model_module, overrides, data_shape=None, saved=None):
    """The hparams of a run.

    Args:
      model_module: a module from estimator_models.registry.MODELS, or a user's model
        (estimator_models.legacy.user_model_fn.UserModel), which takes keys the
        project does not know, typed as written.
      overrides: {key: value string} from --hparams and the training flags.
      data_shape: (height, width, channels, num_classes) of the training data, used
        for the shape keys the user left at 0; None before the data is opened (the
        shape keys may then still be 0: everything else is checked already).
      saved: hparams read back from model_dir, or None on a first run.
    """
    defaults = defaults_for(model_module)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown and not getattr(model_module, 'ACCEPTS_UNKNOWN_HPARAMS', False):
        raise UserError(f'unknown hparam {unknown[0]!r}; known: {", ".join(sorted(defaults))}')
    parsed = {key: _coerce(key, value, defaults[key]) if key in defaults else typed_as_written(value)
              for key, value in overrides.items()}
    choices = {**COMMON_CHOICES, **model_module.HPARAM_CHOICES}
    if saved is not None:
        resolved = _resumed(defaults, saved, parsed)
        _check(resolved, choices, shape_known=True)
        return resolved
    resolved = {**defaults, **parsed}
    if receivers.reads_boxes(resolved) and 'augment' not in parsed:
        resolved['augment'] = 'none'  # a model's default warps would move the image under its boxes
    for key, value in zip(DATA_SHAPE_KEYS, data_shape or ()):
        if not resolved[key]:
            resolved[key] = int(value)
    _check(resolved, choices, shape_known=data_shape is not None)
    return resolved


def _resumed(defaults, saved, parsed):
    for key, value in parsed.items():
        if key not in TRAINING_KEYS and saved.get(key) != value:
            raise UserError(f'hparam {key}={value} differs from {key}={saved.get(key)} saved in '
                            f'model_dir; use a new --model_dir to change it')
    # Keys added since the run was saved take their defaults.
    return {**defaults, **saved, **parsed}


def _check(hparams, choices, shape_known):
    for key, allowed in choices.items():
        if hparams[key] not in allowed:
            raise UserError(f'hparam {key}={hparams[key]!r} must be one of {", ".join(allowed)}')
    # Shape keys left at 0 are filled from the data, once it is opened.
    shape_keys = tuple(key for key in DATA_SHAPE_KEYS if shape_known or hparams[key] != 0)
    for key in shape_keys + POSITIVE_KEYS:
        if key in hparams and hparams[key] <= 0:
            raise UserError(f'hparam {key} must be positive, got {hparams[key]}')
    for key in NON_NEGATIVE_KEYS:
        if key in hparams and hparams[key] < 0:
            raise UserError(f'hparam {key} must be 0 or more, got {hparams[key]}')
    for key, value in hparams.items():
        if isinstance(value, list) and key in LAYER_SIZE_LISTS and (
                not value or min(value) <= 0):
            raise UserError(f'hparam {key} must list positive sizes, got {value}')
    if 'channels' in shape_keys and hparams['channels'] not in (1, 3):
        raise UserError(f'hparam channels must be 1 or 3, got {hparams["channels"]}')
    recurrent.check_cell(hparams)
    if 'backbone' in hparams:
        backbones.check_hparams(hparams)
    if 'grid' in hparams:
        regions.parse_grid(hparams['grid'])
    if receivers.reads_boxes(hparams):
        _check_boxes_fit_pixels(hparams)
    for key in ('dropout', 'input_dropout', 'label_smoothing'):
        if not 0.0 <= hparams[key] < 1.0:
            raise UserError(f'hparam {key} must lie in [0, 1), got {hparams[key]}')


def _check_boxes_fit_pixels(hparams):
    """Boxes are fractions of the image as stored: only a stretch keeps them in place."""
    if hparams['resize'] != 'resize':
        raise UserError(f'regions=boxes needs resize=resize: resize={hparams["resize"]} would move '
                        'the image under its boxes')
    if hparams.get('augment', 'none') != 'none':
        raise UserError(f'regions=boxes needs augment=none: augment={hparams["augment"]} would move '
                        'the image under its boxes')


def load_run(model_dir):
    """The run record saved in model_dir ({'model', 'data', 'eval_data', 'hparams'}), or None."""
    path = os.path.join(model_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as stream:
            return json.load(stream)
    except (OSError, ValueError) as error:
        raise UserError(f'cannot read {path}: {error}') from None


def save_run(model_dir, run):
    """Writes the run record atomically (a crash never leaves half a file)."""
    path = os.path.join(model_dir, RUN_FILE)
    try:
        os.makedirs(model_dir, exist_ok=True)
        with open(path + '.tmp', 'w') as stream:
            json.dump(run, stream, indent=2, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(path + '.tmp', path)
    except OSError as error:
        raise UserError(f'cannot write {path}: {error.strerror or error}') from None
