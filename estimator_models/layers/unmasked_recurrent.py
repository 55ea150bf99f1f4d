"""The recurrent stack run without a mask: the form an ONNX export converts.

A masked Keras LSTM or GRU becomes a while loop over tensor lists that tf2onnx cannot
map (BUILD_NOTES.md, Traps converting to ONNX). Run unmasked, the same layer maps to
ONNX's own LSTM or GRU op. It gives the masked layer's outputs on every true step,
because sequences are padded at their end and a step's output depends only on the steps
before it:

  forward    the layer over the padded sequence; its output at each sequence's last
             true step is the masked layer's final output.
  backward   the layer over each sequence reversed within its length, so the padding
             stays at the end; reversed back the same way, its outputs line up with the
             forward ones.

The layers keep Keras' names (`rnn_0/lstm_cell/kernel`,
`bidirectional_rnn_0/backward_rnn_0/lstm_cell/kernel`, ...), so this form restores
every checkpoint of the others (estimator_models.layers.recurrent).
"""

import tensorflow as tf


def recurrent_stack(sequence, hparams, training, lengths=None, return_sequences=False):
    """recurrent.recurrent_stack's outputs, computed unmasked.

    Args:
      sequence: float32 [B, T, F], each sequence's padding (if any) after its true steps.
      hparams: as recurrent.recurrent_stack's.
      training: whether dropout is active.
      lengths: int32 [B] true lengths, or None when every sequence is T long.
      return_sequences: return the last layer's output at every step.

    Returns:
      float32 [B, U] (each sequence's final output), or with `return_sequences`
      float32 [B, T, U], equal to the masked stack's on true steps (padding steps'
      outputs mean nothing).
    """
    if lengths is None:
        lengths = tf.fill(tf.shape(sequence)[:1], tf.shape(sequence)[1])
    outputs = sequence
    for index in range(hparams['rnn_layers']):
        layer_sequences = return_sequences or index < hparams['rnn_layers'] - 1
        name = f'rnn_{index}'
        if hparams['bidirectional']:
            layer = UnmaskedBidirectional(hparams, name, layer_sequences, name=f'bidirectional_{name}')
            outputs = layer(outputs, lengths)
        else:
            outputs = keras_layer(hparams, name)(outputs)                          # [B, T, U]
            if not layer_sequences:
                outputs = at_last_step(outputs, lengths)                           # [B, U]
        if hparams['dropout']:
            outputs = tf.keras.layers.Dropout(
                hparams['dropout'], name=f'rnn_dropout_{index}')(outputs, training=training)
    return outputs


def at_last_step(outputs, lengths):
    """float32 [B, T, U] -> [B, U]: each row's output at step lengths[b] - 1."""
    rows = tf.range(tf.shape(outputs)[0])
    return tf.gather_nd(outputs, tf.stack([rows, lengths - 1], axis=1))


def keras_layer(hparams, name, return_sequences=True):
    """The Keras LSTM or GRU layer of `cell`, `rnn_units` and `gru_reset_after`, named
    `name`: both forms of the stack build their layers here, so their variables match."""
    if hparams['cell'] == 'gru':
        return tf.keras.layers.GRU(hparams['rnn_units'], reset_after=hparams['gru_reset_after'],
                                   return_sequences=return_sequences, name=name)
    return tf.keras.layers.LSTM(hparams['rnn_units'], return_sequences=return_sequences, name=name)


class UnmaskedBidirectional(tf.keras.layers.Layer):
    """Keras' Bidirectional (its variable names and outputs) over end-padded sequences
    of known lengths, without a mask.

    Called on float32 [B, T, F] and int32 [B] lengths; returns [B, T, 2U] in time order
    (return_sequences) or [B, 2U]: the forward output at the last true step beside the
    backward output after it has read back to the first step.
    """

    def __init__(self, hparams, layer_name, return_sequences, **kwargs):
        super().__init__(**kwargs)
        self.return_sequences = return_sequences
        self.forward_layer = keras_layer(hparams, f'forward_{layer_name}')
        self.backward_layer = keras_layer(hparams, f'backward_{layer_name}')

    def call(self, inputs, lengths):
        forward = self.forward_layer(inputs)                                          # [B, T, U]
        backward = self.backward_layer(reversed_within_lengths(inputs, lengths))     # [B, T, U], last step first
        if not self.return_sequences:
            return tf.concat([at_last_step(forward, lengths), at_last_step(backward, lengths)], axis=-1)
        backward = reversed_within_lengths(backward, lengths)                         # time order
        return tf.concat([forward, backward], axis=-1)


def reversed_within_lengths(sequences, lengths):
    """float32 [B, T, D] -> [B, T, D]: each row's first lengths[b] steps in reverse order,
    the rest in place; its own inverse.

    tf.reverse_sequence computes the same, but tf2onnx 1.17 folds a reverse_sequence
    around an LSTM into a bidirectional ONNX LSTM without the lengths, which reverses
    the padding in too; a gather is left as it is.
    """
    steps = tf.range(tf.shape(sequences)[1])[tf.newaxis, :]                     # [1, T]
    lengths = lengths[:, tf.newaxis]                                             # [B, 1]
    sources = tf.where(steps < lengths, lengths - 1 - steps, steps)              # [B, T]
    rows = tf.broadcast_to(tf.range(tf.shape(sequences)[0])[:, tf.newaxis], tf.shape(sources))
    return tf.gather_nd(sequences, tf.stack([rows, sources], axis=-1))
