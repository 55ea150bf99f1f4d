"""The folder where the project keeps what it makes once and reuses: the fused LSTM
kernel built for this machine (`kernels/`) and uncompressed copies of compressed `.npz`
arrays (`npz/`).

It is $ESTIMATOR_LSTM_CACHE, else $XDG_CACHE_HOME/estimator_lstm, else
~/.cache/estimator_lstm. Where that cannot be written (a read-only home, a path below a
file) a run says so in one line and goes on with a folder of its user's in the system's
temporary directory: the same for every run, so what one run makes there serves the next.

It imports nothing of the project, so that every package may use it.
"""

import functools
import os
import stat
import sys
import tempfile

ENV = 'ESTIMATOR_LSTM_CACHE'


def configured():
    """The folder the environment names (it may not exist, or not be writable)."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'estimator_lstm')


def directory(folder=None):
    """The folder to read and write the cache in, made if needed: `folder` (default
    configured()), or the temporary one where that cannot be written. Raises OSError when
    neither can."""
    return _writable(folder or configured())


@functools.lru_cache(maxsize=None)
def _writable(folder):
    """`folder` if it can be written, else the temporary folder; warns once per folder."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return folder
    except OSError as error:
        fallback = _temporary()
        print(f'warning: cannot write the cache at {folder} ({error.strerror or error}); using {fallback}; '
              f'set {ENV} to a writable folder', file=sys.stderr, flush=True)
        return fallback


def _temporary():
    """This user's folder in the system's temporary directory, or a new one of this process
    where that name is taken by a folder another user could write: the kernel loaded from
    here runs as this user."""
    folder = os.path.join(tempfile.gettempdir(), f'estimator_lstm-{os.getuid()}')
    return folder if _private(folder) else tempfile.mkdtemp(prefix='estimator_lstm-')


def _private(folder):
    """Whether `folder`, made if needed, is a directory that only this user can write."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        status = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and not status.st_mode & 0o022
