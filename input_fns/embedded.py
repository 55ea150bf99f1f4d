"""The embedded datasets: generated locally from fixed seeds, cached on disk, never downloaded."""

import dataclasses
import os
import sys
import tempfile
from typing import Callable, Dict, Tuple

import numpy as np

from input_fns import CLIP, IMAGE, arrays, glyphs, moving_glyphs
from input_fns.errors import UserError

# Bump when a generator changes, so stale caches are never read.
GENERATOR_VERSION = 1
CACHE_ENV = 'ESTIMATOR_LSTM_CACHE'
_SPLIT_SEEDS = {'train': 1, 'test': 2}


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset:
    kind: str
    class_names: Tuple[str, ...]
    split_sizes: Dict[str, int]
    # render(num_examples, seed) -> (inputs, labels, lengths or None)
    render: Callable


def _render_digits(num_examples, seed):
    images, labels = glyphs.render_digits(num_examples, seed)
    return images, labels, None


def _render_clips(num_examples, seed):
    frames, lengths, labels = moving_glyphs.render_clips(num_examples, seed)
    return frames, labels, lengths


EMBEDDED = {
    'glyph_digits': EmbeddedDataset(
        kind=IMAGE, class_names=glyphs.CLASS_NAMES,
        split_sizes={'train': 60000, 'test': 10000}, render=_render_digits),
    'moving_glyphs': EmbeddedDataset(
        kind=CLIP, class_names=moving_glyphs.CLASS_NAMES,
        split_sizes={'train': 12000, 'test': 2000}, render=_render_clips),
}


def cache_dir():
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'estimator_lstm')


def load(name, split, num_examples=None):
    """Returns the LabelledArrays of one split, generating and caching it on first use."""
    if name not in EMBEDDED:
        raise UserError(f'unknown embedded dataset {name!r}; choose one of {sorted(EMBEDDED)}')
    dataset = EMBEDDED[name]
    num_examples = num_examples or dataset.split_sizes[split]
    path = os.path.join(cache_dir(), f'{name}-v{GENERATOR_VERSION}-{split}-{num_examples}.npz')
    if not os.path.exists(path):
        print(f'generating embedded dataset {name}/{split} ({num_examples} examples) into {path}',
              file=sys.stderr, flush=True)
        inputs, labels, lengths = dataset.render(num_examples, _SPLIT_SEEDS[split])
        _write_atomically(path, inputs=inputs, labels=labels,
                          lengths=lengths if lengths is not None else np.zeros(0, np.int32))
    with np.load(path) as cached:
        lengths = cached['lengths'] if dataset.kind == CLIP else None
        return arrays.validated(cached['inputs'], cached['labels'], dataset.kind, lengths,
                                dataset.class_names, source=f'embedded dataset {name}')


def _write_atomically(path, **named_arrays):
    """Writes a .npz next to `path` and renames it, so readers never see half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix='.npz', dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, 'wb') as stream:
            np.savez(stream, **named_arrays)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
