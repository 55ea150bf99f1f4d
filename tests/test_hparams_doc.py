"""docs/hparams.md is what the hparam declarations generate."""

import os

from conftest import REPO
from estimator_models.running import hparams_doc
from estimator_models.running.common_hparams import COMMON_HPARAMS


def test_docs_hparams_md_is_generated_from_the_declarations():
    with open(os.path.join(REPO, 'docs', 'hparams.md')) as stream:
        written = stream.read()
    assert written == hparams_doc.markdown(), (
        f'docs/hparams.md differs from the hparam declarations; regenerate it: make docs, '
        f'or {hparams_doc.REGENERATE}')


def _row(text, name):
    return next(line for line in text.splitlines() if line.startswith(f'| `{name}` |'))


def test_a_row_per_hparam_with_the_defaults_each_model_sets():
    text = hparams_doc.markdown()
    assert all(_row(text, declared.name) for declared in COMMON_HPARAMS)
    assert '| `0.001`; pixel_row_lstm: `0.003` |' in _row(text, 'learning_rate')
    assert '| `none`; pixel_row_lstm, cnn_lstm: `light` |' in _row(text, 'augment')
    assert '| `[32,64]`; temporal_cnn_lstm: `[32,64,64]` | list of ints > 0 | cnn_lstm, temporal_cnn_lstm |' in (
        _row(text, 'cnn_filters'))
    assert '| from the data | `1`, `3` | all | no |' in _row(text, 'channels')
    assert '| float in [0, 1) | all | yes |' in _row(text, 'dropout')
    assert '| `image` | `image`, `clip` | your own model_fn |' in _row(text, 'kind')
    assert '\n### `precision`\n' in text and '([more](#precision))' in _row(text, 'precision')
