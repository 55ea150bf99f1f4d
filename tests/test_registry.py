"""The registry names every model, and every model module offers what the pipeline reads."""

import pytest

from estimator_models import registry
from estimator_models.errors import UserError
from estimator_models.running import hparams
from input_fns import CLIP, IMAGE, embedded


def test_registry_holds_the_three_models():
    assert list(registry.MODELS) == ['pixel_row_lstm', 'cnn_lstm', 'temporal_cnn_lstm']


@pytest.mark.parametrize('name', list(registry.MODELS))
def test_model_modules_declare_kind_data_and_defaults(name):
    module = registry.get(name)
    assert callable(module.model_fn)
    assert module.KIND in (IMAGE, CLIP)
    assert embedded.EMBEDDED[module.DEFAULT_DATA].kind == module.KIND
    assert module.DEFAULT_TRAIN_STEPS > 0
    assert set(module.HPARAM_CHOICES) <= set(hparams.defaults_for(module))


def test_unknown_model_is_a_named_error():
    with pytest.raises(UserError, match="unknown model 'resnet'; choose one of pixel_row_lstm"):
        registry.get('resnet')
