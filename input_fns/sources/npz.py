"""`.npz` files read in place: each array row is a fixed-length record of the file.

`np.savez` stores every array uncompressed, as an `.npy` member of a zip archive, so the
rows of `x` sit back to back at a known offset of the file. `FixedLengthRecordDataset`
reads them from there: nothing is loaded whole, no Python runs per example, and the
arrays never become graph constants. Members that are compressed (`np.savez_compressed`)
or not in C order are rewritten once, uncompressed, into the project's cache
(estimator_models.cache).

Accepted arrays: `x` `(N,H,W[,C])` images or `(N,T,H,W[,C])` clips, uint8 or float on the
0..255 scale, and `y` `(N,)` integer labels; or the same with suffixes `_train`/`_test`
(Keras' `mnist.npz`); optional `lengths` (clips; frames past a clip's length are
padding), `frame_labels` `(N,T)` (clips: a class per frame) and `class_names`. Only
labels, lengths, frame labels and class names are read into memory.
"""

import dataclasses
import hashlib
import os
import struct
import sys
import zipfile

import numpy as np
import tensorflow as tf

from estimator_models import cache
from estimator_models.errors import UserError
from input_fns import CLIP, IMAGE
from input_fns.sources import source

_ZIP_LOCAL_HEADER = struct.Struct('<4sHHHHHIIIHH')


@dataclasses.dataclass(frozen=True)
class RawArray:
    """Where an array's rows lie in a file: `count` rows of `row_shape`, `dtype`, from `offset`."""
    path: str
    offset: int
    count: int
    row_shape: tuple
    dtype: np.dtype

    @property
    def row_bytes(self):
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def rows(self):
        """Dataset of the rows' raw bytes, string []."""
        footer = os.path.getsize(self.path) - self.offset - self.count * self.row_bytes
        return tf.data.FixedLengthRecordDataset(
            self.path, self.row_bytes, header_bytes=self.offset, footer_bytes=footer)


def open_npz(path, kind=None):
    """(train NpzSource, test NpzSource or None) of a .npz file; kind None: guessed from x's shape."""
    if not os.path.isfile(path):
        raise UserError(f'no such .npz file: {path}')
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name[:-4]: name for name in archive.namelist() if name.endswith('.npy')}
            class_names = _class_names(archive, members)
            if 'x' in members:
                return _split(path, archive, members, '', kind, class_names), None
            if 'x_train' in members or 'x_test' in members:
                return (_split(path, archive, members, '_train', kind, class_names),
                        _split(path, archive, members, '_test', kind, class_names))
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f'cannot read {path} as .npz: {error}') from None
    raise UserError(f'{path}: expected arrays x and y (or x_train, y_train, x_test, y_test), '
                    f'found {sorted(members)}')


class NpzSource(source.Source):
    """One split of a .npz: rows of x, y (and lengths) read as fixed-length records."""

    def __init__(self, inputs, labels, lengths, info, frame_labels=None):
        self.inputs, self.labels, self.lengths, self.info = inputs, labels, lengths, info
        self.frame_labels = frame_labels

    def records(self, shard, shuffle_seed):
        del shuffle_seed  # One file: its order is the order of the rows.
        columns = (self.inputs, self.labels, self.lengths) + ((self.frame_labels,) if self.frame_labels else ())
        rows = tf.data.Dataset.zip(tuple(column.rows() for column in columns))
        records = source.flattened(source.in_file(self.inputs.path, rows))
        return source.shard_records(records, 1, shard)

    def decode(self, payload, channels, max_image_pixels=None):
        # Raw pixels have the channels they have (the factory fits them), and no header.
        del channels, max_image_pixels
        pixels, label, length = payload[:3]
        pixels = tf.reshape(tf.io.decode_raw(pixels, tf.as_dtype(self.inputs.dtype)), self.inputs.row_shape)
        label = tf.io.decode_raw(label, tf.as_dtype(self.labels.dtype))[0]
        length = tf.io.decode_raw(length, tf.as_dtype(self.lengths.dtype))[0]
        if self.info.kind == CLIP:
            tf.debugging.assert_positive(length, message='clip length must be positive')
            frame_labels = None
            if self.frame_labels:
                frame_labels = tf.io.decode_raw(payload[3], tf.as_dtype(self.frame_labels.dtype))[:length]
            return source.clip_features(pixels[:length], length, frame_labels), label
        return source.image_features(pixels), label


def _split(path, archive, members, suffix, kind, class_names):
    x_key, y_key, lengths_key = 'x' + suffix, 'y' + suffix, 'lengths' + suffix
    if x_key not in members:
        return None
    if y_key not in members:
        raise UserError(f'{path}: has {x_key} but no {y_key}')
    inputs = _raw_array(path, archive, members[x_key])
    labels = _raw_array(path, archive, members[y_key])
    label_values = _load(archive, members[y_key])
    kind = kind or _guessed_kind(inputs.row_shape)
    _check_inputs(path, inputs, kind)
    _check_labels(path, label_values, inputs.count)
    lengths = _lengths(path, archive, members.get(lengths_key), inputs, kind)
    frame_labels, num_frame_classes = _frame_labels(path, archive, members.get('frame_labels' + suffix),
                                                    inputs, kind)
    frame_shape = _frame_shape(inputs.row_shape[1:] if kind == CLIP else inputs.row_shape)
    info = source.SourceInfo(
        spec=path, kind=kind, frame_shape=frame_shape,
        num_classes=len(class_names) if class_names else int(label_values.max()) + 1,
        class_names=class_names, num_examples=inputs.count, num_frame_classes=num_frame_classes)
    row_shape = (inputs.row_shape[0],) + frame_shape if kind == CLIP else frame_shape
    return NpzSource(dataclasses.replace(inputs, row_shape=row_shape), labels, lengths, info, frame_labels)


def _frame_labels(path, archive, member, inputs, kind):
    """(the frame_labels column as a RawArray, its number of classes), or (None, 0)."""
    if kind != CLIP or member is None:
        return None, 0
    values = _load(archive, member)
    if values.shape != (inputs.count, inputs.row_shape[0]) or not np.issubdtype(values.dtype, np.integer):
        raise UserError(f'{path}: frame_labels must be integers shaped {(inputs.count, inputs.row_shape[0])}, '
                        f'got {values.dtype} {values.shape}')
    if values.min() < 0:
        raise UserError(f'{path}: negative frame label {values.min()}')
    return _raw_array(path, archive, member), int(values.max()) + 1


def _guessed_kind(row_shape):
    """Rows (H,W) and (H,W,C) with C of 1 or 3 are images; (T,H,W) and (T,H,W,C) clips."""
    if len(row_shape) == 2 or (len(row_shape) == 3 and row_shape[-1] in (1, 3)):
        return IMAGE
    return CLIP


def _frame_shape(shape):
    """(H, W) or (H, W, C) -> (H, W, C)."""
    return tuple(int(size) for size in shape) + ((1,) if len(shape) == 2 else ())


def _check_inputs(path, inputs, kind):
    rank = len(inputs.row_shape) + 1
    image_rank = {IMAGE: 4, CLIP: 5}[kind]
    if rank not in (image_rank - 1, image_rank):
        expected = '(N,H,W[,C])' if kind == IMAGE else '(N,T,H,W[,C])'
        raise UserError(f'expected {kind} arrays shaped {expected}, got shape '
                        f'{(inputs.count,) + inputs.row_shape}')
    if inputs.dtype != np.uint8 and not np.issubdtype(inputs.dtype, np.floating):
        raise UserError(f'{path}: pixels must be uint8 or float, got {inputs.dtype}')
    if rank == image_rank and inputs.row_shape[-1] not in (1, 3):
        raise UserError(f'{path}: images must have 1 or 3 channels, got {inputs.row_shape[-1]}')
    if inputs.count == 0:
        raise UserError(f'{path}: no examples')


def _check_labels(path, labels, count):
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f'{path}: labels must be integers shaped (N,), got {labels.dtype} {labels.shape}')
    if len(labels) != count:
        raise UserError(f'{path}: {count} inputs but {len(labels)} labels')
    if labels.min() < 0:
        raise UserError(f'{path}: negative label {labels.min()}')


def _lengths(path, archive, member, inputs, kind):
    """The lengths column as a RawArray; clips without one are full length, images get a dummy."""
    if kind == CLIP and member is not None:
        values = _load(archive, member)
        max_frames = inputs.row_shape[0]
        if values.shape != (inputs.count,) or not np.issubdtype(values.dtype, np.integer):
            raise UserError(f'{path}: lengths must be integers shaped ({inputs.count},), got {values.shape}')
        if values.min() < 1 or values.max() > max_frames:
            raise UserError(f'{path}: clip lengths must lie in 1..{max_frames}')
        return _raw_array(path, archive, member)
    full = inputs.row_shape[0] if kind == CLIP else 1
    return _cached_raw(path, 'lengths', np.full(inputs.count, full, np.int32))


def _class_names(archive, members):
    if 'class_names' not in members:
        return None
    return tuple(str(name) for name in _load(archive, members['class_names']))


def _load(archive, member):
    with archive.open(member) as stream:
        return np.lib.format.read_array(stream, allow_pickle=False)


def _raw_array(path, archive, member):
    """Where `member`'s rows are in `path`, or in an uncompressed cached copy."""
    info = archive.getinfo(member)
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        shape, fortran_order, dtype = np.lib.format._read_array_header(stream, version)  # pylint: disable=protected-access
        header_size = stream.tell()
    if info.compress_type != zipfile.ZIP_STORED or fortran_order or dtype.byteorder == '>':
        return _cached_raw(path, member, _load(archive, member))
    with open(path, 'rb') as stream:
        stream.seek(info.header_offset)
        fields = _ZIP_LOCAL_HEADER.unpack(stream.read(_ZIP_LOCAL_HEADER.size))
    name_length, extra_length = fields[-2], fields[-1]
    offset = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length + header_size
    return RawArray(path, offset, int(shape[0]) if shape else 0, tuple(shape[1:]), dtype)


def _cached_raw(path, name, array):
    """Writes `array` (C order, little-endian) once to the cache; its RawArray there."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder('<'))
    stat = os.stat(path)
    key = hashlib.sha256(f'{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}:{name}'.encode())
    try:
        cached = os.path.join(cache.directory(), 'npz', key.hexdigest()[:24] + '.raw')
        if not os.path.exists(cached):
            _write_raw(path, name, array, cached)
    except OSError as error:
        # Not the data's fault: said apart from the reading errors open_npz reports.
        raise UserError(f'cannot write the uncompressed copy of {path} ({name}) into the cache: '
                        f'{error.strerror or error}; set {cache.ENV} to a writable folder with room') from None
    return RawArray(cached, 0, len(array), tuple(array.shape[1:]), array.dtype)


def _write_raw(path, name, array, cached):
    if array.nbytes > 1 << 20:
        print(f'{path}: uncompressing {name} into {cached}', file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    temporary = f'{cached}.{os.getpid()}.tmp'
    array.tofile(temporary)
    os.replace(temporary, cached)
