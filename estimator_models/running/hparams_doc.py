"""docs/hparams.md, written from the hparam declarations (`make docs` runs this module):

    python -m estimator_models.running.hparams_doc > docs/hparams.md
"""

import sys

from estimator_models import registry
from estimator_models.legacy import user_model_fn
from estimator_models.running import hparams
from estimator_models.running.common_hparams import COMMON_HPARAMS

REGENERATE = 'python -m estimator_models.running.hparams_doc > docs/hparams.md'
USER_MODEL = 'your own model_fn'

_INTRODUCTION = f"""# Hparams

Generated from the hparam declarations in the code by `make docs`, that is
`{REGENERATE}`: change the declarations, not this file.

Set hparams with `--hparams=k=v,k=v`, a list as `[a,b]`. The first training run saves
them in MODEL_DIR/hparams.json, and a resumed run may change only the resumable ones: the
others would not fit its checkpoint. Where a model has a default of its own, the default
column names it. "From the data" means 0, which the training data fills in. Models `all`
means the built-in models and {USER_MODEL} ([legacy.md](legacy.md#bring-your-own-model_fn)), which
also takes hparams the project does not know, typed as written (`3`, `0.5`, `true`,
`[1,2]`, else a string).

| hparam | default | values | models | resumable | what it does |
|---|---|---|---|---|---|
"""


def markdown():
    """The text of docs/hparams.md (str): a table row per hparam, then their notes."""
    rows = _rows()
    table = ''.join(_table_line(declared, models) for declared, models in rows)
    notes = ''.join(f'\n### `{declared.name}`\n\n{" ".join(declared.details.split())}\n'
                    for declared, _ in rows if declared.details)
    return f'{_INTRODUCTION}{table}\n## Notes\n{notes}'


def _rows():
    """[(HParam, names of the models that take it)]: the common hparams, then each model's own."""
    rows = [(declared, ('all',)) for declared in COMMON_HPARAMS]
    holders = {}
    for name, module in registry.MODELS.items():
        for declared in module.HPARAMS:
            holders.setdefault(declared, []).append(name)
    rows += [(declared, tuple(names)) for declared, names in holders.items()]
    return rows + [(user_model_fn.KIND_HPARAM, (USER_MODEL,))]


def _table_line(declared, models):
    more = f' ([more](#{declared.name}))' if declared.details else ''
    cells = (f'`{declared.name}`', _defaults(declared), _values(declared), ', '.join(models),
             'yes' if declared.resumable else 'no', declared.doc + more)
    return '| ' + ' | '.join(cell.replace('|', '\\|') for cell in cells) + ' |\n'


def _defaults(declared):
    """The declared default, then each other default a model sets: '`0.001`; pixel_row_lstm: `0.003`'."""
    if declared.from_data:
        return 'from the data'
    others = {}
    for name, module in registry.MODELS.items():
        default = hparams.defaults_for(module).get(declared.name, declared.default_value)
        if default != declared.default_value:
            others.setdefault(_shown(default), []).append(name)
    return '; '.join([_shown(declared.default)] + [f'{", ".join(names)}: {shown}'
                                                   for shown, names in others.items()])


def _values(declared):
    if declared.choices is not None:
        return ', '.join(f'`{choice}`' for choice in declared.choices)
    if declared.lists_sizes:
        return 'list of ints > 0'
    if declared.bound is not None:
        return f'{declared.type_name} {declared.bound.summary}'
    return declared.type_name


def _shown(value):
    """A value as --hparams takes it, in backticks: `true`, `[32,64]`, `0.001`."""
    if isinstance(value, bool):
        return f'`{str(value).lower()}`'
    if isinstance(value, (list, tuple)):
        return f'`[{",".join(str(size) for size in value)}]`'
    return f'`{value}`' if value != '' else 'empty'


def main():
    sys.stdout.write(markdown())


if __name__ == '__main__':
    main()
