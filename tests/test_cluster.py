"""TF_CONFIG as bin/train reads it: each task's place, the checks that turn a cluster
TensorFlow would hang on into one line, and the names on each task's output lines.
(tests/test_local_cluster.py runs real clusters.)"""

import io
import json

import pytest

from estimator_models.errors import UserError
from estimator_models.running import cluster, experiment
from input_fns.sources import source, tfrecords

PS_CLUSTER = {'chief': ['127.0.0.1:2000'], 'worker': ['127.0.0.1:2001', '127.0.0.1:2002'],
              'ps': ['127.0.0.1:2003']}


def task_of(cluster_spec, task_type, index=0):
    tf_config = json.dumps({'cluster': cluster_spec, 'task': {'type': task_type, 'index': index}})
    return cluster.from_environment({'TF_CONFIG': tf_config})


def test_without_tf_config_the_run_is_local_and_writes_its_own_hparams():
    task = cluster.from_environment({})
    assert task.is_local and task.writes_run and task.name == ''


def test_each_task_knows_its_name_and_only_the_chief_writes_the_run():
    assert task_of(PS_CLUSTER, 'chief').name == 'chief'
    worker = task_of(PS_CLUSTER, 'worker', 1)
    assert worker.name == 'worker 1' and not worker.writes_run
    assert task_of(PS_CLUSTER, 'ps').name == 'ps 0'
    assert task_of(PS_CLUSTER, 'evaluator').name == 'evaluator'
    assert task_of(PS_CLUSTER, 'chief').writes_run
    assert (task_of(PS_CLUSTER, 'worker', 1).describe('none')
            == 'chief + 2 workers + 1 ps, parameter-server training (TF_CONFIG task: worker 1)')


def test_parameter_server_workers_talk_only_to_the_ps_tasks_and_themselves():
    assert cluster.device_filters(task_of(PS_CLUSTER, 'chief')) == ['/job:ps', '/job:chief']
    assert cluster.device_filters(task_of(PS_CLUSTER, 'worker', 1)) == ['/job:ps', '/job:worker/task:1']
    assert cluster.device_filters(task_of(PS_CLUSTER, 'evaluator')) == []
    all_reduce = {'chief': ['127.0.0.1:2000'], 'worker': ['127.0.0.1:2001']}
    assert cluster.device_filters(task_of(all_reduce, 'worker')) == []
    config = experiment.session_config(device_filters=['/job:ps', '/job:chief'])
    assert list(config.device_filters) == ['/job:ps', '/job:chief']


@pytest.mark.parametrize('tf_config, message', [
    ('{not json', 'TF_CONFIG is not valid JSON'),
    ('{"cluster": {}}', 'TF_CONFIG needs a "task"'),
    (json.dumps({'cluster': PS_CLUSTER, 'task': {'type': 'master', 'index': 0}}),
     "task type 'master' is not one of"),
    (json.dumps({'cluster': PS_CLUSTER, 'task': {'type': 'worker', 'index': 2}}),
     'task worker 2 is not in the cluster, which has 2 worker task(s)'),
    (json.dumps({'cluster': {'worker': ['a:1']}, 'task': {'type': 'worker', 'index': 0}}),
     'needs exactly one "chief"'),
    (json.dumps({'cluster': dict(PS_CLUSTER, master=['a:1']), 'task': {'type': 'chief'}}),
     "cluster has job 'master'"),
    (json.dumps({'cluster': PS_CLUSTER, 'task': {'type': 'evaluator', 'index': 1}}),
     'there is one evaluator (index 0)'),
])
def test_a_tf_config_tensorflow_would_misread_is_one_line(tf_config, message):
    with pytest.raises(UserError) as error:
        cluster.from_environment({'TF_CONFIG': tf_config})
    assert message in str(error.value) and '\n' not in str(error.value)


def test_an_evaluator_listed_in_the_cluster_is_left_out_of_what_tensorflow_reads():
    listed = dict(PS_CLUSTER, evaluator=['127.0.0.1:2004'])
    environ = {'TF_CONFIG': json.dumps({'cluster': listed, 'task': {'type': 'evaluator', 'index': 0}})}
    task = cluster.from_environment(environ)
    assert task.cluster == PS_CLUSTER
    cluster.export_tf_config(task, environ)
    assert json.loads(environ['TF_CONFIG']) == {'cluster': PS_CLUSTER,
                                                'task': {'type': 'evaluator', 'index': 0}}


def test_distribution_must_fit_the_cluster():
    all_reduce = {'chief': ['127.0.0.1:2000'], 'worker': ['127.0.0.1:2001']}
    cluster.check_distribution(task_of(PS_CLUSTER, 'chief'), 'none')
    cluster.check_distribution(task_of(all_reduce, 'worker'), 'multi_worker_mirrored')
    cluster.check_distribution(task_of({'chief': ['127.0.0.1:2000']}, 'chief'), 'none')
    for task, distribution, message in [
            (task_of(PS_CLUSTER, 'chief'), 'multi_worker_mirrored', 'train in parameter-server mode'),
            (task_of(all_reduce, 'chief'), 'none', 'needs --distribution=multi_worker_mirrored'),
            (task_of(all_reduce, 'chief'), 'mirrored', 'uses the GPUs of one machine'),
            (cluster.Task(), 'multi_worker_mirrored', 'needs a TF_CONFIG cluster')]:
        with pytest.raises(UserError, match=message):
            cluster.check_distribution(task, distribution)


def test_a_task_waits_for_the_chiefs_hparams_file_and_gives_up_with_one_line(tmp_path):
    worker = task_of(PS_CLUSTER, 'worker')
    with pytest.raises(UserError, match='the chief wrote no .*hparams.json in 0.2 s'):
        cluster.wait_for_run_file(str(tmp_path), worker, timeout_secs=0.2, poll_secs=0.05)
    (tmp_path / 'hparams.json').write_text('{}')
    cluster.wait_for_run_file(str(tmp_path), worker, timeout_secs=0.2, poll_secs=0.05)


def test_every_output_line_of_a_task_starts_with_its_name():
    out = io.StringIO()
    named = cluster.PrefixedLines(out, 'worker 1: ')
    named.write('step 1/10')
    named.write('  loss 2.3\nstep 2/10\n')
    named.write('done\n')
    assert out.getvalue() == 'worker 1: step 1/10  loss 2.3\nworker 1: step 2/10\nworker 1: done\n'


def test_a_worker_is_told_which_part_of_the_data_it_reads(tmp_path):
    files = [str(tmp_path / f'clips.tfrecord-0000{index}-of-00004') for index in range(4)]
    shards = tfrecords.TFRecordSource(files, info=None)
    assert shards.shard_description(source.Shard(1, 2)) == f'files {files[1]}, {files[3]}'
    assert shards.shard_description(source.Shard(2, 8)) == 'records 2, 10, 18, ...'
