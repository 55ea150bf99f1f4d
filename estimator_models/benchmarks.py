"""Latency of an exported SavedModel, loaded in-process, for each of its signatures."""

import time

import numpy as np
import tensorflow as tf

from estimator_models import exporting, predicting, serving
from input_fns import CLIP

BENCHMARK_FRAMES = 9  # a typical clip of the embedded data (6 to 12 frames)


def signature_inputs(loaded, batch_size, seed=0):
    """{signature key: {input name: tensor}} holding `batch_size` random images or clips."""
    kind, (height, width, channels) = predicting.signature_kind_and_shape(loaded)
    rng = np.random.default_rng(seed)
    frames = BENCHMARK_FRAMES if kind == CLIP else 1
    pixels = rng.integers(0, 256, (batch_size, frames, height, width, channels), dtype=np.uint8)
    encoded = [[tf.io.encode_png(frame).numpy() for frame in clip] for clip in pixels]
    examples = tf.constant([exporting.example_from_encoded(clip).SerializeToString() for clip in encoded])
    floats = tf.constant(pixels.astype(np.float32))
    if kind == CLIP:
        return {
            'serving_default': {'frames': floats},
            serving.LENGTHS_SIGNATURE: {'frames': floats,
                                        'lengths': tf.fill([batch_size], frames)},
            'predict_bytes': {serving.FRAMES_BYTES_KEY: tf.constant(encoded)},
            serving.CLASSIFY_SIGNATURE: {serving.EXAMPLES_KEY: examples},
        }
    return {
        'serving_default': {'image': floats[:, 0]},
        'predict_bytes': {serving.IMAGE_BYTES_KEY: tf.constant([clip[0] for clip in encoded])},
        serving.CLASSIFY_SIGNATURE: {serving.EXAMPLES_KEY: examples},
    }


def serving_latency(saved_model, batch_sizes=(1, 32), calls=200, warmup_calls=10):
    """Rows of {signature, batch_size, p50_ms, p99_ms, mean_ms, calls}."""
    loaded = predicting.load(saved_model)
    rows = []
    for batch_size in batch_sizes:
        for key, inputs in signature_inputs(loaded, batch_size).items():
            function = loaded.signatures[key]
            for _ in range(warmup_calls):
                function(**inputs)
            seconds = []
            for _ in range(calls):
                start = time.perf_counter()
                outputs = function(**inputs)
                next(iter(outputs.values())).numpy()
                seconds.append(time.perf_counter() - start)
            milliseconds = np.array(seconds) * 1000
            rows.append({'signature': key, 'batch_size': batch_size, 'calls': calls,
                         'p50_ms': float(np.percentile(milliseconds, 50)),
                         'p99_ms': float(np.percentile(milliseconds, 99)),
                         'mean_ms': float(milliseconds.mean())})
    return rows


def markdown_table(rows):
    lines = ['| signature | batch | p50 ms | p99 ms | mean ms | calls |', '|---|---|---|---|---|---|']
    lines += [f'| {row["signature"]} | {row["batch_size"]} | {row["p50_ms"]:.2f} | {row["p99_ms"]:.2f} '
              f'| {row["mean_ms"]:.2f} | {row["calls"]} |' for row in rows]
    return '\n'.join(lines)
