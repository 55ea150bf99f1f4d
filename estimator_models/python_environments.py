"""Second Python environments: venvs made on first use in the cache folder from a pinned
requirements file, for packages that cannot be installed beside this project's
TensorFlow 2.15 (Keras 3 for bin/export --format=keras3, PyTorch for bin/benchmark --train).

Each runs one script of the project by path. An environment is the venv of its
requirements file at CACHE/<folder>/<the first 12 hex digits of the file's SHA-256>/: a
change of the pins makes a new one beside it. It is made in a temporary sibling folder
and renamed into place when complete, one process at a time (a file lock beside it): an
interrupted or failed creation leaves no half-made environment, and two first uses at
once make it once. The last thing written into a made one is its script's `versions`
answer (one JSON line), which later uses read instead of running the script.

It imports only cache and errors, so that every package may use it.
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

# The repository's root, where the requirements files are.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Written last into a made environment: its script's `versions` answer there.
VERSIONS_FILE = 'versions.json'
# Seconds: pip downloads and unpacks up to about a gigabyte.
INSTALL_TIMEOUT = 3600


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One kind of second environment.

    name: what its messages call it ('the Keras 3 environment').
    folder: its folder in the cache.
    requirements: the path of the pinned requirements file it is made from.
    script: the path of the script it runs; `python SCRIPT versions` prints one JSON line.
    override: the flag that names an existing interpreter instead ('--keras3_python').
    making_time: how long making it takes, for the line printed first ('about 40 s').
    check: versions dict -> what is wrong with them ('it has Keras 2.15.0'), or None.
    variables: more process environment variables to run the script with.
    """
    name: str
    folder: str
    requirements: str
    script: str
    override: str
    making_time: str
    check: object = None
    variables: dict = dataclasses.field(default_factory=dict)

    def advice(self):
        return f'pass {self.override}=PATH to use an existing one'

    def process_environment(self):
        """The environment to run the script in: this process's, with `variables`."""
        return dict(os.environ, **self.variables)


def environment_path(recipe, cache_folder):
    """CACHE/<recipe.folder>/<the first 12 hex digits of its requirements' SHA-256>."""
    with open(recipe.requirements, 'rb') as stream:
        digest = hashlib.sha256(stream.read()).hexdigest()[:12]
    return os.path.join(cache_folder, recipe.folder, digest)


def interpreter(venv):
    """The python of the venv at `venv`."""
    return os.path.join(venv, 'bin', 'python')


def cached(recipe, cache_folder=None):
    """(interpreter path, versions dict) of the venv of `recipe` in `cache_folder` (default
    cache.directory()), made first if it is not there; another process making it is
    waited for. Raises UserError in one line naming the step that failed."""
    path = environment_path(recipe, cache_folder or cache.directory())
    if not os.path.exists(os.path.join(path, VERSIONS_FILE)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(path, VERSIONS_FILE)):
                _make(recipe, path)
    with open(os.path.join(path, VERSIONS_FILE)) as stream:
        return interpreter(path), json.load(stream)


def _make(recipe, path):
    """Makes the venv at `path` (absent) in a temporary sibling, renamed when complete.

    The caller holds the lock: a sibling left by a process that was killed while making
    it is removed first. A venv's python finds its packages relative to itself, so the
    renamed one runs as made (its bin/ scripts, never run here, name the temporary path).
    """
    for abandoned in glob.glob(path + '.making-*'):
        shutil.rmtree(abandoned, ignore_errors=True)
    print(f'making {recipe.name} (once, {recipe.making_time}): {path}', flush=True)
    started = time.monotonic()
    temporary = tempfile.mkdtemp(prefix=os.path.basename(path) + '.making-', dir=os.path.dirname(path))
    try:
        _step(recipe, [sys.executable, '-m', 'venv', temporary], 'python -m venv')
        _step(recipe, [interpreter(temporary), '-m', 'pip', 'install', '--disable-pip-version-check', '-q',
                       '-r', recipe.requirements], f'pip install -r {os.path.basename(recipe.requirements)}')
        failed = f'cannot make {recipe.name}: the {os.path.basename(recipe.script)} `versions` check failed'
        versions = checked_versions(recipe, interpreter(temporary), failed, recipe.advice())
        with open(os.path.join(temporary, VERSIONS_FILE), 'w') as stream:
            json.dump(versions, stream, sort_keys=True)
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    print(f'made {recipe.name} in {time.monotonic() - started:.0f} s', flush=True)


def _step(recipe, command, name):
    """Runs one step of making the venv; a UserError naming it when it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UserError(f'cannot make {recipe.name}: {name} failed ({error}); {recipe.advice()}') from None
    if result.returncode != 0:
        raise UserError(f'cannot make {recipe.name}: {name} failed '
                        f'({last_line(result.stderr, result.returncode)}); {recipe.advice()}')


def checked_versions(recipe, python, failed, advice, timeout=300):
    """The `versions` answer of `recipe.script` run by `python` (a JSON object); a
    UserError `failed (why); advice` when it does not run, does not answer JSON or
    recipe.check finds fault with it. `timeout`: seconds, for its imports."""
    try:
        result = subprocess.run([python, recipe.script, 'versions'], capture_output=True, text=True,
                                timeout=timeout, env=recipe.process_environment())
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UserError(f'{failed} ({error}); {advice}') from None
    if result.returncode != 0:
        raise UserError(f'{failed} ({last_line(result.stderr, result.returncode)}); {advice}')
    try:
        versions = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        versions = None
    if not isinstance(versions, dict):
        raise UserError(f'{failed} (its `versions` answer is not a JSON object: '
                        f'{result.stdout.strip()[-200:]!r}); {advice}')
    problem = recipe.check and recipe.check(versions)
    if problem:
        raise UserError(f'{failed} ({problem}); {advice}')
    return versions


def last_line(stderr, returncode):
    """The last line a failed process wrote on stderr, without an `error: ` prefix; its exit
    status when it wrote nothing."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return f'exit status {returncode}'
    return lines[-1].removeprefix('error: ')


def make_and_print(recipe):
    """What `python -m` of an environment's module does: makes the environment of
    `recipe` in the cache if it is not there and prints its interpreter's path; a
    failure is one line and exit status 1."""
    try:
        print(cached(recipe)[0])
    except UserError as error:
        sys.exit(f'error: {error}')
