"""bin/benchmark --serving: the latency of an exported SavedModel, loaded in-process, for
each of its signatures.

Two runtimes are timed, and a third when an ONNX file of the same model is given:
  session      a tf.compat.v1.Session feeding and fetching the SignatureDef's tensors by
               name: what TensorFlow Serving's SavedModelBundle does for every request.
  function     the signature functions of tf.saved_model.load, as bin/predict and Python
               callers use them.
  onnxruntime  an onnxruntime InferenceSession of the ONNX export (bin/export
               --format=onnx) on the CPU, fed the raw-pixel signature's inputs (clips
               with their lengths).
"""

import time

import numpy as np
import tensorflow as tf

from estimator_models.serving import exporting, onnx_serving, predicting, receivers
from input_fns import CLIP

BENCHMARK_FRAMES = 9  # a typical clip of the embedded data (6 to 12 frames)
RUNTIMES = ('session', 'function')


def signature_inputs(loaded, batch_size, seed=0):
    """{signature key: {input name: numpy array}} holding `batch_size` random images or clips."""
    kind, (height, width, channels) = predicting.signature_kind_and_shape(loaded)
    rng = np.random.default_rng(seed)
    frames = BENCHMARK_FRAMES if kind == CLIP else 1
    pixels = rng.integers(0, 256, (batch_size, frames, height, width, channels), dtype=np.uint8)
    encoded = [[tf.io.encode_png(frame).numpy() for frame in clip] for clip in pixels]
    examples = np.array([exporting.example_from_encoded(clip).SerializeToString() for clip in encoded],
                        dtype=object)
    floats = pixels.astype(np.float32)
    if kind == CLIP:
        return {
            'serving_default': {'frames': floats},
            receivers.LENGTHS_SIGNATURE: {'frames': floats,
                                        'lengths': np.full([batch_size], frames, np.int32)},
            'predict_bytes': {receivers.FRAMES_BYTES_KEY: np.array(encoded, dtype=object)},
            receivers.CLASSIFY_SIGNATURE: {receivers.EXAMPLES_KEY: examples},
        }
    return {
        'serving_default': {'image': floats[:, 0]},
        'predict_bytes': {receivers.IMAGE_BYTES_KEY: np.array([clip[0] for clip in encoded], dtype=object)},
        receivers.CLASSIFY_SIGNATURE: {receivers.EXAMPLES_KEY: examples},
    }


def session_callers(saved_model_dir):
    """{signature key: call(inputs)}: Session.run on the SignatureDef's tensor names."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(
            session, [tf.saved_model.SERVING], saved_model_dir)
    callers = {}
    for key, signature in meta_graph.signature_def.items():
        names = sorted(signature.inputs)
        run = session.make_callable([info.name for info in signature.outputs.values()],
                                    feed_list=[signature.inputs[name].name for name in names])
        callers[key] = lambda inputs, run=run, names=names: run(*[inputs[name] for name in names])
    return callers


def function_callers(loaded):
    """{signature key: call(inputs)}: the loaded signature functions, outputs as numpy."""
    def caller(function):
        def call(inputs):
            return [output.numpy() for output in function(**inputs).values()]
        return call
    return {key: caller(function) for key, function in loaded.signatures.items()}


def serving_latency(saved_model, batch_sizes=(1, 32), calls=200, onnx_file=None, warmup_calls=10):
    """Rows of {runtime, signature, batch_size, p50_ms, p99_ms, mean_ms, calls}."""
    saved_model_dir = predicting.resolve_version(saved_model)
    loaded = tf.saved_model.load(saved_model_dir)
    callers = {'session': session_callers(saved_model_dir), 'function': function_callers(loaded)}
    inputs_by_batch_size = {batch_size: signature_inputs(loaded, batch_size) for batch_size in batch_sizes}
    rows = []
    for runtime in RUNTIMES:
        for batch_size in batch_sizes:
            for key, inputs in inputs_by_batch_size[batch_size].items():
                if runtime == 'function':
                    inputs = {name: tf.constant(value) for name, value in inputs.items()}
                milliseconds = _time_calls(callers[runtime][key], inputs, calls, warmup_calls)
                rows.append(_row(runtime, key, batch_size, calls, milliseconds))
    if onnx_file:
        rows += _onnx_rows(onnx_file, inputs_by_batch_size, calls, warmup_calls)
    return rows


def _onnx_rows(onnx_file, inputs_by_batch_size, calls, warmup_calls):
    """onnxruntime's rows, on the inputs of the signature whose names the file takes."""
    inference_session = onnx_serving.session(onnx_file)
    key = receivers.LENGTHS_SIGNATURE if 'lengths' in {item.name for item in inference_session.get_inputs()} \
        else 'serving_default'
    rows = []
    for batch_size, inputs in inputs_by_batch_size.items():
        milliseconds = _time_calls(lambda feeds: onnx_serving.run_onnx(inference_session, feeds),
                                   inputs[key], calls, warmup_calls)
        rows.append(_row('onnxruntime', key, batch_size, calls, milliseconds))
    return rows


def _row(runtime, signature, batch_size, calls, milliseconds):
    return {'runtime': runtime, 'signature': signature, 'batch_size': batch_size, 'calls': calls,
            'p50_ms': float(np.percentile(milliseconds, 50)),
            'p99_ms': float(np.percentile(milliseconds, 99)),
            'mean_ms': float(milliseconds.mean())}


def _time_calls(call, inputs, calls, warmup_calls):
    for _ in range(warmup_calls):
        call(inputs)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call(inputs)
        seconds.append(time.perf_counter() - start)
    return np.array(seconds) * 1000


def markdown_table(rows):
    lines = ['| runtime | signature | batch | p50 ms | p99 ms | mean ms | calls |',
             '|---|---|---|---|---|---|---|']
    lines += [f'| {row["runtime"]} | {row["signature"]} | {row["batch_size"]} | {row["p50_ms"]:.2f} '
              f'| {row["p99_ms"]:.2f} | {row["mean_ms"]:.2f} | {row["calls"]} |' for row in rows]
    return '\n'.join(lines)
