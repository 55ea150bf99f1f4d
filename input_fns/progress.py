"""The progress of a long count of examples, on stderr:

  [#########---------------------]  30%  21000/70000 examples  1650.2 examples/s  ETA 30s
  [##############################] 100%  70000/70000 examples  1648.9 examples/s  took 42s

On a terminal one line is redrawn in place a few times a second. In a log (stderr is no
terminal: CI, a captured test) each line is a plain line of its own: one at each tenth of
the total and at least every _LOG_SILENCE seconds. Either way the last line gives the time
taken.
"""

import sys
import time

_REDRAW_INTERVAL = 0.25
_LOG_SILENCE = 10.0
# A log gets at most a line a second, so a fast job logs only its last line.
_LOG_MIN_GAP = 1.0
_BAR_WIDTH = 30


def duration(seconds):
    """'45s', '3m05s' or '2h07m'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    if seconds >= 60:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds}s'


class Progress:
    """Examples done of `total` (None: unknown, then no bar, percentage or ETA), their
    rate since the start, the ETA and a caller's note (such as the bytes written).

    As a context manager it writes the last line on leaving, after an error too, so that
    the error starts a line of its own.
    """

    def __init__(self, total, stream=None, clock=time.monotonic):
        self.total = total
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.clock = clock
        self.start = self.shown_at = clock()
        self.done = self.shown_done = 0
        self.note = ''
        self.drawn_width = 0

    def __enter__(self):
        return self

    def __exit__(self, *error):
        self.finish()

    def advance(self, count=1, note=''):
        """Counts `count` more examples done; `note` replaces the previous one."""
        self.done += count
        self.note = note
        now = self.clock()
        if self._due(now):
            self.shown_at, self.shown_done = now, self.done
            self._show(now, final=False)

    def finish(self):
        self._show(self.clock(), final=True)

    def _due(self, now):
        since = now - self.shown_at
        if self.interactive:
            return since >= _REDRAW_INTERVAL
        if self.done == self.total:
            return False  # the last line, from finish(), shows the whole count
        return since >= _LOG_SILENCE or (
            since >= _LOG_MIN_GAP and self._tenths(self.done) > self._tenths(self.shown_done))

    def _tenths(self, done):
        return int(10 * done / self.total) if self.total else 0

    def _line(self, now, final):
        elapsed = now - self.start
        rate = self.done / max(elapsed, 1e-6)
        parts = [self._counter(), f'{rate:.1f} examples/s'] + ([self.note] if self.note else [])
        if final:
            parts.append(f'took {duration(elapsed)}')
        elif self.total and rate > 0:
            parts.append(f'ETA {duration(max(self.total - self.done, 0) / rate)}')
        return '  '.join(parts)

    def _counter(self):
        if not self.total:
            return f'{self.done} examples'
        fraction = min(self.done / self.total, 1)
        filled = int(_BAR_WIDTH * fraction)
        return (f'[{"#" * filled}{"-" * (_BAR_WIDTH - filled)}] {100 * fraction:3.0f}%  '
                f'{self.done}/{self.total} examples')

    def _show(self, now, final):
        line = self._line(now, final)
        if self.interactive:
            # \r returns to the line's start; the padding wipes a longer previous line.
            self.stream.write('\r' + line.ljust(self.drawn_width) + ('\n' if final else ''))
            self.drawn_width = len(line)
        else:
            self.stream.write(line + '\n')
        self.stream.flush()
