"""Warm start: a new run's variables initialised from a checkpoint before its first step.

The checkpoint is either this project's (any model's: variables are taken where name
and shape agree, e.g. `cnn/cnn_conv_0/kernel` of cnn_lstm into temporal_cnn_lstm's
per-frame CNN), or a TF1 recurrent model's, converted first by
estimator_models.legacy.tf1_checkpoints into MODEL_DIR/warm_start/. Either way the
Estimator does the initialising, through tf.estimator.WarmStartSettings.
"""

import os
import re

import tensorflow as tf

from estimator_models.errors import UserError
from estimator_models.legacy import tf1_checkpoints

CONVERTED_PREFIX = os.path.join('warm_start', 'converted')


def checkpoint_path(path, flag='--warm_start_from'):
    """The checkpoint a flag's value names: a model_dir's latest checkpoint, or a
    checkpoint prefix."""
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise UserError(f'{flag}={path}: the directory holds no checkpoint')
        return latest
    if not tf.compat.v1.train.checkpoint_exists(path):
        raise UserError(f'{flag}={path}: no such checkpoint or model_dir')
    return path


def settings(source, target_shapes, variables_regex, model_dir, forget_bias=1.0):
    """The WarmStartSettings for a new run, and lines saying what they take.

    Args:
      source: --warm_start_from, a model_dir or checkpoint prefix.
      target_shapes: {name: shape} of the new model's trainable variables.
      variables_regex: --warm_start_vars; only target variables whose names it matches
        (from the start, as TensorFlow's variable scopes are matched) are warm-started.
      model_dir: the new run's model_dir, where a converted TF1 checkpoint is written.
      forget_bias: the TF1 LSTMCell's forget_bias, for a TF1 checkpoint.

    Every selected target variable found in the checkpoint must have the same shape;
    from a TF1 checkpoint, every converted variable must also exist in the target.
    Anything that does not fit is an error listing it.
    """
    checkpoint = checkpoint_path(source)
    try:
        pattern = re.compile(variables_regex)
    except re.error as error:
        raise UserError(f'--warm_start_vars={variables_regex!r} is not a regular expression: {error}') from None
    source_shapes = dict(tf.train.list_variables(checkpoint))
    report = []
    if tf1_checkpoints.is_tf1_recurrent(source_shapes):
        checkpoint, mapping = tf1_checkpoints.convert_checkpoint(
            checkpoint, os.path.join(model_dir, CONVERTED_PREFIX), forget_bias)
        report += ['converted TF1 checkpoint:'] + ['  ' + line for line in tf1_checkpoints.describe(mapping)]
        source_shapes = dict(tf.train.list_variables(checkpoint))
        absent = sorted(set(source_shapes) - set(target_shapes))
        if absent:
            raise UserError(f'variables converted from {source} that the model does not have: '
                            f'{", ".join(absent)} (model: {", ".join(sorted(target_shapes))})')
    selected = sorted(name for name in target_shapes if pattern.match(name))
    taken = [name for name in selected if name in source_shapes]
    misfits = [f'{name} {list(source_shapes[name])} vs {list(target_shapes[name])}'
               for name in taken if list(source_shapes[name]) != list(target_shapes[name])]
    if misfits:
        raise UserError(f'variables of {source} whose shapes do not fit the model (checkpoint vs model): '
                        f'{"; ".join(misfits)}{_gru_hint(misfits)}')
    if not taken:
        raise UserError(f'no variable of {source} matching --warm_start_vars={variables_regex!r} '
                        f'is in the model (model: {", ".join(sorted(target_shapes))})')
    left = sorted(set(target_shapes) - set(taken))
    report.append(f'warm start from {checkpoint}: {len(taken)} variables '
                  f'({", ".join(taken)}); {len(left)} start from their initializers'
                  + (f' ({", ".join(left)})' if left else ''))
    # Exact names: TensorFlow matches each entry against GLOBAL_VARIABLES as a scope regex.
    warm = tf.estimator.WarmStartSettings(
        ckpt_to_initialize_from=checkpoint, vars_to_warm_start=[re.escape(name) + ':' for name in taken])
    return warm, report


def _gru_hint(misfits):
    if any('gru_cell/bias' in line for line in misfits):
        return ('. A TF1 GRUCell applies its reset gate before the matmul: train with '
                '--hparams=gru_reset_after=false')
    return ''
