"""The models this pipeline runs, by name.

Each module provides:
  model_fn(features, labels, mode, params)  the Estimator model_fn
  KIND                 input_fns.IMAGE or input_fns.CLIP: what its features hold
  DEFAULT_DATA         the embedded dataset it trains on when --data is omitted
  DEFAULT_TRAIN_STEPS  the steps of a default run
  DEFAULT_HPARAMS      its hparams beyond estimator_models.hparams.COMMON_DEFAULTS
  HPARAM_CHOICES       the allowed values of its string hparams
"""

from estimator_models import cnn_lstm, pixel_row_lstm, temporal_cnn_lstm
from input_fns.errors import UserError

MODELS = {
    'pixel_row_lstm': pixel_row_lstm,
    'cnn_lstm': cnn_lstm,
    'temporal_cnn_lstm': temporal_cnn_lstm,
}


def get(name):
    """The model module registered as `name`."""
    if name not in MODELS:
        raise UserError(f'unknown model {name!r}; choose one of {", ".join(MODELS)}')
    return MODELS[name]
