"""pixel_row_lstm: each pixel row of an image is one time step of the recurrent stack."""

import tensorflow as tf

from estimator_models.layers import head, recurrent, sequencing, summaries
from estimator_models.layers.hparam_declarations import HParam, choices_of
from input_fns import IMAGE, IMAGE_KEY

KIND = IMAGE
DEFAULT_DATA = 'glyph_digits'
DEFAULT_TRAIN_STEPS = 5000
HPARAMS = (
    HParam('scan', 'rows', 'the steps: pixel rows top to bottom, or columns left to right',
           choices=('rows', 'columns')),
)
DEFAULT_HPARAMS = {
    # Measured on 8,000 handwriting-like digits (docs/models.md, Defaults, measured):
    # light warps gain 0.7 points over none and 0.3 over strong; three times the common
    # learning rate gains 0.4 more (an LSTM over 28 raw pixel rows learns slowly at 0.001
    # in a short run).
    'augment': 'light',
    'learning_rate': 3e-3,
}
HPARAM_CHOICES = choices_of(HPARAMS)


def model_fn(features, labels, mode, params):
    """Estimator model_fn; `params` is the run's hparams dict (estimator_models.running.hparams)."""
    images = features[IMAGE_KEY] / 255.0                                    # [B, H, W, C]
    summaries.input_images(images, mode, params)
    sequence = sequencing.SEQUENCERS[params['scan']](images)                # [B, H, W*C] (rows)
    final, attention = recurrent.pooled_recurrent_stack(sequence, params, mode)  # [B, U], [B, T]
    logits = tf.keras.layers.Dense(params['num_classes'], name='logits')(final)  # [B, K]
    summaries.histograms(mode, params, sequence=sequence, final_state=final, logits=logits)
    return head.classification_head(logits, labels, mode, params, attention)
