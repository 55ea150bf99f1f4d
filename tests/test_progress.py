"""The progress lines of input_fns.progress, written on a fake clock."""

import io

import pytest

from input_fns import progress


class Clock:
    """Time that passes only when a test moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def shown(stream, total, counts, seconds_apart, note=''):
    """What a Progress of `total` writes to `stream` as each of `counts` more examples
    are done, `seconds_apart` after the ones before."""
    clock = Clock()
    with progress.Progress(total, stream, clock) as counter:
        for count in counts:
            clock.now += seconds_apart
            counter.advance(count, note)
    return stream.getvalue()


def test_a_log_gets_a_plain_line_at_each_tenth_and_a_last_line_with_the_time_taken():
    lines = shown(io.StringIO(), 100, [5] * 20, 1.0).splitlines(keepends=True)
    assert all('\r' not in line and line.endswith('\n') for line in lines)
    assert [line.rstrip('\n') for line in lines] == [
        f'[{"#" * 3 * tenth}{"-" * (30 - 3 * tenth)}] {10 * tenth:3d}%  '
        f'{10 * tenth}/100 examples  5.0 examples/s  ETA {20 - 2 * tenth}s'
        for tenth in range(1, 10)] + [
        f'[{"#" * 30}] 100%  100/100 examples  5.0 examples/s  took 20s']


def test_a_fast_job_logs_only_its_last_line():
    assert shown(io.StringIO(), 1000, [1] * 1000, 0.001).splitlines() == [
        f'[{"#" * 30}] 100%  1000/1000 examples  1000.0 examples/s  took 1s']


def test_without_a_total_a_log_gets_a_line_every_ten_seconds():
    assert shown(io.StringIO(), None, [1] * 25, 1.0, note='0.1 MB').splitlines() == [
        '10 examples  1.0 examples/s  0.1 MB',
        '20 examples  1.0 examples/s  0.1 MB',
        '25 examples  1.0 examples/s  0.1 MB  took 25s']


def test_a_terminal_line_is_redrawn_in_place_four_times_a_second():
    drawn = shown(Terminal(), 40, [1] * 40, 0.125)
    assert drawn.count('\r') == 21 and drawn.count('\n') == 1 and drawn.endswith('\n')
    redrawn = drawn.rstrip('\n').split('\r')[1:]
    assert redrawn[0].startswith('[#---') and 'ETA ' in redrawn[0]
    assert redrawn[-1].rstrip() == f'[{"#" * 30}] 100%  40/40 examples  8.0 examples/s  took 5s'
    # Each line covers the whole of the one before, so none of it is left showing.
    assert all(len(later) >= len(earlier) for earlier, later in zip(redrawn, redrawn[1:]))


def test_an_error_ends_the_line_before_it_is_raised():
    terminal, clock = Terminal(), Clock()
    with pytest.raises(ValueError):
        with progress.Progress(10, terminal, clock) as counter:
            clock.now = 1.0
            counter.advance(3)
            raise ValueError('a failed example')
    assert terminal.getvalue().endswith('3/10 examples  3.0 examples/s  took 1s\n')


def test_durations():
    assert [progress.duration(seconds) for seconds in (0, 44.6, 65, 7620)] == [
        '0s', '45s', '1m05s', '2h07m']
