"""The second Python environment that builds Keras 3 model files (bin/export --format=keras3).

Keras 3 cannot be installed beside this project's TensorFlow 2.15 and Keras 2, so the
builder (keras3_model.py, beside this module) runs as a script in a Python of its own:

  - by default a venv made on first use in the cache folder,
    CACHE/keras3/<digest of requirements-keras3.txt>/, with the JAX backend; a change of
    the pins makes a new one beside it;
  - or an existing interpreter that has Keras 3 (--keras3_python), on the backend that
    KERAS_BACKEND names, else JAX.

The venv is made in a temporary sibling folder and renamed into place when complete, one
process at a time (a file lock beside it): an interrupted or failed creation leaves no
half-made environment, and two first uses at once make it once.

`python -m estimator_models.serving.keras3_environment` makes it (`make keras3-env`) and
prints its interpreter's path.
"""

import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from estimator_models import cache
from estimator_models.errors import UserError

BUILDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'keras3_model.py')
REQUIREMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            'requirements-keras3.txt')
CACHE_DIR = 'keras3'
# The backend requirements-keras3.txt installs, and that of an interpreter when
# KERAS_BACKEND does not name one.
DEFAULT_BACKEND = 'jax'
BACKEND_VARIABLE = 'KERAS_BACKEND'
# Written last into a made environment: the builder's `versions` answer there.
VERSIONS_FILE = 'versions.json'
# Seconds: a builder's `versions` imports Keras and its backend; pip downloads ~700 MB.
VERSIONS_TIMEOUT = 300
INSTALL_TIMEOUT = 3600
TRY_AN_INTERPRETER = 'pass --keras3_python=PATH to use an existing one'


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
        return dict(os.environ, **{BACKEND_VARIABLE: self.backend})


def environment(keras3_python=None):
    """The Environment of `keras3_python` when given (checked: it runs the builder and has
    Keras 3), else the cached venv, made first if needed. Raises UserError in one line."""
    if keras3_python is not None:
        backend = os.environ.get(BACKEND_VARIABLE) or DEFAULT_BACKEND
        return Environment(keras3_python, backend, _checked_versions(keras3_python, backend))
    return cached_environment(cache.directory())


def cached_environment(cache_folder):
    """The Environment of the venv of requirements-keras3.txt in `cache_folder`, made first
    if it is not there; another process making it is waited for."""
    path = environment_path(cache_folder)
    if not os.path.exists(os.path.join(path, VERSIONS_FILE)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(path, VERSIONS_FILE)):
                _make(path)
    with open(os.path.join(path, VERSIONS_FILE)) as stream:
        versions = json.load(stream)
    return Environment(_interpreter(path), DEFAULT_BACKEND, versions)


def environment_path(cache_folder):
    """CACHE/keras3/<the first 12 hex digits of requirements-keras3.txt's SHA-256>."""
    with open(REQUIREMENTS, 'rb') as stream:
        digest = hashlib.sha256(stream.read()).hexdigest()[:12]
    return os.path.join(cache_folder, CACHE_DIR, digest)


def _interpreter(venv):
    return os.path.join(venv, 'bin', 'python')


def _make(path):
    """Makes the venv at `path` (absent) in a temporary sibling, renamed when complete.

    The caller holds the lock: a sibling left by a process that was killed while making
    it is removed first. A venv's python finds its packages relative to itself, so the
    renamed one runs as made (its bin/ scripts, never run here, name the temporary path).
    """
    for abandoned in glob.glob(path + '.making-*'):
        shutil.rmtree(abandoned, ignore_errors=True)
    print(f'making the Keras 3 environment (once, about 40 s): {path}', flush=True)
    started = time.monotonic()
    temporary = tempfile.mkdtemp(prefix=os.path.basename(path) + '.making-', dir=os.path.dirname(path))
    try:
        _step([sys.executable, '-m', 'venv', temporary], 'python -m venv', INSTALL_TIMEOUT)
        _step([_interpreter(temporary), '-m', 'pip', 'install', '--disable-pip-version-check', '-q',
               '-r', REQUIREMENTS], f'pip install -r {os.path.basename(REQUIREMENTS)}', INSTALL_TIMEOUT)
        versions = _checked_versions(_interpreter(temporary), DEFAULT_BACKEND, made=True)
        with open(os.path.join(temporary, VERSIONS_FILE), 'w') as stream:
            json.dump(versions, stream, sort_keys=True)
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    print(f'made the Keras 3 environment in {time.monotonic() - started:.0f} s', flush=True)


def _step(command, name, timeout):
    """Runs one step of making the venv; a UserError naming it when it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UserError(f'cannot make the Keras 3 environment: {name} failed ({error}); {TRY_AN_INTERPRETER}')
    if result.returncode != 0:
        raise UserError(f'cannot make the Keras 3 environment: {name} failed '
                        f'({last_line(result.stderr, result.returncode)}); {TRY_AN_INTERPRETER}')


def _checked_versions(python, backend, made=False):
    """The builder's `versions` answer run by `python` on `backend`; a UserError when it does
    not run or its Keras is older than 3 (`made`: in the venv being made)."""
    if made:
        failed = 'cannot make the Keras 3 environment: the builder\'s `versions` check failed'
        advice = TRY_AN_INTERPRETER
    else:
        failed = f'--keras3_python={python} cannot run the Keras 3 builder'
        advice = 'it needs Keras 3 and numpy'
    try:
        result = subprocess.run([python, BUILDER, 'versions'], capture_output=True, text=True,
                                timeout=VERSIONS_TIMEOUT, env=dict(os.environ, **{BACKEND_VARIABLE: backend}))
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UserError(f'{failed} ({error}); {advice}') from None
    if result.returncode != 0:
        raise UserError(f'{failed} ({last_line(result.stderr, result.returncode)}); {advice}')
    try:
        versions = json.loads(result.stdout.strip().splitlines()[-1])
        major = int(str(versions['keras']).split('.')[0])
    except (ValueError, IndexError, KeyError, TypeError):
        raise UserError(f'{failed} (its `versions` answer is not JSON with a keras version: '
                        f'{result.stdout.strip()[-200:]!r}); {advice}') from None
    if major < 3:
        raise UserError(f'{failed} (it has Keras {versions["keras"]}); {advice}')
    return versions


def last_line(stderr, returncode):
    """The last line a failed process wrote on stderr, without an `error: ` prefix; its exit
    status when it wrote nothing."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return f'exit status {returncode}'
    return lines[-1].removeprefix('error: ')


if __name__ == '__main__':
    try:
        print(cached_environment(cache.directory()).python)
    except UserError as error:
        sys.exit(f'error: {error}')
