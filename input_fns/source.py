"""What every data source gives the input_fn factory: single decoded examples, and metadata.

A source reads *records* (a serialized example, an image file, a row of an array) from
one or more *origins* (files) and decodes each one in the graph. Decoding can fail: a
truncated PNG, bytes that are no image, a clip whose frames differ in size, a label
outside [0, num_classes). `Source.examples` runs every source's decoder through one
guard that either stops with an error naming the origin and the record's index, or,
with `skip_bad_records`, drops the record and counts it.

How the guard finds bad records without Python in the pipeline: each record is numbered
by its position in the stream before decoding; failed decodes are dropped
(`ignore_errors`); the surviving records are numbered again, and the difference of the
two numbers is how many were dropped so far. A sentinel record after the last one makes
bad records at the very end count too. Each record also carries the name of the record
before it, which is the bad one when the count goes up.

Records are decoded in blocks, each block a small dataset of its own whose
`ignore_errors` sees only decoding errors: a reader error (a truncated file) stays an
error instead of being retried forever. The count is checked per example in evaluation
and per block of examples, in reading order, in training (dataset.make_input_fn).
"""

import abc
import dataclasses
import re
from typing import Optional, Tuple

import tensorflow as tf

from input_fns import BAD_RECORDS_KEY, CLIP, FRAMES_KEY, IMAGE, IMAGE_KEY, LENGTH_KEY

AUTOTUNE = tf.data.AUTOTUNE
# The prefix of the error a bad record raises; estimator_models.cli turns it into one line.
BAD_RECORD_ERROR = 'bad record'
_SENTINEL_ORIGIN = '<end of data>'
_SENTINEL_INDEX = -1
# Records decoded as one nested dataset (see decoded_stream): larger blocks are faster,
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
    """
    spec: str
    kind: str
    frame_shape: Optional[Tuple[int, int, int]]
    num_classes: int
    class_names: Optional[Tuple[str, ...]] = None
    num_examples: Optional[int] = None


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
        give `channels` channels; others give what the data has.
        """

    def first_frame_shape(self):
        """(H, W, C) of the first example's images: the default model input size. Sources
        whose images vary in size override it with a peek at their first example."""
        return self.info.frame_shape

    def examples(self, channels, num_classes, shard=Shard(), shuffle_seed=None,
                 skip_bad_records=False, transform=None):
        """Decoded examples, one pass: a Dataset of (features, label), features as `decode`
        gives them plus BAD_RECORDS_KEY, int64 [], the records dropped so far in this pass
        (including any right after this example).

        A bad record raises InvalidArgumentError `bad record N of ORIGIN ...` when it
        is reached, unless `skip_bad_records`. `transform`, if given, maps each decoded
        (features, label) inside the same function call as the decoding.
        """
        stream = decoded_stream(self, channels, num_classes, shard, shuffle_seed, transform)
        counted = stream.map(lambda kept, element: (element[1],) + counted_batch(
            kept, element, skip_bad_records))
        if skip_bad_records:
            counted = _with_next_count(counted, element_spec=counted.element_spec)
        return counted.filter(lambda is_sentinel, features, label: tf.logical_not(is_sentinel)).map(
            lambda is_sentinel, features, label: (features, label))

    def checked_decoder(self, channels, num_classes, transform=None):
        """payload -> (features, label int32), failing on a label outside [0, num_classes)."""
        def decode(payload):
            features, label = self.decode(payload, channels)
            label = tf.cast(label, tf.int32)
            check = tf.debugging.Assert(
                tf.logical_and(label >= 0, label < num_classes), ['label out of range', label])
            with tf.control_dependencies([check]):
                label = tf.identity(label)
            return transform(features, label) if transform else (features, label)
        return decode


def decoded_stream(data, channels, num_classes, shard, shuffle_seed, transform):
    """The decoded records of a Source, failed ones dropped, numbered for counting.

    Elements are (kept, (position, is_sentinel, previous, features, label)): `position`
    counts records before decoding, `kept` those that decoded, so `position - kept` is
    the number dropped so far; `previous` is the (origin, index) of the record before,
    the one dropped when that number goes up. A sentinel (is_sentinel True) follows the
    last record, so that records dropped at the very end are counted too.

    Each record costs one function call here (decoding, checks and `transform`
    together): on small images the per-call overhead, not the work, bounds the rate.
    Payloads must have one shape, so that records can be grouped into blocks.
    """
    records = data.records(shard, shuffle_seed)
    decode = data.checked_decoder(channels, num_classes, transform)
    blank = tf.nest.map_structure(_zeros_like_spec, records.map(
        lambda origin, index, payload: decode(payload)).element_spec)
    records = records.concatenate(_sentinel(records))

    def decoded_record(position, record):
        _, _, previous, payload = record
        features, label = decode(payload)
        return position, tf.constant(False), previous, features, label

    def decode_block(positions, block):
        # Only the last block holds the sentinel, always as its last record: it skips the
        # decoder and takes its place after the block's real records.
        real = tf.not_equal(block[1], _SENTINEL_INDEX)
        real_records = tf.data.Dataset.from_tensor_slices(
            tf.nest.map_structure(lambda column: tf.boolean_mask(column, real), (positions, block)))
        # `ignore_errors` drops what fails inside this block's dataset only: an error of
        # the reader itself (a missing or truncated file) reaches the caller, where an
        # outer ignore_errors would retry the failing read forever.
        decoded = real_records.map(decoded_record, num_parallel_calls=AUTOTUNE,
                                   deterministic=True).ignore_errors()
        sentinel_position = tf.boolean_mask(positions, tf.logical_not(real))
        sentinel_previous = tf.nest.map_structure(
            lambda column: tf.boolean_mask(column, tf.logical_not(real)), block[2])
        sentinels = tf.data.Dataset.from_tensor_slices(
            (sentinel_position, sentinel_previous)).map(
                lambda position, previous: (position, tf.constant(True), previous) + blank)
        return decoded.concatenate(sentinels)

    # Two blocks decode at once; every block yields at most DECODE_BLOCK examples, so the
    # interleave keeps them in order.
    block_size = DECODE_BLOCK[data.info.kind]
    blocks = _with_previous_record(records).enumerate().batch(block_size)
    decoded = blocks.interleave(decode_block, cycle_length=2, block_length=block_size,
                                num_parallel_calls=2, deterministic=True)
    return decoded.enumerate()


def counted_batch(kept, element, skip_bad_records):
    """(kept, (position, is_sentinel, previous, features, label)) of decoded_stream, one
    example or a batch of them -> (features with BAD_RECORDS_KEY, label).

    Unless `skip_bad_records`, raises the bad-record error when a record was dropped
    before any of them.
    """
    position, _, (origin, index), features, label = element
    dropped = position - kept
    if not skip_bad_records:
        flat_dropped = tf.reshape(dropped, [-1])
        first = tf.argmax(tf.cast(flat_dropped > 0, tf.int32))
        message = tf.strings.format(BAD_RECORD_ERROR + ' {} of {} ' + _BAD_RECORD_REASON, [
            tf.reshape(index, [-1])[first], tf.reshape(origin, [-1])[first]])
        check = tf.debugging.Assert(tf.reduce_all(tf.equal(flat_dropped, 0)), [message], summarize=1)
        with tf.control_dependencies([check]):
            dropped = tf.identity(dropped)
    return dict(features, **{BAD_RECORDS_KEY: dropped}), label


def counted_block(kept, element, skip_bad_records):
    """counted_batch for a block of decoded_stream examples in reading order (a ragged
    batch), with the sentinels taken out. Each example's count includes the next
    example's, so that records dropped at the end of a pass, counted only on the sentinel,
    still reach the example before it (when both are in one block)."""
    features, label = counted_batch(kept, element, skip_bad_records)
    dropped = features[BAD_RECORDS_KEY]
    following = tf.concat([dropped[1:], dropped[-1:]], axis=0)
    features = dict(features, **{BAD_RECORDS_KEY: tf.maximum(dropped, following)})
    real = tf.where(tf.logical_not(element[1]))[:, 0]
    return tf.nest.map_structure(lambda tensor: tf.gather(tensor, real), (features, label))


def bad_record_message(error_message):
    """The one-line message of a bad-record error raised by `counted_batch`, or None if
    the TensorFlow error message is about something else."""
    match = _BAD_RECORD_IN_ERROR.search(error_message)
    if match is None:
        return None
    return f'{BAD_RECORD_ERROR} {match.group(1)} of {match.group(2)} {_BAD_RECORD_REASON}'


def _with_next_count(counted, element_spec):
    """Delays each example by one so that it carries the count of the next one: records
    dropped right after the last example (counted only on the sentinel) then still reach
    a real example."""
    start = tf.nest.map_structure(_zeros_like_spec, element_spec)
    start = (tf.constant(True),) + start[1:]

    def step(previous, element):
        previous_is_start, previous_features, previous_label = previous
        delayed = dict(previous_features, **{BAD_RECORDS_KEY: element[1][BAD_RECORDS_KEY]})
        return element, (previous_is_start, delayed, previous_label)

    return counted.scan(start, step)


def _sentinel(records):
    """One record after the last, so that bad records at the very end are counted too."""
    payload = tf.nest.map_structure(_zeros_like_spec, records.element_spec[2])
    return tf.data.Dataset.from_tensors(
        (tf.constant(_SENTINEL_ORIGIN), tf.constant(_SENTINEL_INDEX, tf.int64), payload))


def _with_previous_record(records):
    """(origin, index, payload) -> (origin, index, (origin, index) of the record before,
    payload)."""
    def step(previous, record):
        origin, index, payload = record
        return (origin, index), (origin, index, previous, payload)
    return records.scan((tf.constant(_SENTINEL_ORIGIN), tf.constant(_SENTINEL_INDEX, tf.int64)), step)


def _zeros_like_spec(spec):
    shape = [1 if size is None else size for size in spec.shape.as_list()]
    return tf.zeros(shape, spec.dtype)


def clip_features(frames, length=None):
    """Features of one clip: frames [t, h, w, c] and its length (default t)."""
    if length is None:
        length = tf.shape(frames)[0]
    return {FRAMES_KEY: frames, LENGTH_KEY: tf.cast(length, tf.int32)}


def image_features(image):
    return {IMAGE_KEY: image}


def shard_files(files, shard):
    """This shard's files, or all of them when there are fewer files than shards (the
    records are then split by `shard_records`)."""
    if len(files) >= shard.count:
        return files[shard.index::shard.count]
    return files


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
