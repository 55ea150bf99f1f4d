"""The recurrent stack every model ends in, and the implementations it can run on.

`rnn_implementation` chooses how an LSTM runs; all of them hold the same variables under
the same names and give the same outputs (tests/test_recurrent.py), so a run may switch
between them on resume or warm start:

  keras  Keras' LSTM/GRU layers: a while loop of small ops per step.
  fused  one op per layer on the CPU (estimator_models.layers.kernels), LSTM only.
  cudnn  cuDNN's kernel (CudnnRNNV3) on a GPU, LSTM only.
  unmasked  Keras' layers run without a mask over the end-padded steps, each sequence's
         output gathered at its last true step, the backward direction run on each
         sequence reversed by its length (estimator_models.layers.unmasked_recurrent).
         End padding cannot reach earlier steps, so the true steps' outputs are the
         masked layers'; and tf2onnx maps this loop to ONNX's LSTM and GRU ops, which it
         cannot do for a masked one. ONNX exports build their graph with it.
  auto   cudnn where a GPU is visible, else fused where its kernel builds, else keras
         (saying why in one line); GRU always runs on keras.

Serving graphs (PREDICT mode) use keras (TensorFlow Serving has no custom ops), or
unmasked when it is asked for by name (the ONNX export does).
"""

import functools

import tensorflow as tf

from estimator_models.errors import UserError
from estimator_models.layers import fused_recurrent, kernels, pooling, precision, unmasked_recurrent

IMPLEMENTATIONS = ('auto', 'keras', 'fused', 'cudnn', 'unmasked')
_LSTM_LAYERS = {'fused': fused_recurrent.FusedLSTM, 'cudnn': fused_recurrent.CudnnLSTM}


def pooled_recurrent_stack(sequence, hparams, mode, lengths=None):
    """The recurrent stack, its last layer's outputs pooled over the true steps as the
    `pooling` hparam says (estimator_models.layers.pooling).

    Args: as recurrent_stack's; hparams also give `pooling` and `attention_units`.

    Returns:
      (float32 [B, U] pooled outputs, float32 [B, T] attention weights, or None unless
      pooling is 'attention').
    """
    if hparams['pooling'] == 'last':
        return recurrent_stack(sequence, hparams, mode, lengths), None
    outputs = recurrent_stack(sequence, hparams, mode, lengths, return_sequences=True)  # [B, T, U]
    mask = None if lengths is None else tf.sequence_mask(lengths, maxlen=tf.shape(sequence)[1])
    return pooling.pool_steps(outputs, mask, hparams['pooling'], hparams['attention_units'])


def recurrent_stack(sequence, hparams, mode, lengths=None, return_sequences=False):
    """Runs `rnn_layers` recurrent layers over a sequence and returns the final output.

    Args:
      sequence: [B, T, F], float32; or bfloat16 (a bfloat16 CNN's features), which the
        fused LSTM reads as it is and every other implementation as float32.
      hparams: dict with `cell` ('lstm' | 'gru'), `rnn_units`, `rnn_layers`,
        `bidirectional`, `dropout` (applied between layers and to the output),
        `input_dropout` (applied to the sequence before the first layer),
        `gru_reset_after` (GRU: reset gate after the recurrent matmul, Keras' default,
        or before it, as TF1's GRUCell), `rnn_implementation` and `precision`
        (mixed_bfloat16: the fused LSTM's input projection and recurrent products in
        bfloat16 while training).
      mode: a tf.estimator.ModeKeys; dropout is active in TRAIN.
      lengths: int32 [B] true lengths, or None when every sequence is T long. Steps at
        or past a sequence's length are masked: they never change its output.

      return_sequences: return the last layer's output at every step instead.

    Returns:
      float32 [B, U], U = rnn_units (x2 if bidirectional): the last layer's output at
      each sequence's last true step (for the backward direction, its first step); with
      `return_sequences`, float32 [B, T, U] (padding steps' outputs mean nothing).
    """
    training = mode == tf.estimator.ModeKeys.TRAIN
    chosen = implementation(hparams, mode)
    if chosen != 'fused':
        sequence = tf.cast(sequence, tf.float32)
    if hparams.get('input_dropout'):
        sequence = tf.keras.layers.Dropout(
            hparams['input_dropout'], name='rnn_input_dropout')(sequence, training=training)
    if chosen == 'unmasked':
        return unmasked_recurrent.recurrent_stack(sequence, hparams, training, lengths, return_sequences)
    mask = None
    if lengths is not None:
        mask = tf.sequence_mask(lengths, maxlen=tf.shape(sequence)[1])
    outputs = sequence
    for index in range(hparams['rnn_layers']):
        layer_sequences = return_sequences or index < hparams['rnn_layers'] - 1
        layer = _recurrent_layer(hparams, mode, chosen, layer_sequences, name=f'rnn_{index}')
        outputs = layer(outputs, mask=mask, training=training)
        if hparams['dropout']:
            outputs = tf.keras.layers.Dropout(
                hparams['dropout'], name=f'rnn_dropout_{index}')(outputs, training=training)
    return outputs


def check_cell(hparams):
    """Refuses an `rnn_implementation` that cannot run `cell` (checked with the other
    hparams, before any data is read, and again when a graph is built)."""
    requested = hparams.get('rnn_implementation', 'auto')
    if requested in _LSTM_LAYERS and hparams['cell'] != 'lstm':
        raise UserError(f'rnn_implementation={requested} runs LSTM only; use cell=lstm, '
                        f'or rnn_implementation=keras or auto for cell={hparams["cell"]}')


def implementation(hparams, mode=None):
    """The implementation a graph of `mode` runs: `rnn_implementation` with `auto` resolved."""
    check_cell(hparams)
    requested = hparams.get('rnn_implementation', 'auto')
    if requested == 'unmasked':
        return requested
    if mode == tf.estimator.ModeKeys.PREDICT or hparams['cell'] != 'lstm':
        return 'keras'
    if requested == 'auto':
        if tf.config.list_physical_devices('GPU'):
            return 'cudnn'
        return 'fused' if kernels.available() else 'keras'
    if requested == 'cudnn' and not tf.config.list_physical_devices('GPU'):
        raise UserError('rnn_implementation=cudnn needs a GPU and TensorFlow sees none; '
                        'use rnn_implementation=auto')
    if requested == 'fused':
        try:
            kernels.load()
        except kernels.KernelUnavailable as error:
            raise UserError(f'rnn_implementation=fused: {error}') from None
    return requested


def _recurrent_layer(hparams, mode, chosen, return_sequences, name):
    """One layer of the stack, named as Keras names it, so checkpoints keep their keys."""
    units = hparams['rnn_units']
    if chosen in _LSTM_LAYERS:
        layer_class = _LSTM_LAYERS[chosen]
        if chosen == 'fused':
            layer_class = functools.partial(layer_class, arithmetic_dtype=precision.compute_dtype(hparams, mode))
        if hparams['bidirectional']:
            return fused_recurrent.Bidirectional(layer_class, units, name, return_sequences,
                                                 name=f'bidirectional_{name}')
        return layer_class(units, return_sequences=return_sequences, name=name)
    layer = unmasked_recurrent.keras_layer(hparams, name, return_sequences)
    if hparams['bidirectional']:
        layer = tf.keras.layers.Bidirectional(layer, name=f'bidirectional_{name}')
    return layer
