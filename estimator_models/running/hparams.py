"""Hyperparameters: defaults, `--hparams=k=v,k=v` overrides, and the copy kept in model_dir.

Every hparam is declared once, as an estimator_models.layers.hparam_declarations.HParam:
those of every model in estimator_models.running.common_hparams, each model's own in its
module (estimator_models.registry). The declarations give the defaults, how a value is
parsed and checked, and what a resumed run may change; docs/hparams.md is written from
them (estimator_models.running.hparams_doc).

A run's hparams are one flat dict of ints, floats, bools, strings and int lists. The
first training run writes them, with the model name and data specs, to
MODEL_DIR/hparams.json; later runs (evaluate, export, a resumed train) read them back,
so they need no repeated flags. On resume only hparams declared resumable may change:
anything else would not fit the checkpoint.
"""

import json
import os
import re

from estimator_models.errors import UserError, with_closest
from estimator_models.layers import backbones, recurrent, regions
from estimator_models.layers.hparam_declarations import defaults_of
from estimator_models.running.common_hparams import COMMON_HPARAMS
from estimator_models.serving import receivers

RUN_FILE = 'hparams.json'
COMMON_DEFAULTS = defaults_of(COMMON_HPARAMS)
# In the order of resolve's data_shape.
DATA_SHAPE_DECLARATIONS = tuple(declared for declared in COMMON_HPARAMS if declared.from_data)

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


def declarations_for(model_module):
    """{name: HParam}: the common hparams and the model's own (its module's HPARAMS)."""
    return {declared.name: declared for declared in COMMON_HPARAMS + tuple(model_module.HPARAMS)}


def defaults_for(model_module):
    """{name: default}: the declared defaults under the model's DEFAULT_HPARAMS (where a
    user's module may also give hparams of its own that nothing declares)."""
    return {**COMMON_DEFAULTS, **defaults_of(model_module.HPARAMS), **model_module.DEFAULT_HPARAMS}


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
    declared = declarations_for(model_module)
    defaults = defaults_for(model_module)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown and not getattr(model_module, 'ACCEPTS_UNKNOWN_HPARAMS', False):
        listing = f'known: {", ".join(sorted(defaults))}'
        raise UserError(f'unknown hparam {unknown[0]!r}; {with_closest(unknown[0], defaults, listing)}')
    parsed = {key: _coerce(key, value, defaults[key]) if key in defaults else typed_as_written(value)
              for key, value in overrides.items()}
    if saved is not None:
        resolved = _resumed(declared, defaults, saved, parsed)
        _check(resolved, declared, shape_known=True)
        return resolved
    resolved = {**defaults, **parsed}
    if receivers.reads_boxes(resolved) and 'augment' not in parsed:
        resolved['augment'] = 'none'  # a model's default warps would move the image under its boxes
    _check(resolved, declared, shape_known=False)
    return with_data_shape(resolved, data_shape) if data_shape else resolved


def with_data_shape(resolved, data_shape):
    """The hparams `resolved` (by resolve, without a data_shape) with the shape keys left
    at 0 taken from `data_shape`, (height, width, channels, num_classes) of the training
    data, and checked: the rest was checked already."""
    filled = {}
    for declared, value in zip(DATA_SHAPE_DECLARATIONS, data_shape):
        if not resolved[declared.name]:
            filled[declared.name] = int(value)
            _check_declared(declared, int(value))
    shaped = {**resolved, **filled}
    if filled and 'backbone' in shaped:
        backbones.check_size(shaped)
    return shaped


def _resumed(declared, defaults, saved, parsed):
    for key, value in parsed.items():
        resumable = key in declared and declared[key].resumable
        if not resumable and saved.get(key) != value:
            raise UserError(f'hparam {key}={value} differs from {key}={saved.get(key)} saved in '
                            f'model_dir; use a new --model_dir to change it')
    # Keys added since the run was saved take their defaults.
    return {**defaults, **saved, **parsed}


def _check(hparams, declared, shape_known):
    for name, declaration in declared.items():
        # Shape keys left at 0 are filled from the data, once it is opened.
        if declaration.from_data and not shape_known and hparams[name] == 0:
            continue
        _check_declared(declaration, hparams[name])
    recurrent.check_cell(hparams)
    if 'backbone' in hparams:
        backbones.check_hparams(hparams)
    if 'grid' in hparams:
        regions.parse_grid(hparams['grid'])
    if receivers.reads_boxes(hparams):
        _check_boxes_fit_pixels(hparams)


def _check_declared(declaration, value):
    try:
        declaration.check(value)
    except ValueError as error:
        raise UserError(str(error)) from None


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
