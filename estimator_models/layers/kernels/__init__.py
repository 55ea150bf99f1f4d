"""Compiled CPU kernels: built once per machine from the C++ sources beside this file.

`make train` and `make test` build them when they install the project
(`python -m estimator_models.layers.kernels`); a run that finds no built library builds
it then (about a minute). The library is kept in the cache directory under a name that
holds a digest of the source, the TensorFlow version, the compiler flags and the CPU's
instruction sets, so a changed source, an upgraded TensorFlow or another machine never
loads a stale or foreign build. Where no C++ compiler is found the kernels are
unavailable: `rnn_implementation=auto` then uses Keras' layers and says so.
"""

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

from input_fns import npz

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lstm_sequence.cc')
# -march=native: the library is built on the machine that runs it (the digest holds the
# CPU's flags), and AVX-512 doubles the matmul rate of the recurrent step where present.
OPTIMIZATION_FLAGS = ['-O3', '-march=native', '-shared', '-fPIC']

class KernelUnavailable(Exception):
    """The kernels cannot be built or loaded here; the message says why, in one line."""


def _compiler():
    return os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')


def _cpu_flags():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            return next((line for line in cpuinfo if line.startswith('flags')), '')
    except OSError:
        return platform.processor()


def library_path():
    """Where the library built from today's source for this TensorFlow and CPU lives."""
    digest = hashlib.sha256()
    with open(SOURCE, 'rb') as source:
        digest.update(source.read())
    for part in [tf.__version__, platform.machine(), _cpu_flags()] + OPTIMIZATION_FLAGS:
        digest.update(part.encode())
    return os.path.join(npz.cache_dir(), 'kernels', f'lstm_sequence-{digest.hexdigest()[:16]}.so')


def build(path=None):
    """Compiles the kernels to `path` (default: library_path()); returns the path."""
    path = path or library_path()
    compiler = _compiler()
    if not compiler:
        raise KernelUnavailable('no C++ compiler (g++) found to build the fused LSTM kernel')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Built under a temporary name and renamed: two processes building at once (pytest
    # workers) each finish with a whole library in place.
    handle, partial = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(handle)
    command = ([compiler] + OPTIMIZATION_FLAGS + tf.sysconfig.get_compile_flags() + [SOURCE, '-o', partial]
               + tf.sysconfig.get_link_flags())
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        os.remove(partial)
        raise KernelUnavailable(f'cannot run the C++ compiler {compiler}: {error.strerror}') from None
    if result.returncode:
        os.remove(partial)
        first_error = next((line for line in result.stderr.splitlines() if 'error' in line),
                           result.stderr.strip()[-300:])
        raise KernelUnavailable(f'building the fused LSTM kernel failed: {first_error}')
    os.replace(partial, path)
    return path


def load():
    """The loaded op library (ops `lstm_sequence`, `lstm_sequence_grad`), building it
    first when this machine has none; raises KernelUnavailable."""
    library, reason = _load(library_path())
    if reason:
        raise KernelUnavailable(reason)
    return library


@functools.lru_cache(maxsize=None)
def _load(path):
    """(library, None) or (None, why not): a failure is remembered too, so that a
    process asks the compiler once."""
    try:
        if not os.path.exists(path):
            print('building the fused LSTM kernel for this machine (once, about a minute)',
                  file=sys.stderr, flush=True)
            build(path)
        return tf.load_op_library(path), None
    except KernelUnavailable as error:
        return None, str(error)
    except tf.errors.NotFoundError as error:
        return None, f'cannot load the fused LSTM kernel {path}: {error.message}'


def available():
    """Whether the kernels load here (building them if needed)."""
    try:
        load()
    except KernelUnavailable:
        return False
    return True

