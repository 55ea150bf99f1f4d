"""Which task of which TF_CONFIG cluster this process is, and what that means for a run.

TensorFlow's own runtime does the distributed work: `train_and_evaluate` reads
TF_CONFIG through RunConfig. This module checks TF_CONFIG once, up front, so that a
mistake in it is one line instead of a hang or a traceback, and holds the few rules
the project adds on top:

- only the chief (or a process without TF_CONFIG) writes the run's hparams.json;
  every other task waits for the chief's and reads it, so all tasks build the same
  model from the same resolved hparams;
- a cluster with `ps` tasks trains in the classic parameter-server mode (variables on
  the ps tasks, asynchronous workers); one without trains synchronously with
  `--distribution=multi_worker_mirrored`;
- each task's output lines start with its name (`worker 1: step ...`).
"""

import dataclasses
import io
import json
import os
import socket
import sys
import threading
import time

from estimator_models.errors import UserError
from estimator_models.running import hparams as hparams_lib

TRAINING_TASKS = ('chief', 'worker')
TASK_TYPES = TRAINING_TASKS + ('ps', 'evaluator')
# Seconds a task waits for the chief's hparams.json: the chief may first prepare an
# embedded dataset, which takes a few minutes on a small machine.
RUN_FILE_WAIT_SECS = 1800
LOST_PS_EXIT = 4


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the cluster; type 'local' without TF_CONFIG."""
    type: str = 'local'
    index: int = 0
    cluster: dict = dataclasses.field(default_factory=dict)

    @property
    def is_local(self):
        return self.type == 'local'

    @property
    def name(self):
        """'chief', 'worker 1', 'ps 0', 'evaluator'; '' for a local run."""
        if self.type in ('local', 'chief', 'evaluator'):
            return '' if self.is_local else self.type
        return f'{self.type} {self.index}'

    @property
    def writes_run(self):
        """Whether this task writes hparams.json (and, training, checkpoints and summaries)."""
        return self.type in ('local', 'chief')

    @property
    def parameter_servers(self):
        return len(self.cluster.get('ps', []))

    def describe(self, distribution):
        """'chief + 2 workers + 1 ps, parameter-server training (TF_CONFIG task:
        worker 1)' for the header."""
        workers = len(self.cluster.get('worker', []))
        parts = ['chief'] + [f'{workers} worker{"s" * (workers > 1)}'] * bool(workers)
        parts += [f'{self.parameter_servers} ps'] * bool(self.parameter_servers)
        mode = ('parameter-server training' if self.parameter_servers
                else 'synchronous all-reduce training' if distribution == 'multi_worker_mirrored'
                else 'training on the chief alone')
        return f'{" + ".join(parts)}, {mode} (TF_CONFIG task: {self.name})'


def from_environment(environ=None):
    """The Task TF_CONFIG describes (a local Task without it); one-line errors for a
    TF_CONFIG TensorFlow would misread or hang on."""
    text = (os.environ if environ is None else environ).get('TF_CONFIG', '').strip()
    if not text:
        return Task()
    try:
        config = json.loads(text)
    except ValueError as error:
        raise UserError(f'TF_CONFIG is not valid JSON: {error}') from None
    if not isinstance(config, dict) or not isinstance(config.get('task'), dict):
        raise UserError('TF_CONFIG needs a "task": {"type": ..., "index": ...}')
    cluster = config.get('cluster') or {}
    task_type, index = config['task'].get('type'), config['task'].get('index', 0)
    if task_type not in TASK_TYPES:
        raise UserError(f'TF_CONFIG task type {task_type!r} is not one of {", ".join(TASK_TYPES)}')
    if not isinstance(index, int) or index < 0:
        raise UserError(f'TF_CONFIG task index must be a non-negative integer, got {index!r}')
    if not isinstance(cluster, dict) or not all(isinstance(addresses, list) for addresses in cluster.values()):
        raise UserError('TF_CONFIG "cluster" must map job names to lists of host:port addresses')
    # TensorFlow's Estimator docs keep the evaluator out of "cluster", and Kubeflow's
    # TFJob does; some cluster managers list it there all the same.
    cluster = {job: addresses for job, addresses in cluster.items() if job != 'evaluator'}
    _check_cluster(cluster, task_type, index)
    return Task(task_type, index, cluster)


def _check_cluster(cluster, task_type, index):
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown:
        raise UserError(f'TF_CONFIG cluster has job {unknown[0]!r}; jobs are chief, worker and ps')
    if len(cluster.get('chief', [])) != 1:
        raise UserError('TF_CONFIG cluster needs exactly one "chief" task (it writes checkpoints)')
    if task_type == 'evaluator':
        if index != 0:
            raise UserError(f'there is one evaluator (index 0), got index {index}')
        return
    if index >= len(cluster.get(task_type, [])):
        raise UserError(f'TF_CONFIG task {task_type} {index} is not in the cluster, which has '
                        f'{len(cluster.get(task_type, []))} {task_type} task(s)')


def export_tf_config(task, environ=None):
    """Sets TF_CONFIG to the task as checked (without an evaluator in the cluster) for
    the TensorFlow code that reads it next."""
    if task.is_local:
        return
    environ = os.environ if environ is None else environ
    environ['TF_CONFIG'] = json.dumps({'cluster': task.cluster,
                                       'task': {'type': task.type, 'index': task.index}})


def check_distribution(task, distribution):
    """A one-line error for a --distribution the cluster cannot run."""
    if task.is_local:
        if distribution == 'multi_worker_mirrored':
            raise UserError('--distribution=multi_worker_mirrored needs a TF_CONFIG cluster '
                            '(bin/launch_local_cluster starts one on this machine)')
        return
    if distribution == 'mirrored':
        raise UserError('--distribution=mirrored uses the GPUs of one machine; under TF_CONFIG use '
                        'multi_worker_mirrored, or ps tasks with --distribution=none')
    if task.parameter_servers and distribution != 'none':
        raise UserError(f'the cluster has ps tasks, which train in parameter-server mode; '
                        f'drop --distribution={distribution} or the ps tasks')
    workers = len(task.cluster.get('chief', [])) + len(task.cluster.get('worker', []))
    if not task.parameter_servers and workers > 1 and distribution != 'multi_worker_mirrored':
        raise UserError(f'a cluster of {workers} training tasks without ps tasks needs '
                        '--distribution=multi_worker_mirrored (or add ps tasks)')


def device_filters(task):
    """The devices a parameter-server task's session may talk to: itself and the ps
    tasks, so that a worker neither waits for nor depends on the other workers. (The
    Estimator sets these itself only when it also chooses the whole session config.)"""
    if not task.parameter_servers or task.type not in TRAINING_TASKS:
        return []
    own = '/job:chief' if task.type == 'chief' else f'/job:worker/task:{task.index}'
    return ['/job:ps', own]


def wait_for_run_file(model_dir, task, timeout_secs=RUN_FILE_WAIT_SECS, poll_secs=1.0):
    """Blocks until model_dir holds the chief's hparams.json; a one-line error after
    `timeout_secs`."""
    path = os.path.join(model_dir, hparams_lib.RUN_FILE)
    deadline = time.time() + timeout_secs
    announced = False
    while not os.path.exists(path):
        if time.time() > deadline:
            raise UserError(f'{task.name}: the chief wrote no {path} in {timeout_secs} s; '
                            'is the chief running with the same --model_dir?')
        if not announced:
            print(f'waiting for the chief to write {path}', flush=True)
            announced = True
        time.sleep(poll_secs)


def watch_parameter_servers(task, timeout_secs, poll_secs=5.0):
    """Ends this process when a ps task has not accepted a connection for `timeout_secs`.

    TensorFlow's training session, on losing a ps, waits for it to come back and then
    restores the last checkpoint into it: right under a cluster manager that restarts
    the ps at the same address, a silent hang otherwise. After `timeout_secs` this
    prints one line naming the ps and exits with LOST_PS_EXIT; what was written stays.
    """
    if task.type not in TRAINING_TASKS or not task.parameter_servers or timeout_secs <= 0:
        return
    addresses = task.cluster['ps']
    last_seen = [time.time()] * len(addresses)

    def watch():
        while True:
            time.sleep(poll_secs)
            for index, address in enumerate(addresses):
                if _accepts_connections(address):
                    last_seen[index] = time.time()
                elif time.time() - last_seen[index] > timeout_secs:
                    sys.stderr.write(f'error: lost ps {index} ({address}): no answer for '
                                     f'{timeout_secs:g} s, and parameter-server training cannot go on '
                                     'without it; restart the job (the chief resumes from its last '
                                     'checkpoint)\n')
                    sys.stderr.flush()
                    os._exit(LOST_PS_EXIT)  # pylint: disable=protected-access

    threading.Thread(target=watch, name='ps-watch', daemon=True).start()


def _accepts_connections(address):
    host, port = address.rsplit(':', 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        return True
    except OSError:
        return False


class PrefixedLines(io.TextIOBase):
    """A text stream that starts every line it passes on with `prefix`."""

    def __init__(self, stream, prefix):
        super().__init__()
        self._stream = stream
        self._prefix = prefix
        self._at_line_start = True

    def write(self, text):
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                self._stream.write(self._prefix)
            self._stream.write(piece)
            self._at_line_start = piece.endswith('\n')
        return len(text)

    def flush(self):
        self._stream.flush()

    def fileno(self):
        return self._stream.fileno()

    def isatty(self):
        return self._stream.isatty()


def name_output_lines(task):
    """Prefixes this process's stdout and stderr lines with the task's name."""
    if task.is_local:
        return
    sys.stdout = PrefixedLines(sys.stdout, f'{task.name}: ')
    sys.stderr = PrefixedLines(sys.stderr, f'{task.name}: ')
