"""Pooling of the recurrent stack's outputs over the true steps of each sequence.

  last       the output at the last true step (the recurrent layer gives it directly)
  mean       the mean of the outputs over the true steps
  max        their elementwise maximum
  attention  additive attention: a weight per step, 0 on padding, summing to 1 over
             the true steps; the weighted sum of the outputs. The weights are exported
             as the `attention` output, to show which steps (frames, rows) mattered.
"""

import tensorflow as tf

POOLINGS = ('last', 'mean', 'max', 'attention')


def pool_steps(outputs, mask, pooling, attention_units):
    """Pools a sequence of outputs over its true steps.

    Args:
      outputs: float32 [B, T, U], the last recurrent layer's output at every step.
      mask: bool [B, T], True on true steps (every sequence has at least one), or None
        when all T steps are true.
      pooling: 'mean', 'max' or 'attention' ('last' is the recurrent layer's own output).
      attention_units: width of the attention scoring layer.

    Returns:
      (float32 [B, U] pooled outputs, float32 [B, T] attention weights or None).
    """
    if mask is None:
        mask = tf.ones(tf.shape(outputs)[:2], tf.bool)
    steps = tf.cast(mask, outputs.dtype)[..., tf.newaxis]                   # [B, T, 1]
    if pooling == 'mean':
        return tf.reduce_sum(outputs * steps, axis=1) / tf.reduce_sum(steps, axis=1), None
    if pooling == 'max':
        lowest = tf.fill(tf.shape(outputs), outputs.dtype.min)
        return tf.reduce_max(tf.where(mask[..., tf.newaxis], outputs, lowest), axis=1), None
    if pooling == 'attention':
        weights = attention_weights(outputs, mask, attention_units)         # [B, T]
        return tf.reduce_sum(outputs * weights[..., tf.newaxis], axis=1), weights
    raise ValueError(f'unknown pooling {pooling!r}')


def attention_weights(outputs, mask, units):
    """score_t = v . tanh(W h_t + b); softmax over the true steps: float32 [B, T], exactly
    0 on padding (its score is the lowest float32 before the softmax: exp underflows to 0.
    Not -inf, which an ONNX export turns into NaN)."""
    hidden = tf.keras.layers.Dense(units, activation='tanh', name='attention_hidden')(outputs)
    scores = tf.keras.layers.Dense(1, use_bias=False, name='attention_score')(hidden)[..., 0]
    scores = tf.where(mask, scores, tf.fill(tf.shape(scores), scores.dtype.min))  # [B, T]
    return tf.nn.softmax(scores, axis=-1)
