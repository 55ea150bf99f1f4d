"""Compiled CPU kernels: built once per machine from the C++ sources beside this file.

`make train` and `make test` build them when they install the project
(`python -m estimator_models.layers.kernels`); a run that finds no built library builds
it then (about a minute). The library is kept in the project's cache
(estimator_models.cache) under a name that holds a digest of the source, the TensorFlow
version, the compiler flags and the CPU's instruction sets, so a changed source, an
upgraded TensorFlow or another machine never loads a stale or foreign build. The
compiler's output goes beside it (`.log`), and a build that failed is remembered there
(`.failed`), so that later runs with the same compiler do not spend the time again.
Where the kernels cannot be had (no C++ compiler, a failed build, a library that does not
load), `rnn_implementation=auto` runs Keras' layers and says why in one line.
"""

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

from estimator_models import cache

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lstm_sequence.cc')
# -march=native: the library is built on the machine that runs it (the digest holds the
# CPU's flags), and AVX-512 doubles the matmul rate of the recurrent step where present.
OPTIMIZATION_FLAGS = ['-O3', '-march=native', '-shared', '-fPIC']


class KernelUnavailable(Exception):
    """The kernels cannot be built or loaded here; the message says why, in one line."""


def _compiler():
    """The path of $CXX, else of g++ or c++; raises KernelUnavailable when none is found."""
    named = os.environ.get('CXX')
    found = shutil.which(named) if named else shutil.which('g++') or shutil.which('c++')
    if found:
        return found
    if named:
        raise KernelUnavailable(f'the C++ compiler CXX={named} is not found, so there is no fused LSTM kernel; '
                                'set CXX to an installed compiler')
    raise KernelUnavailable('no C++ compiler found to build the fused LSTM kernel; install g++ or set CXX')


def _cpu_flags():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            return next((line for line in cpuinfo if line.startswith('flags')), '')
    except OSError:
        return platform.processor()


@functools.lru_cache(maxsize=None)
def _source():
    """The source as this process first read it: a checkout updated under a running
    process (a long training's later evaluation graphs) keeps loading the library whose
    ops the process has registered, never a second one of the same op names."""
    with open(SOURCE, 'rb') as source:
        return source.read()


def library_path():
    """Where the library built from today's source for this TensorFlow and CPU lives in
    the cache; raises OSError when there is no cache to keep it in."""
    digest = hashlib.sha256()
    digest.update(_source())
    for part in [tf.__version__, platform.machine(), _cpu_flags()] + OPTIMIZATION_FLAGS:
        digest.update(part.encode())
    return os.path.join(cache.directory(), 'kernels', f'lstm_sequence-{digest.hexdigest()[:16]}.so')


def build(path):
    """Compiles the kernels to `path`; returns it. Raises KernelUnavailable, and a build
    that fails is remembered beside `path`, so that no later call tries the same compiler
    again until the marker is deleted."""
    compiler = _compiler()
    marker = _stem(path) + '.failed'
    remembered = _remembered_failure(marker, compiler)
    if remembered:
        raise KernelUnavailable(f'an earlier run here: {remembered}; set CXX to another compiler '
                                f'or delete {marker} to try again')
    partial = _partial_library(path)
    print('building the fused LSTM kernel for this machine (once, about a minute)', file=sys.stderr, flush=True)
    try:
        _compile(compiler, partial, _stem(path) + '.log')
        os.replace(partial, path)
    except KernelUnavailable as error:
        _remember_failure(marker, compiler, str(error))
        raise KernelUnavailable(f'{error}; later runs try again only with another CXX '
                                f'or once {marker} is deleted') from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    return path


def _stem(path):
    return os.path.splitext(path)[0]


def _partial_library(path):
    """An empty file beside `path` to build into: two processes building at once (pytest
    workers) each rename a whole library into place."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    except OSError as error:
        raise KernelUnavailable(f'cannot write the fused LSTM kernel into {os.path.dirname(path)}: '
                                f'{error.strerror or error}; set {cache.ENV} to a writable folder') from None
    os.close(handle)
    return partial


def compile_command(compiler, source, output, extra_flags=()):
    """The command that builds the library `output` from the C++ file `source` against
    the installed TensorFlow."""
    return ([compiler] + OPTIMIZATION_FLAGS + list(extra_flags) + tf.sysconfig.get_compile_flags()
            + [source, '-o', output] + tf.sysconfig.get_link_flags())


def _compile(compiler, output, log):
    """Runs `compiler` on the source into `output`, its command and output into `log`."""
    command = compile_command(compiler, SOURCE, output)
    with open(log, 'w') as stream:
        print(' '.join(command), file=stream, flush=True)
        try:
            status = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode
        except OSError as error:
            raise KernelUnavailable(f'cannot run the C++ compiler {compiler}: {error.strerror or error}') from None
    if status:
        raise KernelUnavailable(f'building the fused LSTM kernel with {compiler} failed '
                                f'({_first_error(log) or f"exit status {status}"}); its output is in {log}')


def _first_error(log):
    with open(log) as stream:
        next(stream)  # the command
        return next((line.strip() for line in stream if 'error' in line), None)


def _remembered_failure(marker, compiler):
    """Why a build with `compiler` failed here before, or None."""
    try:
        with open(marker) as stream:
            failed_compiler, reason = stream.read().split('\n', 1)
    except (OSError, ValueError):
        return None
    return reason.strip() if failed_compiler == compiler else None


def _remember_failure(marker, compiler, reason):
    try:
        with open(marker, 'w') as stream:
            stream.write(f'{compiler}\n{reason}\n')
    except OSError:
        pass  # Nowhere to remember it: the next run tries again.


def load():
    """The loaded op library (ops `lstm_sequence`, `lstm_sequence_grad`), building it
    first when this machine has none; raises KernelUnavailable."""
    try:
        path = library_path()
    except OSError as error:
        raise KernelUnavailable(f'no folder to keep the fused LSTM kernel in: {error.strerror or error}; '
                                f'set {cache.ENV} to a writable folder') from None
    library, reason = _load(path)
    if reason:
        raise KernelUnavailable(reason)
    return library


@functools.lru_cache(maxsize=None)
def _load(path):
    """(library, None) or (None, why not): a failure is remembered too, so that a
    process asks the compiler once."""
    try:
        if not os.path.exists(path):
            build(path)
        return tf.load_op_library(path), None
    except KernelUnavailable as error:
        return None, str(error)
    except OSError as error:
        return None, f'cannot build the fused LSTM kernel into {path}: {error.strerror or error}'
    except tf.errors.OpError as error:
        return None, f'cannot load the fused LSTM kernel {path}: {error.message}; delete it to build it again'


def available():
    """Whether the kernels load here (building them if needed); where they do not, says
    why on stderr, once per reason."""
    try:
        load()
    except KernelUnavailable as error:
        _warn_once(str(error))
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_once(reason):
    print(f"warning: {reason}; rnn_implementation=auto runs Keras' LSTM instead", file=sys.stderr, flush=True)
