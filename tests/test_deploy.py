"""deploy/: the TFJob runs bin/train flags that exist, and the Dockerfile copies what the
project is made of. (No cluster or Docker daemon here: what runs is tested by
tests/test_local_cluster.py with the same TF_CONFIG tasks.)"""

import os
import re

from conftest import REPO, run_cli

DEPLOY = os.path.join(REPO, 'deploy')


def read(name):
    with open(os.path.join(DEPLOY, name)) as stream:
        return stream.read()


def test_the_tfjob_has_every_task_and_passes_only_real_train_flags():
    manifest = read('tfjob.yaml')
    for replica in ('Chief', 'Worker', 'PS', 'Evaluator'):
        assert re.search(rf'^    {replica}:\n      replicas: \d', manifest, re.MULTILINE)
    assert 'name: tensorflow' in manifest  # the container name the operator looks for
    passed = [line.strip()[2:] for line in manifest.splitlines() if re.match(r'^\s+- --\w+=', line)]
    assert {'--model=temporal_cnn_lstm', '--model_dir=/shared/runs/temporal_cnn_lstm'} <= set(passed)
    # The flags parse (an unknown one would be named); the last, bad --train_steps stops
    # bin/train right after parsing, before it reads or writes anything.
    result = run_cli('train', *passed, '--train_steps=0', check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: --train_steps must be positive, got 0'


def test_the_dockerfile_copies_the_project_and_runs_bin_train():
    dockerfile = read('Dockerfile')
    for source in re.findall(r'^COPY (.+) \S+$', dockerfile, re.MULTILINE):
        for path in source.split():
            assert os.path.exists(os.path.join(REPO, path)), path
    assert 'pip install --no-cache-dir -r requirements.txt' in dockerfile
    assert 'ENTRYPOINT ["python", "bin/train"]' in dockerfile
