"""The models this pipeline runs, by name.

Each module provides:
  model_fn(features, labels, mode, params)  the Estimator model_fn
  KIND                 input_fns.IMAGE or input_fns.CLIP: what its features hold
  DEFAULT_DATA         the embedded dataset it trains on when --data is omitted
  DEFAULT_TRAIN_STEPS  the steps of a default run
  HPARAMS              the declarations (estimator_models.layers.hparam_declarations.HParam)
                       of its hparams beyond estimator_models.running.common_hparams.COMMON_HPARAMS
  DEFAULT_HPARAMS      {name: default} where its default differs from the declaration's,
                       for common hparams or its own (docs/hparams.md shows both)
  HPARAM_CHOICES       the allowed values of its hparams that have choices, from HPARAMS

A name `package.module:function` is a user's own TF1 model_fn instead, given the same
attributes by estimator_models.legacy.user_model_fn.
"""

from estimator_models import cnn_lstm, pixel_row_lstm, temporal_cnn_lstm
from estimator_models.errors import UserError, with_closest
from estimator_models.legacy import user_model_fn

MODELS = {
    'pixel_row_lstm': pixel_row_lstm,
    'cnn_lstm': cnn_lstm,
    'temporal_cnn_lstm': temporal_cnn_lstm,
}


def get(name, kind=None):
    """The model registered as `name`, or the user's model_fn `package.module:function`
    (whose kind, if its module does not declare KIND, is `kind`, default image)."""
    if user_model_fn.is_user_model(name):
        return user_model_fn.load(name, kind)
    if name not in MODELS:
        listing = f'choose one of {", ".join(MODELS)} or give your own model_fn as package.module:function'
        raise UserError(f'unknown model {name!r}; {with_closest(name, MODELS, listing)}')
    return MODELS[name]
