"""What every data source gives the input_fn factory: single decoded examples, and metadata.

A source reads *records* (a serialized example, an image file, a row of an array) from
one or more *origins* (files) and decodes each one in the graph. Decoding can fail: a
truncated PNG, bytes that are no image, a clip whose frames differ in size, a label
outside [0, num_classes). `Source.examples` runs every source's decoder through one
guard that either stops with an error naming the origin and the record's index, or,
with `skip_bad_records`, drops the record and counts it.

How the guard finds bad records without Python in the pipeline: each record is numbered
by its position in the stream before decoding; failed decodes are dropped
(`ignore_errors`); the kept records are counted, and a record's position minus the
records kept before it is how many were dropped so far. Each record also carries the
name of the record before it, which is the bad one when that number goes up. All of
this is done on blocks of records (see decoded_blocks), each decoded as a small dataset
of its own whose `ignore_errors` sees only decoding errors: a reader error (a truncated
file) stays an error instead of being retried forever.
"""

import abc
import dataclasses
import re
from typing import Optional, Tuple

import tensorflow as tf

from input_fns import (BAD_RECORDS_KEY, BOXES_KEY, CLIP, FRAME_LABELS_KEY, FRAMES_KEY, IMAGE, IMAGE_KEY,
                       LENGTH_KEY, NUM_BOXES_KEY)

AUTOTUNE = tf.data.AUTOTUNE
# The prefix of the error a bad record raises; estimator_models.cli turns it into one line.
BAD_RECORD_ERROR = 'bad record'
# The "record before" the first one.
_START_ORIGIN = '<start of data>'
_START_INDEX = -1
# Records decoded as one nested dataset (see decoded_blocks): larger blocks are faster,
# smaller ones hold fewer encoded and decoded records in memory (clips are large).
DECODE_BLOCK = {IMAGE: 256, CLIP: 16}
_BAD_RECORD_REASON = ('cannot be read: it does not parse or decode, its frames differ in size, '
                      'or its label is out of range (--skip_bad_records drops such records)')
# What tf.debugging.Assert makes of that message: the origin comes quoted, perhaps escaped.
_BAD_RECORD_IN_ERROR = re.compile(BAD_RECORD_ERROR + r' (-?\d+) of \\?"(.*?)\\?" cannot be read')


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What is known of a source without reading it all.

    Attributes:
      spec: the data spec it was made from, for messages.
      kind: input_fns.IMAGE or input_fns.CLIP.
      frame_shape: (H, W, C) of every image or frame, or None when it varies.
      num_classes: K; labels lie in [0, K).
      class_names: K names, or None when the source has none.
      num_examples: how many examples, or None when unknown without reading them all.
      most_examples: at most how many examples (num_examples when that is known; for a
        part of a source, the whole's count), or None; sizes the in-memory cache.
      has_boxes: images come with boxes (BOXES_KEY, NUM_BOXES_KEY).
      num_frame_classes: clips come with a label per frame (FRAME_LABELS_KEY) in
        [0, num_frame_classes); 0 when they do not.
    """
    spec: str
    kind: str
    frame_shape: Optional[Tuple[int, int, int]]
    num_classes: int
    class_names: Optional[Tuple[str, ...]] = None
    num_examples: Optional[int] = None
    most_examples: Optional[int] = None
    has_boxes: bool = False
    num_frame_classes: int = 0

    def __post_init__(self):
        if self.most_examples is None and self.num_examples is not None:
            object.__setattr__(self, 'most_examples', self.num_examples)


@dataclasses.dataclass(frozen=True)
class Shard:
    """Which part of a source one worker reads: every `count`-th file (or example), from `index`."""
    index: int = 0
    count: int = 1


class Source(abc.ABC):
    """A labelled dataset read as a stream. Subclasses give `info`, `records` and `decode`."""

    info: SourceInfo

    @abc.abstractmethod
    def records(self, shard, shuffle_seed):
        """The undecoded records of this shard.

        Args:
          shard: a Shard; sources of several files split by file when there are at least
            `shard.count` of them, else by record.
          shuffle_seed: None to read files in their listed order; else the file order is
            shuffled with this seed, anew on each pass.

        Returns:
          A tf.data.Dataset of (origin string [], index int64 [], payload): the file a
          record came from, its index in that file, and whatever `decode` takes.
        """

    @abc.abstractmethod
    def decode(self, payload, channels):
        """One record's payload -> (features, label int32 []), in the graph; may fail.

        Features are {IMAGE_KEY: [h, w, c]} or {FRAMES_KEY: [t, h, w, c], LENGTH_KEY:
        int32 []}, pixels uint8 or float on the 0..255 scale. Decoders of encoded images
        give `channels` channels; others give what the data has. Sources of encoded
        images also take `max_image_pixels=` (default
        preprocess.DEFAULT_MAX_IMAGE_PIXELS) and fail on an image whose header claims more.
        """

    def shard_description(self, shard):
        """What `shard` of this source holds, for the line a cluster worker prints.
        Sources of several files say which files (describe_shard)."""
        return describe_shard((), shard)

    def first_frame_shape(self):
        """(H, W, C) of the first example's images: the default model input size. Sources
        whose images vary in size override it with a peek at their first example."""
        return self.info.frame_shape

    def examples(self, channels, num_classes, shard=Shard(), shuffle_seed=None,
                 skip_bad_records=False, transform=None, max_image_pixels=None):
        """Decoded examples, one pass, in reading order: a Dataset of (features, label),
        features as `decode` gives them (or `transform` makes them) plus BAD_RECORDS_KEY,
        int64 [], the records dropped so far in this pass (including any right after this
        example).

        A bad record raises InvalidArgumentError `bad record N of ORIGIN ...` when it
        is reached, unless `skip_bad_records`. `transform`, if given, maps each decoded
        (features, label) inside the same function call as the decoding.
        `max_image_pixels` (the hparam): an encoded image whose header claims more pixels
        is a bad record, refused before it is decoded; None: the source's default.
        """
        decode = self.checked_decoder(channels, num_classes, transform, max_image_pixels)
        blocks = decoded_blocks(self, decode, shard, shuffle_seed, skip_bad_records)
        examples = blocks.unbatch()
        if _is_ragged(examples.element_spec):
            examples = examples.map(_dense, num_parallel_calls=AUTOTUNE, deterministic=True)
        return examples

    def checked_decoder(self, channels, num_classes, transform=None, max_image_pixels=None):
        """payload -> (features, label int32), failing on a label outside [0, num_classes)
        and (when given) on an encoded image claiming more than `max_image_pixels`."""
        # Passed only when set, so that a decode() that takes no limit (a wrapper such as
        # specs.HeldOutPart) still works when no limit is asked for.
        limit = {} if max_image_pixels is None else {'max_image_pixels': max_image_pixels}

        def decode(payload):
            features, label = self.decode(payload, channels, **limit)
            label = tf.cast(label, tf.int32)
            check = tf.debugging.Assert(
                tf.logical_and(label >= 0, label < num_classes), ['label out of range', label])
            with tf.control_dependencies([check]):
                label = tf.identity(label)
            return transform(features, label) if transform else (features, label)
        return decode


def decoded_blocks(data, decode, shard, shuffle_seed, skip_bad_records):
    """The records of a Source decoded by `decode` (its checked_decoder) in blocks, in
    reading order, failed ones dropped and counted: a Dataset of (features, label)
    batches (ragged where sizes vary), features with BAD_RECORDS_KEY [n].

    Each block of DECODE_BLOCK records is numbered (positions in the stream, and the
    (origin, index) of the record before each) and decoded as a dataset of its own, one
    function call per record (decoding, checks and `transform` together: on small images
    the per-call overhead, not the work, bounds the rate). A marker row closes each
    block: counted like a record, it makes records dropped at the end of a block (and of
    the data) count, and every block yield exactly one batch, which keeps two blocks
    decoding at once in order. Payloads must have one shape, to be batched.
    """
    records = data.records(shard, shuffle_seed)
    decoded_spec = records.map(lambda origin, index, payload: decode(payload)).element_spec
    blank = tf.nest.map_structure(_zeros_like_spec, decoded_spec)
    size = DECODE_BLOCK[data.info.kind]
    fixed_shapes = all(spec.shape.is_fully_defined() for spec in tf.nest.flatten(decoded_spec))

    def batched(dataset, count):
        return dataset.batch(count) if fixed_shapes else dataset.ragged_batch(count)

    def decoded_record(position, previous, payload):
        features, label = decode(payload)
        return position, tf.constant(False), previous, features, label

    def decode_block(positions, previous, payload, end, last):
        # `ignore_errors` drops what fails inside this block's dataset only: an error of
        # the reader itself (a missing or truncated file) reaches the caller, where an
        # outer ignore_errors would retry the failing read forever.
        kept = tf.data.Dataset.from_tensor_slices((positions, previous, payload)).map(
            decoded_record, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()
        marker = tf.data.Dataset.from_tensors((end, tf.constant(True), last) + blank)
        return batched(kept.concatenate(marker), size + 1)

    numbered = records.batch(size).scan(
        (tf.constant(0, tf.int64), tf.constant(_START_ORIGIN), tf.constant(_START_INDEX, tf.int64)),
        _numbered_block)
    blocks = numbered.interleave(decode_block, cycle_length=2, block_length=1,
                                 num_parallel_calls=2, deterministic=True)
    return blocks.scan(tf.constant(0, tf.int64),
                       lambda kept, block: _counted_block(kept, block, skip_bad_records))


def _numbered_block(state, block):
    """One block of (origin [n], index [n], payload [n]) -> (positions [n], (origin, index)
    of the record before each, payload, the position after the block, (origin, index) of
    its last record); the state carries the position and last record across blocks."""
    start, last_origin, last_index = state
    origin, index, payload = block
    count = tf.size(index, out_type=tf.int64)
    previous = (tf.concat([last_origin[tf.newaxis], origin[:-1]], 0),
                tf.concat([last_index[tf.newaxis], index[:-1]], 0))
    end, last = start + count, (origin[-1], index[-1])
    return (end,) + last, (start + tf.range(count), previous, payload, end, last)


def _counted_block(kept_before, block, skip_bad_records):
    """A decoded block (rows in reading order, the marker last) -> (kept records so far,
    (features with BAD_RECORDS_KEY, label) of its real rows).

    A row's dropped count is its position minus the records kept before it. Unless
    `skip_bad_records`, a count above 0 is the bad-record error, naming the record before
    the first such row: the dropped one. Each row reports the larger of its count and the
    next row's, so that the block's last real row carries what its marker counted.
    """
    positions, is_marker, (origin, index), features, label = block
    real = tf.cast(tf.logical_not(is_marker), tf.int64)
    dropped = positions - (kept_before + tf.cumsum(real, exclusive=True))
    if not skip_bad_records:
        first = tf.argmax(tf.cast(dropped > 0, tf.int32))
        message = tf.strings.format(BAD_RECORD_ERROR + ' {} of {} ' + _BAD_RECORD_REASON,
                                    [index[first], origin[first]])
        check = tf.debugging.Assert(tf.reduce_all(tf.equal(dropped, 0)), [message], summarize=1)
        with tf.control_dependencies([check]):
            dropped = tf.identity(dropped)
    dropped = tf.maximum(dropped, tf.concat([dropped[1:], dropped[-1:]], axis=0))
    rows = tf.where(tf.logical_not(is_marker))[:, 0]
    counted = tf.nest.map_structure(lambda tensor: tf.gather(tensor, rows),
                                    (dict(features, **{BAD_RECORDS_KEY: dropped}), label))
    return kept_before + tf.reduce_sum(real), counted


def _is_ragged(element_spec):
    return any(isinstance(spec, tf.RaggedTensorSpec) for spec in tf.nest.flatten(element_spec))


def _dense(features, label):
    """An example out of a ragged block, its tensors dense again at their own sizes."""
    def dense(tensor):
        return tensor.to_tensor() if isinstance(tensor, tf.RaggedTensor) else tensor
    return tf.nest.map_structure(dense, features), dense(label)


def bad_record_message(error_message):
    """The one-line message of a bad-record error raised by the guard, or None if
    the TensorFlow error message is about something else."""
    match = _BAD_RECORD_IN_ERROR.search(error_message)
    if match is None:
        return None
    return f'{BAD_RECORD_ERROR} {match.group(1)} of {match.group(2)} {_BAD_RECORD_REASON}'


def _zeros_like_spec(spec):
    shape = [1 if size is None else size for size in spec.shape.as_list()]
    return tf.zeros(shape, spec.dtype)


def clip_features(frames, length=None, frame_labels=None):
    """Features of one clip: frames [t, h, w, c], its length (default t) and, when given,
    its frame labels [t] (checked to be one per frame)."""
    if length is None:
        length = tf.shape(frames)[0]
    features = {FRAMES_KEY: frames, LENGTH_KEY: tf.cast(length, tf.int32)}
    if frame_labels is not None:
        frame_labels = tf.cast(frame_labels, tf.int32)
        check = tf.debugging.assert_equal(tf.size(frame_labels), tf.cast(length, tf.int32),
                                          message='frame labels: not one per frame')
        with tf.control_dependencies([check]):
            features[FRAME_LABELS_KEY] = tf.identity(frame_labels)
    return features


def image_features(image, boxes=None):
    """Features of one image [h, w, c], and of its boxes float32 [R, 4] when given."""
    if boxes is None:
        return {IMAGE_KEY: image}
    return {IMAGE_KEY: image, BOXES_KEY: boxes, NUM_BOXES_KEY: tf.shape(boxes)[0]}


def shard_files(files, shard):
    """This shard's files, or all of them when there are fewer files than shards (the
    records are then split by `shard_records`)."""
    if len(files) >= shard.count:
        return files[shard.index::shard.count]
    return files


def describe_shard(files, shard):
    """In words, what shard_files and shard_records give `shard` of these files: the
    files it reads whole, or every count-th record."""
    if files and len(files) >= shard.count:
        return 'files ' + ', '.join(shard_files(files, shard))
    first, step = shard.index, shard.count
    return f'records {first}, {first + step}, {first + 2 * step}, ...'


def shard_records(records, num_files, shard):
    if shard.count > 1 and num_files < shard.count:
        return records.shard(shard.count, shard.index)
    return records


def interleaved_files(files, read_file, shuffle_seed, cycle_length=8):
    """Records of several files read in parallel, in an order fixed by `shuffle_seed`.

    Args:
      files: file paths (already this shard's), or a tuple of equally long lists whose
        i-th entries describe file i (passed to `read_file` as separate arguments).
      read_file: a file's tensors -> Dataset of (origin, (index, payload)), e.g.
        `in_file(path, records)`.
      shuffle_seed: None reads the files in order; else their order is shuffled with
        it, anew on each pass.

    Returns a Dataset of (origin, index, payload).
    """
    names = tf.data.Dataset.from_tensor_slices(files)
    count = len(files[0]) if isinstance(files, tuple) else len(files)
    if shuffle_seed is not None and count > 1:
        names = names.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    # tf.data passes the parts of a tuple element to read_file as separate arguments.
    nested = names.interleave(read_file, cycle_length=max(1, min(cycle_length, count)),
                              block_length=1, num_parallel_calls=AUTOTUNE, deterministic=True)
    return flattened(nested)


def in_file(path, records):
    """The records of one file, numbered: Dataset of (path, (index, record))."""
    return tf.data.Dataset.zip((tf.data.Dataset.from_tensors(path).repeat(), records.enumerate()))


def flattened(nested):
    """(origin, (index, payload)) -> (origin, index, payload).

    Done with `scan` rather than `map`: tf.data runs a scan function that only moves its
    inputs around for ~4 us per element here, a map function for ~30 us (measured).
    """
    def step(state, element):
        origin, (index, payload) = element
        return state, (origin, index, payload)
    return nested.scan(tf.constant(0), step)
