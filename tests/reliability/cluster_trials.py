#!/usr/bin/env python3
"""Fault trials of real local clusters: `make cluster-trials` (about 10 minutes).

Each trial runs pixel_row_lstm on the embedded digits in a parameter-server cluster on
127.0.0.1 and kills one task with SIGKILL mid-run:

- worker: killed 3 times, restarted each time by bin/launch_local_cluster
  --max_restarts=3; the run must reach --train_steps and export a SavedModel;
- chief: killed once after its first checkpoint and restarted; it must resume from its
  last checkpoint (its first step after the restart is right after a checkpoint's) and
  the run must reach --train_steps and export;
- ps under the launcher: the launcher must stop the cluster and name the ps;
- ps without the launcher (bin/train processes with TF_CONFIG, as a cluster manager
  runs them): the chief must end within --lost_ps_timeout_secs with one line naming
  the ps and exit status 4.

Prints one line per trial and a JSON summary; exits 1 if any check fails. make test
runs the one-worker-kill version (tests/test_local_cluster.py).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import tensorflow as tf  # noqa: E402

from estimator_models.running import experiment  # noqa: E402

TRAIN_STEPS = 1500
TRAIN_ARGS = [f'--train_steps={TRAIN_STEPS}', '--checkpoint_every=300', '--model=pixel_row_lstm']
LOST_PS_TIMEOUT = 20


def launcher(model_dir, *launch_args):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'bin', 'launch_local_cluster'), *launch_args, '--',
         f'--model_dir={model_dir}', *TRAIN_ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def task_pid(model_dir, task_type):
    path = os.path.join(model_dir, 'cluster_logs', 'cluster.json')
    tasks = json.load(open(path))['tasks'] if os.path.exists(path) else []
    return next((task['pid'] for task in tasks if task['type'] == task_type), None)


def wait_for(condition, what, process, timeout=600):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline or process.poll() is not None:
            raise RuntimeError(f'gave up waiting for {what}')
        time.sleep(0.5)


def log(model_dir, task):
    with open(os.path.join(model_dir, 'cluster_logs', f'{task}.log')) as stream:
        return stream.read()


def steps_of(text, name):
    return [int(step) for step in re.findall(rf'^{name}: step (\d+)/', text, re.MULTILINE)]


def check_finished(model_dir, output):
    """The run reached TRAIN_STEPS and its latest export loads."""
    step = experiment.checkpoint_step(model_dir)
    if step < TRAIN_STEPS:
        raise RuntimeError(f'the run stopped at step {step}: {output[-1500:]}')
    latest = os.path.join(model_dir, 'export', 'latest')
    tf.saved_model.load(os.path.join(latest, max(os.listdir(latest), key=int)))
    return step


def worker_killed(model_dir, kills=3):
    process = launcher(model_dir, '--workers=2', '--ps=1', '--evaluator', f'--max_restarts={kills}')

    def worker_trained(starts):
        if task_pid(model_dir, 'worker') is None:
            return False
        runs = log(model_dir, 'worker-0').split('worker 0: training pixel_row_lstm')[1:]
        return len(runs) == starts and bool(steps_of(runs[-1], 'worker 0'))

    for kill in range(kills):
        wait_for(lambda: worker_trained(kill + 1), f'worker training before kill {kill + 1}', process)
        killed_pid = task_pid(model_dir, 'worker')
        os.kill(killed_pid, signal.SIGKILL)
        wait_for(lambda: task_pid(model_dir, 'worker') != killed_pid, 'the restart', process)
    output, _ = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f'launcher exited {process.returncode}: {output[-1500:]}')
    return {'kills': kills, 'final_step': check_finished(model_dir, output)}


def chief_killed(model_dir):
    process = launcher(model_dir, '--workers=2', '--ps=1', '--evaluator', '--max_restarts=1')
    wait_for(lambda: experiment.checkpoint_step(model_dir) > 0 if os.path.exists(model_dir) else False,
             'the first checkpoint', process)
    killed_after = experiment.checkpoint_step(model_dir)
    os.kill(task_pid(model_dir, 'chief'), signal.SIGKILL)
    output, _ = process.communicate(timeout=900)
    if process.returncode != 0 or 'chief was killed by SIGKILL; restarting it' not in output:
        raise RuntimeError(f'launcher exited {process.returncode}: {output[-1500:]}')
    restarted = log(model_dir, 'chief-0').split('chief: training pixel_row_lstm')[-1]
    first_step = steps_of(restarted, 'chief')[0]
    checkpoints = {int(path.split('-')[-1].split('.')[0])
                   for path in tf.io.gfile.glob(os.path.join(model_dir, 'model.ckpt-*.index'))}
    if first_step - 1 < killed_after:
        raise RuntimeError(f'the restarted chief began at step {first_step}, before its checkpoint '
                           f'of step {killed_after}')
    return {'checkpoint_at_kill': killed_after, 'first_step_after_restart': first_step,
            'final_step': check_finished(model_dir, output), 'checkpoints_kept': sorted(checkpoints)}


def ps_killed_under_launcher(model_dir):
    process = launcher(model_dir, '--workers=2', '--ps=1')
    wait_for(lambda: os.path.exists(model_dir) and experiment.checkpoint_step(model_dir) > 0,
             'the first checkpoint', process)
    killed = time.time()
    os.kill(task_pid(model_dir, 'ps'), signal.SIGKILL)
    output, _ = process.communicate(timeout=300)
    if process.returncode == 0 or 'ps 0 was killed by SIGKILL' not in output:
        raise RuntimeError(f'launcher exited {process.returncode}: {output[-1500:]}')
    return {'seconds_to_end': round(time.time() - killed, 1), 'exit_status': process.returncode}


def ps_killed_without_launcher(model_dir):
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(('127.0.0.1', 0))
            ports.append(probe.getsockname()[1])
    cluster = {'chief': [f'127.0.0.1:{ports[0]}'], 'ps': [f'127.0.0.1:{ports[1]}']}
    processes = {}
    for task_type in ('ps', 'chief'):
        tf_config = json.dumps({'cluster': cluster, 'task': {'type': task_type, 'index': 0}})
        processes[task_type] = subprocess.Popen(
            [sys.executable, os.path.join(REPO, 'bin', 'train'), f'--model_dir={model_dir}',
             f'--lost_ps_timeout_secs={LOST_PS_TIMEOUT}', *TRAIN_ARGS],
            env=dict(os.environ, TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: os.path.exists(model_dir) and experiment.checkpoint_step(model_dir) > 0,
                 'the first checkpoint', processes['chief'])
        killed = time.time()
        processes['ps'].kill()
        output, _ = processes['chief'].communicate(timeout=LOST_PS_TIMEOUT + 120)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    lines = [line for line in output.splitlines() if 'lost ps 0' in line]
    if processes['chief'].returncode != 4 or len(lines) != 1:
        raise RuntimeError(f'chief exited {processes["chief"].returncode}: {output[-1500:]}')
    return {'seconds_to_end': round(time.time() - killed, 1), 'message': lines[0]}


TRIALS = {'worker_killed': worker_killed, 'chief_killed': chief_killed,
          'ps_killed_under_launcher': ps_killed_under_launcher,
          'ps_killed_without_launcher': ps_killed_without_launcher}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work_dir', default=os.path.join(REPO, 'runs', 'cluster_trials'))
    parser.add_argument('--trials', default=','.join(TRIALS))
    args = parser.parse_args()
    results, failed = {}, False
    for name in args.trials.split(','):
        model_dir = os.path.join(args.work_dir, name)
        shutil.rmtree(model_dir, ignore_errors=True)
        start = time.time()
        try:
            results[name] = dict(TRIALS[name](model_dir), ok=True)
        except RuntimeError as error:
            results[name] = {'ok': False, 'error': str(error)}
            failed = True
        results[name]['seconds'] = round(time.time() - start, 1)
        print(f'{name}: {json.dumps(results[name])}', flush=True)
    print(json.dumps(results, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
