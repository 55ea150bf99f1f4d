"""bin/launch_local_cluster: a real TF_CONFIG cluster of bin/train processes on this machine.

    bin/launch_local_cluster --workers=N [--ps=M] [--evaluator] [--max_restarts=K] [--worker_grace_secs=S] -- <bin/train flags>

Starts one `bin/train` process per task (in this directory, so relative paths in the
flags mean the same to every task) on free 127.0.0.1 ports, each with its own
TF_CONFIG: a `chief` and N-1 `worker` tasks (N training processes in all), M `ps` tasks
and, with --evaluator, an `evaluator`. Each task logs to MODEL_DIR/cluster_logs/TASK.log;
the chief's and the evaluator's lines are echoed here. MODEL_DIR/cluster_logs/cluster.json
records the cluster, the pids and the log paths.

The cluster ends when the chief does. After a chief that succeeded the launcher waits
for the workers and the evaluator to finish on their own (the evaluator still evaluates
and exports the last checkpoint), then stops the ps tasks, which would serve forever. A
worker still running --worker_grace_secs after the chief succeeded is stopped, and one
that fails then is not restarted; the cluster still succeeds: the run is the chief's
checkpoints (as a Kubeflow TFJob's default success policy has it), and an all-reduce
worker can wait forever for a collective step that its finished chief will never take.
A task that fails (after --max_restarts restarts, like a cluster manager's restart
policy), a ps that exits at all, or Ctrl-C stops every task; the failed task's last log
lines are printed.
"""

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time

from estimator_models.errors import UserError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(PROJECT_ROOT, 'bin', 'train')
LOG_DIR_NAME = 'cluster_logs'
ECHOED_TASKS = ('chief', 'evaluator')
POLL_SECS = 0.5
STOP_GRACE_SECS = 15
WORKER_GRACE_SECS = 120
LOG_TAIL_LINES = 15


class TaskProcess:
    """One task's bin/train process, restartable, its output appended to one log file."""

    def __init__(self, task_type, index, cluster, train_flags, log_path, environ):
        self.type = task_type
        self.index = index
        self.log_path = log_path
        self.restarts = 0
        self.stopped = False  # by the launcher, on purpose: its exit is no failure
        self._command = [sys.executable, TRAIN_SCRIPT] + list(train_flags)
        tf_config = {'cluster': cluster, 'task': {'type': task_type, 'index': index}}
        self._environ = dict(environ, TF_CONFIG=json.dumps(tf_config))
        self._process = None
        self._echoed_up_to = 0

    @property
    def name(self):
        return self.type if self.type in ('chief', 'evaluator') else f'{self.type} {self.index}'

    @property
    def pid(self):
        return self._process.pid

    def start(self):
        with open(self.log_path, 'ab') as log:
            # Its own session: Ctrl-C reaches the launcher, which stops the tasks in order.
            self._process = subprocess.Popen(self._command, env=self._environ, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)

    def exit_code(self):
        """None while running, else the exit status (-N: killed by signal N)."""
        return self._process.poll()

    def terminate(self):
        """SIGTERM (the chief saves a checkpoint on it and stops), and SIGCONT for a
        process that was stopped (SIGSTOP), which would otherwise leave it pending."""
        if self.exit_code() is None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)

    def wait_or_kill(self, deadline):
        """Waits for the process to end until `deadline`, then SIGKILLs it."""
        while self.exit_code() is None and time.time() < deadline:
            time.sleep(0.1)
        if self.exit_code() is None:
            self._signal(signal.SIGKILL)
            self._process.wait()

    def _signal(self, number):
        try:
            os.killpg(self._process.pid, number)
        except ProcessLookupError:
            pass

    def new_log_lines(self):
        """Complete lines the task wrote since the last call."""
        with open(self.log_path, 'rb') as log:
            log.seek(self._echoed_up_to)
            text = log.read()
        complete = text[:text.rfind(b'\n') + 1]
        self._echoed_up_to += len(complete)
        return complete.decode('utf-8', 'replace').splitlines()

    def log_tail(self, lines=LOG_TAIL_LINES):
        with open(self.log_path, 'rb') as log:
            text = log.read().decode('utf-8', 'replace')
        return collections.deque(text.splitlines(), maxlen=lines)


def free_ports(count):
    """`count` distinct ports free on 127.0.0.1 now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(('127.0.0.1', 0))
            sockets.append(listener)
        return [listener.getsockname()[1] for listener in sockets]
    finally:
        for listener in sockets:
            listener.close()


def model_dir_of(train_flags):
    """The --model_dir bin/train will use with these flags (its default: runs/MODEL)."""
    model = None
    for position, flag in enumerate(train_flags):
        for name in ('--model_dir', '--model'):
            if flag.startswith(name + '='):
                value = flag.split('=', 1)[1]
            elif flag == name and position + 1 < len(train_flags):
                value = train_flags[position + 1]
            else:
                continue
            if name == '--model_dir':
                return value
            model = value
    if model is None:
        raise UserError('give bin/train flags after --, at least --model=NAME')
    return os.path.join('runs', model.replace(':', '.'))


def check_counts(workers, parameter_servers, max_restarts, worker_grace_secs):
    if workers < 1:
        raise UserError(f'--workers must be at least 1 (the chief), got {workers}')
    if parameter_servers < 0 or max_restarts < 0 or worker_grace_secs < 0:
        raise UserError('--ps, --max_restarts and --worker_grace_secs cannot be negative')


class LocalCluster:
    """The task processes of one cluster and the rules for ending it."""

    def __init__(self, workers, parameter_servers, evaluator, train_flags, max_restarts=0,
                 worker_grace_secs=WORKER_GRACE_SECS, out=sys.stdout):
        check_counts(workers, parameter_servers, max_restarts, worker_grace_secs)
        self.model_dir = model_dir_of(train_flags)
        self.log_dir = os.path.join(self.model_dir, LOG_DIR_NAME)
        self.max_restarts = max_restarts
        self.worker_grace_secs = worker_grace_secs
        self._out = out
        ports = iter(free_ports(workers + parameter_servers))
        self.cluster = {'chief': [f'127.0.0.1:{next(ports)}']}
        if workers > 1:
            self.cluster['worker'] = [f'127.0.0.1:{next(ports)}' for _ in range(workers - 1)]
        if parameter_servers:
            self.cluster['ps'] = [f'127.0.0.1:{next(ports)}' for _ in range(parameter_servers)]
        layout = ([('ps', index) for index in range(parameter_servers)] + [('chief', 0)]
                  + [('worker', index) for index in range(workers - 1)] + [('evaluator', 0)] * evaluator)
        self.tasks = [TaskProcess(task_type, index, self.cluster, train_flags,
                                  os.path.join(self.log_dir, f'{task_type}-{index}.log'), os.environ)
                      for task_type, index in layout]

    def _say(self, text):
        print(text, file=self._out, flush=True)

    def run(self):
        """Runs the cluster to its end; returns the exit status for the launcher."""
        os.makedirs(self.log_dir, exist_ok=True)
        for task in self.tasks:
            open(task.log_path, 'wb').close()
            task.start()
            self._say(f'started {task.name} (pid {task.pid}), log {task.log_path}')
        self._write_description()
        # Ctrl-C and a SIGTERM (a job scheduler's stop) both stop every task first,
        # even when this process was started with SIGINT ignored (`&` in a script).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return self._watch()
        except KeyboardInterrupt:
            self._say('interrupted: stopping every task')
            self._stop_all()
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)

    def _watch(self):
        chief = self._task('chief')
        while True:
            self._echo()
            failure = self._failed_task()
            if failure is not None:
                return self._end_with_failure(failure)
            if chief.exit_code() == 0:
                return self._finish()
            time.sleep(POLL_SECS)

    def _failed_task(self, chief_succeeded=False):
        """A task whose exit ends the cluster, restarting those that may be restarted.
        After the chief's success a worker that fails ends alone: nothing it would train
        is still wanted."""
        for task in self.tasks:
            code = task.exit_code()
            if code is None or task.stopped or (code == 0 and task.type != 'ps'):
                continue
            if chief_succeeded and task.type == 'worker':
                self._say(f'{task.name} {_described_exit(code)} after the chief finished; not restarting it '
                          '(the run is the chief\'s checkpoints)')
                task.stopped = True
                continue
            if task.type != 'ps' and task.restarts < self.max_restarts:
                task.restarts += 1
                self._say(f'{task.name} {_described_exit(code)}; restarting it '
                          f'({task.restarts} of {self.max_restarts})')
                task.start()
                self._say(f'restarted {task.name} (pid {task.pid})')
                self._write_description()
                continue
            return task
        return None

    def _end_with_failure(self, task):
        code = task.exit_code()
        reason = (' (parameter-server training cannot go on without it)' if task.type == 'ps' else '')
        self._say(f'{task.name} {_described_exit(code)}{reason}; stopping the cluster. '
                  f'Last lines of {task.log_path}:')
        for line in task.log_tail():
            self._say(f'  | {line}')
        self._stop_all()
        self._echo()
        return code if code and code > 0 else 1

    def _finish(self):
        """After the chief's success: let the workers and the evaluator end (stopping a
        worker that outlasts its grace), stop the ps."""
        self._say('chief finished; waiting for the other tasks to end')
        finishing = [task for task in self.tasks if task.type != 'ps']
        worker_deadline = time.time() + self.worker_grace_secs
        while True:
            self._echo()
            failure = self._failed_task(chief_succeeded=True)
            if failure is not None:
                return self._end_with_failure(failure)
            if all(task.exit_code() is not None for task in finishing):
                break
            if time.time() > worker_deadline:
                self._stop_late_workers()
            time.sleep(POLL_SECS)
        self._stop_all()
        self._say(f'cluster done; logs in {self.log_dir}')
        return 0

    def _stop_late_workers(self):
        late = [task for task in self.tasks
                if task.type == 'worker' and task.exit_code() is None and not task.stopped]
        for task in late:
            self._say(f'{task.name} still running {self.worker_grace_secs:g} s after the chief '
                      'finished; stopping it (the run is the chief\'s checkpoints)')
            task.stopped = True
        _stop(late)

    def _stop_all(self):
        """Stops the training tasks and the evaluator, then the ps tasks: a chief saving
        its checkpoint on SIGTERM still needs the ps tasks that hold the variables."""
        _stop([task for task in self.tasks if task.type != 'ps'])
        _stop([task for task in self.tasks if task.type == 'ps'])

    def _echo(self):
        for task in self.tasks:
            if task.type in ECHOED_TASKS:
                for line in task.new_log_lines():
                    self._say(line)

    def _task(self, task_type, index=0):
        return next(task for task in self.tasks if (task.type, task.index) == (task_type, index))

    def _write_description(self):
        description = {'cluster': self.cluster, 'model_dir': self.model_dir, 'tasks': [
            {'type': task.type, 'index': task.index, 'pid': task.pid, 'log': task.log_path,
             'restarts': task.restarts} for task in self.tasks]}
        path = os.path.join(self.log_dir, 'cluster.json')
        with open(path + '.tmp', 'w') as stream:
            json.dump(description, stream, indent=2)
        os.replace(path + '.tmp', path)


def _interrupt(signal_number, frame):
    del signal_number, frame
    raise KeyboardInterrupt


def _stop(tasks):
    """SIGTERM to every task at once, then SIGKILL to those still running STOP_GRACE_SECS later."""
    deadline = time.time() + STOP_GRACE_SECS
    for task in tasks:
        task.terminate()
    for task in tasks:
        task.wait_or_kill(deadline)


def _described_exit(code):
    if code < 0:
        return f'was killed by {signal.Signals(-code).name}'
    return f'exited with status {code}'
