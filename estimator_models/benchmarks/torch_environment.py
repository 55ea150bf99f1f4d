"""The PyTorch environment of bin/benchmark --train, where the PyTorch twins train
(torch_twins.py beside this module, run as a script). Only the benchmark uses PyTorch,
and it is not installed beside this project's TensorFlow. The interpreter is the one
--torch_python names (it needs torch and numpy), else a venv of requirements-torch.txt
made on first use at CACHE/torch/<digest of the file>/ (estimator_models.python_environments).
`make torch-env` makes it (python -m this module) and prints its interpreter's path.
"""

import os

from estimator_models import cache, python_environments

TWINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_twins.py')
REQUIREMENTS = os.path.join(python_environments.REPO, 'requirements-torch.txt')
CACHE_DIR = 'torch'
OVERRIDE = '--torch_python'


def _torch_problem(versions):
    """What keeps the twins' `versions` answer from naming torch, or None."""
    return None if versions.get('torch') else f'its `versions` answer names no torch: {versions}'


RECIPE = python_environments.Recipe(
    name='the PyTorch environment', folder=CACHE_DIR, requirements=REQUIREMENTS, script=TWINS,
    override=OVERRIDE, making_time='about 50 s, 1 GB', check=_torch_problem)


def environment(torch_python=None):
    """(the interpreter that runs the PyTorch twins, its versions {'torch': ..., ...}):
    `torch_python` when given (checked: it runs them and has torch), else the cached
    venv's, made first if needed. Raises UserError in one line."""
    if torch_python is not None:
        return torch_python, python_environments.checked_versions(
            RECIPE, torch_python, f'{OVERRIDE}={torch_python} cannot run the PyTorch twins',
            'it needs torch and numpy')
    return python_environments.cached(RECIPE, cache.directory())


def cached_python(cache_folder):
    """The interpreter of the venv of requirements-torch.txt in `cache_folder`, made first
    if it is not there; another process making it is waited for."""
    return python_environments.cached(RECIPE, cache_folder)[0]


def environment_path(cache_folder):
    """CACHE/torch/<the first 12 hex digits of requirements-torch.txt's SHA-256>."""
    return python_environments.environment_path(RECIPE, cache_folder)


if __name__ == '__main__':
    python_environments.make_and_print(RECIPE)
