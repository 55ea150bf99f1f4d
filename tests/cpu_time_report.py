"""A pytest plugin that measures what each test costs in CPU time, the test process's own
and that of the processes it started and waited for, and prints the totals by file at
the end (`make test-profile`; BENCHMARKS.md, "Test suite").

Wall time alone misleads on a shared machine with two workers: a test that waits on a
subprocess or a server shows as long but costs little, and one worker's test slows the
other's. Load it with `-p cpu_time_report` (tests/ on PYTHONPATH) and give
`--cpu-times=FILE`: each worker appends one JSON line per test there.
"""

import collections
import json
import os
import resource
import time

import pytest


def pytest_addoption(parser):
    parser.addoption('--cpu-times', metavar='FILE', default=None,
                     help='Append each test\'s CPU and wall seconds to FILE (JSON lines) and '
                          'print the totals by file.')


def _cpu_seconds():
    """(this process's CPU seconds, its waited-for children's CPU seconds)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Times set-up, call and tear-down together: a module fixture's training is paid by
    the first test that uses it, as it is in a real run."""
    path = item.config.getoption('--cpu-times')
    own_before, children_before = _cpu_seconds()
    started = time.monotonic()
    yield
    if path:
        own_after, children_after = _cpu_seconds()
        with open(path, 'a') as stream:
            stream.write(json.dumps({
                'test': item.nodeid, 'wall': time.monotonic() - started,
                'cpu': own_after - own_before, 'children_cpu': children_after - children_before,
                'worker': os.environ.get('PYTEST_XDIST_WORKER', 'main')}) + '\n')


def pytest_terminal_summary(terminalreporter, config):
    path = config.getoption('--cpu-times')
    if not path or os.environ.get('PYTEST_XDIST_WORKER') or not os.path.exists(path):
        return
    with open(path) as stream:
        rows = [json.loads(line) for line in stream]
    totals = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for row in rows:
        total = totals[row['test'].split('::')[0]]
        total[0] += 1
        total[1] += row['cpu'] + row['children_cpu']
        total[2] += row['wall']
    write = terminalreporter.write_line
    terminalreporter.section('CPU seconds by file (the tests\' own process and its children)')
    write(f'{"file":48} {"tests":>5} {"CPU s":>8} {"wall s":>8}')
    for name, (count, cpu, wall) in sorted(totals.items(), key=lambda item: -item[1][1]):
        write(f'{name:48} {count:5d} {cpu:8.1f} {wall:8.1f}')
    write(f'{"total":48} {len(rows):5d} {sum(t[1] for t in totals.values()):8.1f} '
          f'{sum(t[2] for t in totals.values()):8.1f}')
