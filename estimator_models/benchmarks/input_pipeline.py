"""bin/benchmark --input_only: the rate of the training input pipeline alone; and
--write_noise_clips: data on which to measure what training from a large source costs in
memory (BENCHMARKS.md)."""

import resource
import time

import numpy as np
import tensorflow as tf

from input_fns import CLIP, writing


def input_throughput(run, data, batches, warmup_batches):
    """Examples per second the training input_fn of `run` delivers from `data`, alone.

    The pipeline runs as the Estimator runs it (a graph, a session, one `get_next` per
    step), after `warmup_batches` untimed batches that fill the shuffle buffer.
    Returns a JSON-ready dict.
    """
    batch_size = run.hparams['batch_size']
    with tf.Graph().as_default():
        next_batch = tf.compat.v1.data.make_one_shot_iterator(
            run.input_fn(data, tf.estimator.ModeKeys.TRAIN, seed=0)()).get_next()
        with tf.compat.v1.Session() as session:
            start = time.perf_counter()
            for _ in range(warmup_batches):
                session.run(next_batch)
            warm = time.perf_counter()
            for _ in range(batches):
                session.run(next_batch)
            seconds = time.perf_counter() - warm
    return {'data': data.info.spec, 'model': run.model, 'batch_size': batch_size,
            'batches': batches, 'examples_per_sec': round(batches * batch_size / seconds, 1),
            'warmup_secs': round(warm - start, 2),
            'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def write_noise_clips(prefix, gigabytes, frame_size=96, shards=16, seed=0):
    """Writes about `gigabytes` of TFRecord clips whose frames are PNGs of uniform noise
    (PNG cannot compress them, so the files are as large as the pixels), 6 to 12 frames
    of frame_size x frame_size x 3 each, 8 random labels: data for measuring what
    training from a large source costs in memory. Returns write_tfrecords' summary."""
    rng = np.random.default_rng(seed)
    frame_bytes = frame_size * frame_size * 3
    num_clips = int(gigabytes * 1e9 / (9 * frame_bytes))

    def clips():
        for _ in range(num_clips):
            length = int(rng.integers(6, 13))
            frames = rng.integers(0, 256, (length, frame_size, frame_size, 3), dtype=np.uint8)
            yield [writing.encode_pixels(frame) for frame in frames], int(rng.integers(0, 8))

    contents = writing.ShardContents(CLIP, [str(label) for label in range(8)], (frame_size, frame_size, 3))
    return writing.write_tfrecords(clips(), prefix, shards, contents, total=num_clips)
