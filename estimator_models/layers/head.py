"""The classification head shared by every model.

It owns everything after the logits: predictions, the loss, eval metrics, the train
op with its learning-rate schedule and gradient clipping, and train summaries, so the
three models differ only in how they compute logits.
"""

import tensorflow as tf

from estimator_models.errors import UserError
from estimator_models.layers import summaries

ModeKeys = tf.estimator.ModeKeys
TOP_K = 5


def classification_head(logits, labels, mode, params, attention=None, backbone=None):
    """Builds the EstimatorSpec for a K-way classifier.

    Args:
      logits: float32 [B, K].
      labels: int32 [B] class indices (None in PREDICT mode).
      mode: a tf.estimator.ModeKeys.
      params: the run's hparams dict (see estimator_models.running.hparams); TRAIN mode also
        reads `train_steps` from it for the learning-rate schedule and progress.
      attention: float32 [B, T] attention weights over the steps (pooling=attention), or None.
      backbone: the model's estimator_models.layers.backbones.Backbone, or None: the train
        op leaves a frozen one alone, trains a fine-tuned one at `backbone_learning_rate_scale`
        times the learning rate, and a new run loads its `backbone_weights`.

    Returns:
      tf.estimator.EstimatorSpec whose predictions are `classes` int64 [B],
      `probabilities` float32 [B, K], `logits` float32 [B, K] and, given, `attention`.
    """
    predictions = _class_predictions(logits)
    if attention is not None:
        predictions['attention'] = attention
    if mode == ModeKeys.PREDICT:
        # The SavedModel signatures over these predictions: estimator_models.serving.receivers.
        return tf.estimator.EstimatorSpec(mode, predictions=predictions)

    loss = cross_entropy(labels, logits, params.get('label_smoothing', 0.0))
    if mode == ModeKeys.EVAL:
        return tf.estimator.EstimatorSpec(
            mode, loss=loss, predictions=predictions,
            eval_metric_ops=_eval_metrics(logits, labels, predictions))

    batch_accuracy = tf.reduce_mean(tf.cast(
        tf.equal(predictions['classes'], tf.cast(labels, tf.int64)), tf.float32))
    return _training_spec(loss, batch_accuracy, params, backbone)


def per_frame_head(logits, frame_labels, lengths, mode, params, backbone=None):
    """Builds the EstimatorSpec of a classifier of every frame of a clip.

    Args:
      logits: float32 [B, T, K].
      frame_labels: int32 [B, T] class per frame, anything past a clip's length (None in
        PREDICT mode).
      lengths: int32 [B] true clip lengths: only frames before them count, in the loss
        and in every metric.
      mode, params, backbone: as classification_head's.

    Returns:
      tf.estimator.EstimatorSpec whose predictions are `classes` int64 [B, T],
      `probabilities` float32 [B, T, K] and `logits`; its `accuracy` is over true frames.
      Frames past a clip's length answer logits 0 (class 0, uniform probabilities), so
      every implementation of the recurrent stack and every export agrees on them too.
    """
    true_frames = tf.sequence_mask(lengths, maxlen=tf.shape(logits)[1], dtype=tf.float32)  # [B, T]
    logits = tf.where(true_frames[..., tf.newaxis] > 0, logits, tf.zeros_like(logits))
    predictions = _class_predictions(logits)
    if mode == ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions=predictions)
    if frame_labels is None:
        raise UserError('head=per_frame needs frame labels, and this data has none')
    in_range = tf.debugging.assert_less(
        tf.boolean_mask(frame_labels, true_frames > 0), tf.cast(tf.shape(logits)[-1], frame_labels.dtype),
        message='a frame label beyond num_frame_classes')
    with tf.control_dependencies([in_range]):
        frame_labels = tf.identity(frame_labels)
    loss = cross_entropy(frame_labels, logits, params.get('label_smoothing', 0.0), weights=true_frames)
    if mode == ModeKeys.EVAL:
        return tf.estimator.EstimatorSpec(mode, loss=loss, predictions=predictions, eval_metric_ops={
            'accuracy': frame_accuracy(frame_labels, predictions['classes'], true_frames),
            'num_examples': example_count(lengths),
            'num_frames': running_total(tf.cast(tf.reduce_sum(true_frames), tf.int64), 'num_frames'),
        })
    correct = tf.cast(tf.equal(predictions['classes'], tf.cast(frame_labels, tf.int64)), tf.float32)
    batch_accuracy = tf.reduce_sum(correct * true_frames) / tf.reduce_sum(true_frames)
    return _training_spec(loss, batch_accuracy, params, backbone)


def _class_predictions(logits):
    """`classes` (argmax over the last axis), `probabilities` and `logits` of logits [..., K]."""
    return {
        'classes': tf.argmax(logits, axis=-1),
        'probabilities': tf.nn.softmax(logits, name='probabilities'),
        'logits': logits,
    }


def _training_spec(loss, batch_accuracy, params, backbone):
    """The TRAIN EstimatorSpec: the train op, its summaries, and the backbone's loader."""
    train_op, learning_rate, gradient_norm = _train_op(loss, params, backbone)
    tf.compat.v1.summary.scalar('accuracy', batch_accuracy)
    tf.compat.v1.summary.scalar('learning_rate', learning_rate)
    tf.compat.v1.summary.scalar('gradient_norm', gradient_norm)
    return tf.estimator.EstimatorSpec(ModeKeys.TRAIN, loss=loss, train_op=train_op, scaffold=_scaffold(backbone))


def cross_entropy(labels, logits, label_smoothing=0.0, weights=1.0):
    """Mean softmax cross-entropy of int labels [...] against logits [..., K], weighted;
    with `label_smoothing` s the target is 1 - s + s/K on the label and s/K elsewhere."""
    if not label_smoothing:
        return tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits, weights=weights)
    targets = tf.one_hot(labels, tf.shape(logits)[-1])
    return tf.compat.v1.losses.softmax_cross_entropy(targets, logits, weights=weights,
                                                     label_smoothing=label_smoothing)


def frame_accuracy(frame_labels, classes, true_frames):
    """The accuracy metric over true frames only: (value, update_op); frame_labels and
    classes [B, T], true_frames float32 [B, T], 1 on a clip's frames and 0 on padding."""
    return tf.compat.v1.metrics.accuracy(frame_labels, classes, weights=true_frames)


def _scaffold(backbone):
    """A Scaffold that loads the backbone's weights into a new run, or None."""
    if backbone is None or backbone.init_fn is None:
        return None
    return tf.compat.v1.train.Scaffold(init_fn=backbone.init_fn)


def _eval_metrics(logits, labels, predictions):
    classes = predictions['classes']
    metrics = {
        'accuracy': tf.compat.v1.metrics.accuracy(labels, classes),
        'num_examples': example_count(labels),
    }
    if logits.shape[-1] > TOP_K:
        in_top_k = tf.math.in_top_k(tf.cast(labels, tf.int32), logits, TOP_K)
        metrics[f'top_{TOP_K}_accuracy'] = tf.compat.v1.metrics.mean(tf.cast(in_top_k, tf.float32))
    metrics.update(summaries.eval_metrics(labels, predictions['probabilities'], classes))
    if 'attention' in predictions:
        metrics['attention'] = summaries.attention_image_metric(predictions['attention'])
    return metrics


def example_count(labels):
    """A metric counting the examples evaluated: (value, update_op)."""
    return running_total(tf.size(labels, out_type=tf.int64), 'num_examples')


def running_total(amount, name):
    """A metric summing int64 `amount` over the evaluation: (value, update_op)."""
    total = tf.compat.v1.Variable(
        0, dtype=tf.int64, trainable=False, name=name,
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES, tf.compat.v1.GraphKeys.METRIC_VARIABLES])
    update = total.assign_add(amount)
    return total.read_value(), update


def learning_rate_schedule(global_step, params):
    """Linear warm-up over `warmup_steps`, then `lr_schedule` ('cosine' decays to 5% at
    `train_steps`; 'constant' holds) from `learning_rate`."""
    base = params['learning_rate']
    step = tf.cast(global_step, tf.float32)
    warmup = float(max(1, params['warmup_steps']))
    if params['lr_schedule'] == 'cosine':
        decay_steps = max(1, params['train_steps'] - params['warmup_steps'])
        progress_fraction = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        base = base * (0.05 + 0.95 * 0.5 * (1.0 + tf.cos(3.141592653589793 * progress_fraction)))
    return base * tf.minimum(1.0, (step + 1.0) / warmup)


def _train_op(loss, params, backbone=None):
    """Adam on the gradients clipped to global norm `clip_norm`.

    Returns (train_op, learning_rate, global gradient norm before clipping).
    """
    global_step = tf.compat.v1.train.get_or_create_global_step()
    learning_rate = learning_rate_schedule(global_step, params)
    optimizer = tf.compat.v1.train.AdamOptimizer(learning_rate)
    head_variables, backbone_variables = _trained_variables(params, backbone)
    gradients, variables = zip(*optimizer.compute_gradients(
        loss, var_list=head_variables + backbone_variables))
    gradient_norm = tf.linalg.global_norm(gradients)
    # A step whose loss or gradients are not finite changes no weight by its gradients,
    # so the checkpoint saved at that step (before training stops) is still a good one.
    finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(gradient_norm))
    # tf.clip_by_global_norm's scale, or 0 on such a step: multiply_no_nan then gives
    # zeros even where a gradient is NaN, in one op per gradient.
    clip_norm = params['clip_norm']
    scale = tf.where(finite, clip_norm * tf.minimum(1.0 / gradient_norm, 1.0 / clip_norm), 0.0)
    clipped = [tf.math.multiply_no_nan(gradient, scale) for gradient in gradients]
    # Keras layers do not put their updates (e.g. batch-norm statistics) in
    # UPDATE_OPS by themselves; models that have any add them there.
    update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    updates = list(zip(clipped, variables))
    with tf.control_dependencies(update_ops):
        train_op = optimizer.apply_gradients(updates[:len(head_variables)], global_step=global_step)
        if backbone_variables:
            # Adam's step does not scale with the gradient: a smaller rate needs its own optimizer.
            backbone_optimizer = tf.compat.v1.train.AdamOptimizer(
                learning_rate * params['backbone_learning_rate_scale'], name='Adam_backbone')
            train_op = tf.group(train_op, backbone_optimizer.apply_gradients(
                updates[len(head_variables):]))
    if params.get('weight_decay'):
        # Only models with a backbone have its scale (pixel_row_lstm has none).
        rates = [learning_rate] * len(head_variables) + [
            learning_rate * params.get('backbone_learning_rate_scale', 1.0)] * len(backbone_variables)
        with tf.control_dependencies([train_op]):
            train_op = decoupled_weight_decay(variables, rates, params['weight_decay'], finite)
    return train_op, learning_rate, gradient_norm


def decoupled_weight_decay(variables, rates, weight_decay, finite=True):
    """AdamW's decay, kept apart from the gradient (Loshchilov and Hutter 2019): every
    kernel (rank 2 or more) shrinks by its learning rate x weight_decay of itself; biases
    and BatchNorm scales and offsets do not. Nothing shrinks on a step that was skipped
    as not finite. Returns the op."""
    keep = tf.cast(finite, tf.float32)
    return tf.group([variable.assign_sub(keep * rate * weight_decay * variable)
                     for variable, rate in zip(variables, rates) if variable.shape.rank >= 2])


def _trained_variables(params, backbone):
    """(variables the main optimizer trains, backbone variables trained at a scaled rate).

    A frozen backbone's variables are in neither; a fine-tuned one at the full rate
    trains with the rest, so its checkpoints have the same keys as a model without one."""
    variables = tf.compat.v1.trainable_variables()
    if backbone is None or (backbone.trainable and params['backbone_learning_rate_scale'] == 1.0):
        return variables, []
    in_backbone = {variable.name for variable in backbone.variables}
    head_variables = [variable for variable in variables if variable.name not in in_backbone]
    if not backbone.trainable:
        return head_variables, []
    return head_variables, [variable for variable in variables if variable.name in in_backbone]
