"""The second Python environment that builds Keras 3 model files (bin/export --format=keras3).

Keras 3 cannot be installed beside this project's TensorFlow 2.15 and Keras 2, so the
builder (keras3_model.py, beside this module) runs as a script in a Python of its own:

  - by default a venv made on first use in the cache folder,
    CACHE/keras3/<digest of requirements-keras3.txt>/, with the JAX backend; a change of
    the pins makes a new one beside it;
  - or an existing interpreter that has Keras 3 (--keras3_python), on the backend that
    KERAS_BACKEND names, else JAX.

The venv is made as every second environment is (estimator_models.python_environments):
in a temporary sibling folder renamed into place when complete, one process at a time.

`python -m estimator_models.serving.keras3_environment` makes it (`make keras3-env`) and
prints its interpreter's path.
"""

import dataclasses
import os

from estimator_models import cache, python_environments

BUILDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'keras3_model.py')
REQUIREMENTS = os.path.join(python_environments.REPO, 'requirements-keras3.txt')
CACHE_DIR = 'keras3'
# The backend requirements-keras3.txt installs, and that of an interpreter when
# KERAS_BACKEND does not name one.
DEFAULT_BACKEND = 'jax'
BACKEND_VARIABLE = 'KERAS_BACKEND'
OVERRIDE = '--keras3_python'


@dataclasses.dataclass(frozen=True)
class Environment:
    """A Python that runs the Keras 3 builder.

    python: the interpreter's path.
    backend: the KERAS_BACKEND it builds and verifies with.
    versions: the builder's `versions` answer there ({'keras': '3.15.1', ...}).
    """
    python: str
    backend: str
    versions: dict

    def variables(self):
        """The process environment to run the builder in."""
        return _recipe(self.backend).process_environment()


def environment(keras3_python=None):
    """The Environment of `keras3_python` when given (checked: it runs the builder and has
    Keras 3), else the cached venv, made first if needed. Raises UserError in one line."""
    if keras3_python is not None:
        backend = os.environ.get(BACKEND_VARIABLE) or DEFAULT_BACKEND
        versions = python_environments.checked_versions(
            _recipe(backend), keras3_python, f'{OVERRIDE}={keras3_python} cannot run the Keras 3 builder',
            'it needs Keras 3 and numpy')
        return Environment(keras3_python, backend, versions)
    return cached_environment(cache.directory())


def cached_environment(cache_folder):
    """The Environment of the venv of requirements-keras3.txt in `cache_folder`, made first
    if it is not there; another process making it is waited for."""
    python, versions = python_environments.cached(_recipe(DEFAULT_BACKEND), cache_folder)
    return Environment(python, DEFAULT_BACKEND, versions)


def environment_path(cache_folder):
    """CACHE/keras3/<the first 12 hex digits of requirements-keras3.txt's SHA-256>."""
    return python_environments.environment_path(_recipe(DEFAULT_BACKEND), cache_folder)


def _recipe(backend):
    """How the Keras 3 environment is made and checked, its builder run on `backend`."""
    return python_environments.Recipe(
        name='the Keras 3 environment', folder=CACHE_DIR, requirements=REQUIREMENTS, script=BUILDER,
        override=OVERRIDE, making_time='about 40 s', check=_keras_3_problem,
        variables={BACKEND_VARIABLE: backend})


def _keras_3_problem(versions):
    """What keeps the builder's `versions` answer from being that of Keras 3, or None."""
    try:
        major = int(str(versions['keras']).split('.')[0])
    except (KeyError, ValueError):
        return f'its `versions` answer has no keras version: {versions}'
    return f'it has Keras {versions["keras"]}' if major < 3 else None


if __name__ == '__main__':
    python_environments.make_and_print(_recipe(DEFAULT_BACKEND))
