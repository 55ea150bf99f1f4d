"""Data specs (`--data`, `--eval_data`) to labelled arrays.

A spec is one string, the same for every model (see DESIGN.md):
  omitted     the model's embedded default dataset
  NAME        an embedded dataset by name (input_fns.embedded.EMBEDDED)
  FILE.npz    arrays x, y (one split) or x_train, y_train, x_test, y_test
"""

import numpy as np

from input_fns import arrays, embedded
from input_fns.errors import UserError

HOLDOUT_FRACTION = 0.1
_HOLDOUT_SEED = 20260101


def _splits(spec, kind, default_name):
    """Returns (train, test) LabelledArrays-or-loader pairs; test is None for a single-split file."""
    name = spec or default_name
    if name in embedded.EMBEDDED:
        dataset_kind = embedded.EMBEDDED[name].kind
        if dataset_kind != kind:
            raise UserError(f'dataset {name!r} holds {dataset_kind}s but this model reads {kind}s')
        return (lambda: embedded.load(name, 'train')), (lambda: embedded.load(name, 'test'))
    if name.endswith('.npz'):
        train, test = arrays.load_npz(name, kind)
        return (lambda: train), (None if test is None else lambda: test)
    if name.startswith('tfds:') or '.tfrecord' in name or name.endswith('/'):
        raise UserError(f'data source {name!r} is not supported yet; use an embedded dataset '
                        f'({", ".join(sorted(embedded.EMBEDDED))}) or a .npz file')
    raise UserError(f'unknown data spec {name!r}: not an embedded dataset '
                    f'({", ".join(sorted(embedded.EMBEDDED))}) nor a .npz file')


def evaluation_data(spec, kind, default_name):
    """The examples to evaluate on: the test split, or the whole source if it has only one."""
    train, test = _splits(spec, kind, default_name)
    return (test or train)()


def train_and_eval_data(data_spec, eval_spec, kind, default_name):
    """(train, eval) LabelledArrays for a training run.

    Without `eval_spec`, a source with no test split is split here: a fixed random
    HOLDOUT_FRACTION of it is held out for evaluation and never trained on.
    """
    train, test = _splits(data_spec, kind, default_name)
    if eval_spec:
        return train(), evaluation_data(eval_spec, kind, default_name)
    if test is not None:
        return train(), test()
    return _holdout_split(train())


def _holdout_split(examples):
    order = np.random.default_rng(_HOLDOUT_SEED).permutation(len(examples))
    num_eval = max(1, int(len(examples) * HOLDOUT_FRACTION))
    if num_eval >= len(examples):
        raise UserError(f'only {len(examples)} examples: too few to hold out an evaluation split; '
                        'pass --eval_data')
    return examples.take(np.sort(order[num_eval:])), examples.take(np.sort(order[:num_eval]))
