"""A model_dir's integrity: one trainer at a time, and checkpoints that can be resumed.

One trainer per model_dir. The process that writes a run (a local bin/train, or the
chief of a TF_CONFIG cluster) holds MODEL_DIR/.trainer.lock for its lifetime, an
`fcntl.flock` lock that the operating system drops when the process ends, however it
ends (SIGKILL included), so no killed run leaves a stale lock. The file records the
holder's host, pid and start time for the one-line error a second trainer stops with,
and goes when the holder releases it.
Where a model_dir has no file locks (a URL such as gs://), the trainer holds a lease
instead: MODEL_DIR/.trainer.lease names it and carries a heartbeat it rewrites every
LEASE_HEARTBEAT_SECS; another trainer takes a lease over only once its heartbeat is
older than LEASE_TIMEOUT_SECS, as it is when its holder was killed.

Checkpoints that can be resumed. Before a run resumes, and before bin/evaluate or
bin/export read a checkpoint, the newest one listed in the `checkpoint` state file is
read whole (its index and every tensor, checksums included), and if it is damaged the
one before it, and so on. A damaged one is moved into MODEL_DIR/damaged/, never
deleted, and the state file is rewritten, atomically, to list the checkpoints still
intact; a missing or unreadable state file is rebuilt from the checkpoints present.
Each change is one line on stderr. When no checkpoint is intact, nothing is moved and
the command stops with one line naming the files. bin/evaluate and bin/export hold no
lock while they read: they take it only for the moment of a repair, and only when no
trainer holds it; beside a training run they read the newest intact checkpoint and
leave the files where they are.
"""

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
from typing import List, Optional, Tuple

from google.protobuf import text_format
import tensorflow as tf
from tensorflow.python.training import checkpoint_state_pb2

from estimator_models.errors import UserError

LOCK_FILE = '.trainer.lock'
LEASE_FILE = '.trainer.lease'
# A lease whose heartbeat is older than this was left by a trainer that is gone. The
# heartbeat is the holder's clock: hosts sharing a model_dir need clocks that agree to
# well within this.
LEASE_TIMEOUT_SECS = 120
LEASE_HEARTBEAT_SECS = 30
STATE_FILE = 'checkpoint'
DAMAGED_DIR = 'damaged'
CHECKPOINT_STEP = re.compile(r'model\.ckpt-(\d+)$')


class TrainerRunning(UserError):
    """Another trainer holds the model_dir; `holder` is what it recorded ({} if nothing yet)."""

    def __init__(self, model_dir, path, holder):
        super().__init__(f'{model_dir} is in use by another trainer: {_describe_holder(holder)} '
                         f'({path}); wait for it to finish or stop it, or train into another --model_dir')
        self.holder = holder


def _describe_holder(holder):
    """'pid 123 on host, since 2030-01-01 12:00:00+00:00' from a recorded holder."""
    if not holder:
        return 'a process that is starting (it has not recorded itself yet)'
    return f'pid {holder["pid"]} on {holder["host"]}, since {holder["since"]}'


def _this_process():
    """What a holder records of itself."""
    return {'host': socket.gethostname(), 'pid': os.getpid(),
            'since': datetime.datetime.now().astimezone().isoformat(sep=' ', timespec='seconds')}


def _has_url_scheme(path):
    """Whether `path` is a URL such as gs://bucket/run, where files cannot be locked."""
    return '://' in path


@contextlib.contextmanager
def trainer_lock(model_dir, lease=None):
    """Holds model_dir for this process until the block ends: a TrainerRunning error
    (one line naming the holder) if another trainer holds it. `lease` chooses the lease
    file over the file lock; by default, only for a model_dir with a URL scheme or on a
    file system without file locks. Directories made for the lock go again if nothing
    else was written into them, so a run refused on its data leaves nothing behind."""
    if lease is None:
        lease = _has_url_scheme(model_dir)
    with contextlib.ExitStack() as held:
        held.callback(_remove_if_empty, _missing_directories(model_dir))
        if lease or not _file_locked(held, model_dir):
            tf.io.gfile.makedirs(model_dir)
            held.enter_context(_lease_held(model_dir))
        yield


def _missing_directories(path):
    """`path` and its ancestors that do not exist yet, deepest first ([] for a URL: an
    object store has no directories to leave behind)."""
    if _has_url_scheme(path):
        return []
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_if_empty(directories):
    """Removes `directories`, deepest first, up to the first that is not empty."""
    for directory in directories:
        try:
            os.rmdir(directory)
        except OSError:
            return


def _file_locked(held, model_dir):
    """Takes model_dir's lock file until the ExitStack `held` closes, and records this
    process in it; False on a file system without file locks (some network mounts).

    The holder removes the file before it releases the lock. A process that opened the
    file just before that locks a file no longer there once it is released, sees so, and
    starts again with a new file.
    """
    path = os.path.join(model_dir, LOCK_FILE)
    while True:
        tf.io.gfile.makedirs(model_dir)  # again if a holder that made it removed it
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise TrainerRunning(model_dir, path, recorded_holder(model_dir)) from None
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            os.remove(path)
            return False
        if _is_at(descriptor, path):
            break
        os.close(descriptor)
    held.callback(os.close, descriptor)  # which releases the lock
    held.callback(_remove_lock_file, path)  # first, while it is held
    # A killed holder's record may still be in the file.
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(_this_process()).encode(), 0)
    return True


def _remove_lock_file(path):
    with contextlib.suppress(FileNotFoundError):  # removed by hand: the lock is released all the same
        os.remove(path)


def _is_at(descriptor, path):
    """Whether the open file `descriptor` is the file at `path`."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)


def recorded_holder(model_dir, lease=False):
    """What the holder of model_dir's lock file (or, with `lease`, its lease) recorded:
    {'host', 'pid', 'since'[, 'heartbeat']}, or {} when nothing is recorded. A lock file
    left by a killed holder keeps its record, although its lock is free."""
    path = os.path.join(model_dir, LEASE_FILE if lease else LOCK_FILE)
    try:
        with tf.io.gfile.GFile(path) as stream:
            return json.loads(stream.read())
    except (tf.errors.NotFoundError, ValueError):  # no file, or an empty one
        return {}


@contextlib.contextmanager
def _lease_held(model_dir):
    """The lease of model_dir for the block. Taking it is not atomic on an object store:
    two trainers started within the same moment could both write it, and the last
    writer's heartbeat holds it."""
    path = os.path.join(model_dir, LEASE_FILE)
    holder = recorded_holder(model_dir, lease=True)
    if holder:
        age = time.time() - holder.get('heartbeat', 0)
        if age <= LEASE_TIMEOUT_SECS:
            raise TrainerRunning(model_dir, path, holder)
        print(f'taking over {path} from {_describe_holder(holder)}: its last heartbeat is {age:.0f} s '
              f'old, more than the {LEASE_TIMEOUT_SECS} s timeout', file=sys.stderr, flush=True)
    record = _this_process()
    _write_lease(path, record)
    stop = threading.Event()
    beating = threading.Thread(target=_heartbeat, args=(path, record, stop),
                               name='lease-heartbeat', daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()
        if _same_holder(recorded_holder(model_dir, lease=True), record):
            tf.io.gfile.remove(path)


def _write_lease(path, record):
    """Writes the lease with a fresh heartbeat, beside it and renamed over it, so that a
    reader never sees half a lease."""
    record['heartbeat'] = time.time()
    temporary = f'{path}.{record["pid"]}.tmp'
    with tf.io.gfile.GFile(temporary, 'w') as stream:
        stream.write(json.dumps(record))
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _heartbeat(path, record, stop):
    while not stop.wait(LEASE_HEARTBEAT_SECS):
        try:
            _write_lease(path, record)
        except tf.errors.OpError:
            pass  # a passing storage error: the next beat tries again, well within the timeout


def _same_holder(recorded, record):
    return all(recorded.get(key) == record[key] for key in ('host', 'pid', 'since'))


@dataclasses.dataclass
class _Survey:
    """What model_dir's checkpoints look like, before anything is changed.

    `listed`: the checkpoints the state file lists (or, without a readable one, those
    present), oldest first; `state_problem`: why the state file must be rebuilt (None if
    it need not be); `damaged`: (checkpoint, reason) of the newest ones that are damaged,
    newest first; `intact`: the newest checkpoint that is not (None if there is none).
    """
    model_dir: str
    listed: List[str]
    state_problem: Optional[str]
    damaged: List[Tuple[str, str]]
    intact: Optional[str]

    @property
    def needs_repair(self):
        return bool(self.damaged) or (self.state_problem is not None and bool(self.listed))


def _survey(model_dir):
    """What model_dir's checkpoints look like, as a _Survey: reads, changes nothing."""
    listed, state_problem = _listed_checkpoints(model_dir)
    damaged = []
    for checkpoint in reversed(listed):
        reason = _damage(checkpoint)
        if reason is None:
            return _Survey(model_dir, listed, state_problem, damaged, checkpoint)
        damaged.append((checkpoint, reason))
    return _Survey(model_dir, listed, state_problem, damaged, None)


def _listed_checkpoints(model_dir):
    """(the checkpoints the state file lists, oldest first; None) or, when the state file
    is missing or unreadable, (the checkpoints present, why the file must be rebuilt)."""
    state_path = os.path.join(model_dir, STATE_FILE)
    if not tf.io.gfile.exists(state_path):
        return _checkpoints_present(model_dir), f'{state_path} is missing'
    try:
        state = tf.train.get_checkpoint_state(model_dir)
    except ValueError:  # a state file without a model_checkpoint_path
        state = None
    if state is None:
        return _checkpoints_present(model_dir), f'{state_path} is unreadable'
    listed = [path for path in state.all_model_checkpoint_paths if path != state.model_checkpoint_path]
    return listed + [state.model_checkpoint_path], None


def _checkpoints_present(model_dir):
    """The model.ckpt-N checkpoints whose index file is in model_dir, oldest first."""
    prefixes = [path[:-len('.index')] for path in tf.io.gfile.glob(os.path.join(model_dir, 'model.ckpt-*.index'))]
    return sorted((prefix for prefix in prefixes if CHECKPOINT_STEP.search(prefix)),
                  key=lambda prefix: int(CHECKPOINT_STEP.search(prefix).group(1)))


def _damage(checkpoint):
    """Why `checkpoint` (a path prefix) cannot be restored, or None if it can: its index
    is read and every tensor in it, which checks each one's size and checksum."""
    if not tf.io.gfile.exists(checkpoint + '.index'):
        return 'its index file is missing'
    try:
        reader = tf.train.load_checkpoint(checkpoint)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError) as error:  # IndexError: a data file cut short
        return str(getattr(error, 'message', error)).strip().splitlines()[0]
    return None


def repair(model_dir):
    """Makes model_dir resumable; the caller holds it (trainer_lock). Moves the newest
    damaged checkpoints aside, rewrites or rebuilds the state file to list those intact,
    reports each change in one line on stderr, and returns the newest intact checkpoint
    (None if model_dir has no checkpoint). A UserError when none is intact, naming the
    files, which stay where they are."""
    found = _survey(model_dir)
    if not found.needs_repair:
        return found.intact
    if found.intact is None:
        raise _nothing_intact(found)
    intact = found.listed[:len(found.listed) - len(found.damaged)]
    if found.state_problem is not None:
        print(f'{found.state_problem}: rebuilt it from the checkpoints present, listing '
              f'{", ".join(os.path.basename(path) for path in intact)}', file=sys.stderr, flush=True)
    for checkpoint, reason in found.damaged:
        moved = _move_aside(checkpoint, model_dir)
        print(f'checkpoint {checkpoint} is damaged ({reason}): moved '
              f'{", ".join(moved) or "nothing (its files are gone)"} to '
              f'{os.path.join(model_dir, DAMAGED_DIR)}; going on from {found.intact}', file=sys.stderr, flush=True)
    _write_state(model_dir, intact)
    return found.intact


def checkpoint_to_read(model_dir):
    """The checkpoint bin/evaluate and bin/export read: the newest intact one (None
    without any). The model_dir is repaired (`repair`) only when no trainer holds it,
    under its lock for that moment; beside a running trainer the damaged files are left
    where they are and the newest intact checkpoint is read."""
    found = _survey(model_dir)
    if not found.needs_repair:
        return found.intact
    try:
        with trainer_lock(model_dir):
            return repair(model_dir)
    except TrainerRunning as running:
        if found.intact is None:
            raise _nothing_intact(found) from None
        trainer = f'{_describe_holder(running.holder)} trains in {model_dir}'
        if found.state_problem is not None:
            print(f'{found.state_problem}; not rebuilt while {trainer}; reading {found.intact}',
                  file=sys.stderr, flush=True)
        for checkpoint, reason in found.damaged:
            print(f'checkpoint {checkpoint} is damaged ({reason}); left in place while {trainer}; '
                  f'reading {found.intact}', file=sys.stderr, flush=True)
        return found.intact


def _nothing_intact(found):
    """The UserError of a model_dir whose checkpoints are all damaged: nothing is moved,
    since the run could only start over."""
    files = [name for checkpoint, _ in found.damaged for name in _files_of(checkpoint)]
    reasons = '; '.join(f'{os.path.basename(checkpoint)}: {reason}' for checkpoint, reason in found.damaged)
    left = f'the files {", ".join(files)} are left as they are' if files else 'none of their files is left'
    return UserError(f'no intact checkpoint left in {found.model_dir} ({reasons}); {left}: restore them '
                     f'from a copy, or move them and {os.path.join(found.model_dir, STATE_FILE)} away to '
                     'start the run over')


def _files_of(checkpoint):
    """The files of a checkpoint (index, data shards, meta graph), by name."""
    return sorted(os.path.basename(path) for path in tf.io.gfile.glob(checkpoint + '.*'))


def _move_aside(checkpoint, model_dir):
    """Moves a checkpoint's files into model_dir/damaged/ (a name already there gets a
    .1, .2, ... suffix); returns their names."""
    damaged_dir = os.path.join(model_dir, DAMAGED_DIR)
    tf.io.gfile.makedirs(damaged_dir)
    moved = []
    for name in _files_of(checkpoint):
        target = os.path.join(damaged_dir, name)
        copies = 0
        while tf.io.gfile.exists(target):
            copies += 1
            target = os.path.join(damaged_dir, f'{name}.{copies}')
        tf.io.gfile.rename(os.path.join(os.path.dirname(checkpoint), name), target)
        moved.append(name)
    return moved


def _write_state(model_dir, checkpoints):
    """Replaces model_dir's state file by one listing `checkpoints` (oldest first, the
    last the newest) by name, as the Estimator's saver writes it: written beside and
    renamed over, so a reader sees the old file or the new one."""
    names = [os.path.basename(path) for path in checkpoints]
    state = checkpoint_state_pb2.CheckpointState(model_checkpoint_path=names[-1],
                                                 all_model_checkpoint_paths=names)
    path = os.path.join(model_dir, STATE_FILE)
    with tf.io.gfile.GFile(path + '.tmp', 'w') as stream:
        stream.write(text_format.MessageToString(state))
    tf.io.gfile.rename(path + '.tmp', path, overwrite=True)
