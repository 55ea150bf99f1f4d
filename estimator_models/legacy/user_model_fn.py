"""A user's own TF1 model_fn, named `package.module:function`, run like the built-in models.

The function is any `model_fn(features, labels, mode[, params])` returning a
`tf.estimator.EstimatorSpec`, written with `tf.compat.v1` layers, cells and
optimizers. It receives the documented features (input_fns: `image`, or `frames`
and `length`), int32 class labels, and the run's resolved hparams as `params`.

`UserModel` gives it the interface of the registry's model modules (KIND,
DEFAULT_DATA, ...), and wraps it so that its spec carries what the rest of the
pipeline relies on: `classes` beside the required `probabilities` in PREDICT mode,
`accuracy` and the project's eval metrics when it has none of its own, and the same
input images in TensorBoard.
"""

import importlib
import inspect
import os
import re
import sys
import traceback

import tensorflow as tf

from estimator_models.errors import UserError
from estimator_models.layers import head, summaries
from estimator_models.layers.hparam_declarations import HParam, choices_of
from input_fns import CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY

ModeKeys = tf.estimator.ModeKeys
SPEC_PATTERN = re.compile(r'^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)$')
KINDS = (IMAGE, CLIP)
DEFAULT_DATA = {IMAGE: 'glyph_digits', CLIP: 'moving_glyphs'}
DEFAULT_TRAIN_STEPS = 2000
REQUIRED_ARGS = ('features', 'labels', 'mode')
OPTIONAL_ARGS = ('params',)
KIND_HPARAM = HParam('kind', IMAGE, "which features the model_fn gets, when its module has no KIND",
                     choices=KINDS)


def is_user_model(name):
    """Whether a --model value names a user's function rather than a registered model."""
    return ':' in name


class UserModel:
    """A user's model_fn with the attributes of a registry model module.

    Attributes:
      name: the `package.module:function` it was loaded from.
      KIND: IMAGE or CLIP; the module's own `KIND` attribute if it has one.
      DEFAULT_DATA, DEFAULT_TRAIN_STEPS: the embedded dataset of its kind, and the
        module's `DEFAULT_TRAIN_STEPS` if it has one.
      HPARAMS: the `kind` hparam's declaration.
      DEFAULT_HPARAMS: `kind`, plus the module's `DEFAULT_HPARAMS` if it has them: new
        defaults of the project's hparams, and hparams of its own (undeclared: their
        values take the type of their defaults, unchecked).
      ACCEPTS_UNKNOWN_HPARAMS: True: --hparams keys the project does not know are
        passed through to `params`, typed as written.
    """

    ACCEPTS_UNKNOWN_HPARAMS = True
    HPARAMS = (KIND_HPARAM,)
    HPARAM_CHOICES = choices_of(HPARAMS)

    def __init__(self, name, function, kind, module):
        self.name = name
        self._function = function
        self._passes_params = 'params' in inspect.signature(function).parameters
        self.KIND = kind
        self.DEFAULT_DATA = DEFAULT_DATA[kind]
        self.DEFAULT_TRAIN_STEPS = int(getattr(module, 'DEFAULT_TRAIN_STEPS', DEFAULT_TRAIN_STEPS))
        self.DEFAULT_HPARAMS = {**dict(getattr(module, 'DEFAULT_HPARAMS', {})), 'kind': kind}

    def model_fn(self, features, labels, mode, params):
        """The user's model_fn, checked and completed (see the module docstring)."""
        _show_inputs(features, mode, params, self.KIND)
        arguments = {'features': features, 'labels': labels, 'mode': mode}
        if self._passes_params:
            arguments['params'] = dict(params)
        try:
            spec = self._function(**arguments)
        except UserError:
            raise
        except Exception as error:  # pylint: disable=broad-except
            # The user's own code failed while building its graph: say where, in one line.
            raise UserError(f'{self.name} failed building the {mode} graph{_where(error)}: '
                            f'{type(error).__name__}: {_first_line(error)}') from error
        if not isinstance(spec, tf.estimator.EstimatorSpec):
            raise UserError(f'{self.name} returned {type(spec).__name__} in {mode} mode; '
                            'a model_fn must return a tf.estimator.EstimatorSpec')
        if mode == ModeKeys.PREDICT:
            return spec._replace(predictions=self._serving_predictions(spec.predictions, params))
        if mode == ModeKeys.EVAL:
            return spec._replace(eval_metric_ops=_with_project_metrics(spec, labels))
        return spec

    def _serving_predictions(self, predictions, params):
        """The predictions with `probabilities` [B, K] checked and `classes` filled in."""
        if not isinstance(predictions, dict) or 'probabilities' not in predictions:
            found = ', '.join(sorted(predictions)) if isinstance(predictions, dict) else 'one tensor'
            raise UserError(f'{self.name} must return predictions={{"probabilities": [batch, classes], ...}} '
                            f'in PREDICT mode for serving; it returned {found}')
        probabilities = predictions['probabilities']
        columns = probabilities.shape[-1] if probabilities.shape.rank == 2 else None
        if columns is None or columns != params['num_classes'] or not probabilities.dtype.is_floating:
            raise UserError(f'{self.name}: predictions["probabilities"] must be float [batch, '
                            f'{params["num_classes"]}] (one column per class); it is '
                            f'{probabilities.dtype.name} {probabilities.shape}')
        completed = dict(predictions)
        completed.setdefault('classes', tf.argmax(probabilities, axis=-1))
        return completed


def load(name, kind=None):
    """The UserModel for `package.module:function`, imported from the working directory
    or PYTHONPATH.

    Args:
      name: the --model value.
      kind: IMAGE or CLIP from the run's hparams, for a module without a KIND attribute
        (None: IMAGE).
    """
    match = SPEC_PATTERN.match(name)
    if not match:
        raise UserError(f'--model={name} is neither a registered model nor package.module:function')
    module_name, function_name = match.groups()
    module = _import(module_name, name)
    function = getattr(module, function_name, None)
    if function is None:
        raise UserError(f'module {module_name} ({module.__file__}) has no {function_name}')
    _check_signature(function, name)
    return UserModel(name, function, _kind(module, kind, name), module)


def _import(module_name, name):
    # `bin/train` runs with its own directory first on sys.path; the user's code is
    # found from where they run it, as `python -m` would.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f'cannot import {module_name} for --model={name}: {error}') from None
    except Exception as error:  # pylint: disable=broad-except
        raise UserError(f'importing {module_name} for --model={name} failed{_where(error)}: '
                        f'{type(error).__name__}: {_first_line(error)}') from None


def _check_signature(function, name):
    if not callable(function):
        raise UserError(f'{name} is a {type(function).__name__}, not a model_fn')
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        raise UserError(f'cannot read the arguments of {name}') from None
    given = [key for key, parameter in parameters.items()
             if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    required = [key for key in given if parameters[key].default is inspect.Parameter.empty]
    missing = [key for key in REQUIRED_ARGS if key not in given]
    unknown = [key for key in required if key not in REQUIRED_ARGS + OPTIONAL_ARGS]
    if missing or unknown:
        raise UserError(f'{name}({", ".join(given)}) must take (features, labels, mode[, params]); '
                        + (f'missing {", ".join(missing)}' if missing else f'cannot pass {", ".join(unknown)}'))


def _kind(module, kind, name):
    declared = getattr(module, 'KIND', None)
    if declared is not None and declared not in KINDS:
        raise UserError(f'{name}: module KIND={declared!r} must be one of {", ".join(KINDS)}')
    if declared is not None and kind is not None and kind != declared:
        raise UserError(f'hparam kind={kind} contradicts KIND={declared!r} of the module of {name}')
    if kind is not None and kind not in KINDS:
        raise UserError(f'hparam kind={kind!r} must be one of {", ".join(KINDS)}')
    return declared or kind or IMAGE


def _show_inputs(features, mode, params, kind):
    """The same input images in TensorBoard as the built-in models show."""
    if kind == CLIP:
        summaries.clip_frames(features[FRAMES_KEY] / 255.0, mode, params)
    else:
        summaries.input_images(features[IMAGE_KEY] / 255.0, mode, params)


def _with_project_metrics(spec, labels):
    """The user's eval metrics, over the project's where they have none of the same name:
    `num_examples`, `accuracy` (the best exporter compares it), and when the EVAL predictions hold
    `probabilities`, mean per-class accuracy, confusion matrix and PR curves."""
    predictions = spec.predictions if isinstance(spec.predictions, dict) else {}
    probabilities = predictions.get('probabilities')
    metrics = {'num_examples': head.example_count(labels)}
    if probabilities is not None:
        classes = tf.argmax(probabilities, axis=-1)
        metrics['accuracy'] = tf.compat.v1.metrics.accuracy(labels, classes)
        metrics.update(summaries.eval_metrics(labels, probabilities, classes))
    metrics.update(spec.eval_metric_ops or {})
    if 'accuracy' not in metrics:
        raise UserError('the model_fn returns neither an "accuracy" eval metric nor '
                        'predictions["probabilities"] in EVAL mode')
    return metrics


def _where(error):
    """' at FILE:LINE' of the innermost frame of the traceback outside installed
    packages (the user's line, not TensorFlow's), or ''."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if 'site-packages' not in frame.filename and frame.filename != __file__]
    return f' at {frames[-1].filename}:{frames[-1].lineno}' if frames else ''


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else '(no message)'
