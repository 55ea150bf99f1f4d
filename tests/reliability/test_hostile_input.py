"""Hostile input is refused with a clear one-line error, before it costs memory: encoded
images whose headers claim huge sizes (input functions, bin/predict, predict_bytes, with
peak memory measured in fresh processes), clips of too many or no frames, and NaN or
infinite pixels through the serving signatures."""

import base64
import functools
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from estimator_models.errors import UserError
from estimator_models.serving import predicting, receivers
from input_fns import CLIP, IMAGE, preprocess
from input_fns.sources import source

# Peak resident memory allowed to a process that refuses a 30000x30000 image header.
# TensorFlow alone takes ~400 MB here; decoding such a PNG would take 900 MB (gray) or more.
MEMORY_LIMIT_MB = 600
HUGE_SIDE = 30000
PROCESS_TIMEOUT_S = 120


def png_claiming(width, height):
    """A PNG of a few dozen bytes whose IHDR claims width x height 8-bit gray pixels:
    signature, IHDR (with its CRC), a tiny IDAT and IEND."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)  # depth 8, gray, no interlace
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
            + chunk(b'IEND', b''))


def jpeg_claiming(width, height):
    """A small valid JPEG with its frame header (SOF0) rewritten to claim width x height."""
    encoded = bytearray(tf.io.encode_jpeg(tf.zeros([8, 8, 1], tf.uint8)).numpy())
    frame = encoded.find(b'\xff\xc0')  # SOF0: marker, length (2), precision (1), height, width
    encoded[frame + 5:frame + 9] = struct.pack('>HH', height, width)
    return bytes(encoded)


def gif_claiming(width, height):
    """A GIF header whose logical screen claims width x height (16-bit little-endian each)."""
    return b'GIF89a' + struct.pack('<HHBBB', width, height, 0, 0, 0) + b'\x3b'


def bmp_claiming(width, height):
    """A BMP header (BITMAPINFOHEADER) claiming width x height; a negative height means
    rows stored top-down, and counts by its magnitude."""
    info = struct.pack('<IiiHHIIiiII', 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b'BM' + struct.pack('<IHHI', 14 + len(info), 0, 0, 14 + len(info)) + info


CLAIMING = {'png': png_claiming, 'jpeg': jpeg_claiming, 'gif': gif_claiming, 'bmp': bmp_claiming}


def png(pixels):
    return tf.io.encode_png(tf.constant(pixels, tf.uint8)).numpy()


def decode_in_graph(encoded, channels=1, max_pixels=preprocess.DEFAULT_MAX_IMAGE_PIXELS):
    """preprocess.checked_decode_image run as a graph, as the input functions and serving
    run it: uint8 [h, w, channels]."""
    return _graph_decoder(channels, max_pixels)(tf.constant(encoded)).numpy()


@functools.lru_cache(maxsize=None)
def _graph_decoder(channels, max_pixels):
    """One traced graph per limit, reused by every call (tracing takes ~0.1 s)."""
    return tf.function(lambda data: preprocess.checked_decode_image(data, channels, max_pixels),
                       input_signature=[tf.TensorSpec([], tf.string)])


# Linux keeps a process's peak memory (ru_maxrss) across exec, and a child forked from
# this pytest process (TensorFlow and models loaded) would start from its size. So a small
# launcher without TensorFlow forks the measured process and reports its children's peak.
LAUNCHER = '''
import resource, subprocess, sys
report, timeout, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
try:
    code = subprocess.run(command, timeout=timeout).returncode
except subprocess.TimeoutExpired:
    code = 'timeout'
with open(report, 'w') as stream:
    stream.write(f'{code} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}')
'''


def run_measured(args, timeout=PROCESS_TIMEOUT_S, cwd=None):
    """Runs a command in a fresh process; returns (exit code, stdout, stderr, its peak
    resident memory in MB)."""
    with tempfile.TemporaryDirectory() as folder:
        report = os.path.join(folder, 'report')
        done = subprocess.run([sys.executable, '-c', LAUNCHER, report, str(timeout), *args],
                              capture_output=True, text=True, cwd=cwd, timeout=timeout + 60)
        code, peak_kb = open(report).read().split()
    assert code != 'timeout', f'{args[:3]} took more than {timeout} s'
    return int(code), done.stdout, done.stderr, int(peak_kb) / 1024


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith('error:')]


# --- The shared decoder ----------------------------------------------------------------


@pytest.mark.parametrize('image_format', sorted(CLAIMING))
def test_every_format_claiming_too_many_pixels_is_refused_before_decoding(image_format):
    with pytest.raises(tf.errors.InvalidArgumentError, match=f'claims {HUGE_SIDE}x{HUGE_SIDE} pixels'):
        decode_in_graph(CLAIMING[image_format](HUGE_SIDE, HUGE_SIDE))


def test_the_limit_counts_width_times_height_and_comes_from_the_caller():
    wide = png(np.zeros([2, 50, 1]))  # 100 pixels
    assert decode_in_graph(wide, max_pixels=100).shape == (2, 50, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match='more than max_image_pixels=99'):
        decode_in_graph(wide, max_pixels=99)
    # Top-down BMP rows: the negative height counts by its magnitude.
    with pytest.raises(tf.errors.InvalidArgumentError, match='claims 5000x5000 pixels'):
        decode_in_graph(bmp_claiming(5000, -5000))


@pytest.mark.parametrize('data, message', [
    (b'', 'image is empty'),
    (b'\x00' * 40, 'none of the formats PNG, JPEG, GIF, BMP'),
    (b'<html>not an image</html>', 'none of the formats'),
    (png(np.zeros([3, 3, 1]))[:20], 'image header cut short: 20 bytes'),
    (b'BM' + b'\x00' * 10, 'image header cut short'),
])
def test_bytes_that_are_no_image_give_a_readable_error(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        decode_in_graph(data)


@pytest.mark.parametrize('height, width', [(1, 1), (1, 777), (613, 1), (37, 91)])
def test_valid_images_of_odd_sizes_still_decode(height, width):
    pixels = np.arange(height * width, dtype=np.uint8).reshape(height, width, 1)
    np.testing.assert_array_equal(decode_in_graph(png(pixels)), pixels)
    jpeg = tf.io.encode_jpeg(tf.constant(np.repeat(pixels, 3, axis=2))).numpy()
    assert decode_in_graph(jpeg, channels=3).shape == (height, width, 3)


# --- 30000x30000 PNG, peak memory measured in fresh processes ---------------------------

INPUT_FUNCTIONS_SNIPPET = '''
import json, resource, sys
import tensorflow as tf
from input_fns import dataset
from input_fns.sources import folders, tfrecords
hparams = dict(height=28, width=28, channels=1, num_classes=2, resize='resize', shuffle_buffer=8)
errors = {}
for name, data in (('tfrecords', tfrecords.open_tfrecords(sys.argv[1], 'image')[0]),
                   ('folders', folders.open_folder(sys.argv[2], 'image')[0])):
    batches = dataset.make_input_fn(data, tf.estimator.ModeKeys.EVAL, hparams, batch_size=2)()
    try:
        list(batches.as_numpy_iterator())
    except tf.errors.InvalidArgumentError as error:
        errors[name] = error.message
print(json.dumps({'errors': errors, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def test_a_30000_pixel_square_png_is_refused_by_the_input_functions_in_little_memory(tmp_path):
    from input_fns import writing  # pylint: disable=import-outside-toplevel
    good, huge = png(np.zeros([28, 28, 1])), png_claiming(HUGE_SIDE, HUGE_SIDE)
    records = tmp_path / 'huge.tfrecord'
    with tf.io.TFRecordWriter(str(records)) as writer:
        for encoded, label in ((good, 0), (huge, 1), (good, 1)):
            writer.write(writing.image_example(encoded, label).SerializeToString())
    for name, encoded in (('a', good), ('b', huge)):
        os.makedirs(tmp_path / 'folder' / name)
        (tmp_path / 'folder' / name / f'{name}.png').write_bytes(encoded)

    code, stdout, stderr, peak_mb = run_measured(
        [sys.executable, '-c', INPUT_FUNCTIONS_SNIPPET, str(records), str(tmp_path / 'folder')], cwd=REPO)
    assert code == 0, stderr[-2000:]
    report = json.loads(stdout.splitlines()[-1])
    named = {name: source.bad_record_message(message) for name, message in report['errors'].items()}
    assert named['tfrecords'].startswith(f'bad record 1 of {records} cannot be read')
    assert named['folders'].startswith(f'bad record 0 of {tmp_path / "folder" / "b" / "b.png"} cannot be read')
    print(f'input functions: peak {peak_mb:.0f} MB (own rusage {report["peak_mb"]:.0f} MB)')
    assert peak_mb < MEMORY_LIMIT_MB


def test_a_30000_pixel_square_png_is_refused_by_bin_predict_in_little_memory(digits_export, tmp_path):
    _, path, _ = digits_export
    huge = tmp_path / 'huge.png'
    huge.write_bytes(png_claiming(HUGE_SIDE, HUGE_SIDE))
    predict = [sys.executable, os.path.join(REPO, 'bin', 'predict'), f'--saved_model={path}', f'--input={huge}']
    for signature in ('predict_bytes', 'serving_default'):  # decoded in the graph; in bin/predict
        code, stdout, stderr, peak_mb = run_measured(predict + [f'--signature={signature}'])
        print(f'bin/predict --signature={signature}: peak {peak_mb:.0f} MB')
        assert code == 2 and stdout == ''
        assert len(error_lines(stderr)) == 1 and 'Traceback' not in stderr
        assert f'claims {HUGE_SIDE}x{HUGE_SIDE} pixels' in error_lines(stderr)[0]
        assert peak_mb < MEMORY_LIMIT_MB


PREDICT_BYTES_SNIPPET = '''
import json, resource, sys
import tensorflow as tf
signature = tf.saved_model.load(sys.argv[1]).signatures['predict_bytes']
try:
    signature(image_bytes=tf.constant([open(sys.argv[2], 'rb').read()]))
    message = None
except tf.errors.InvalidArgumentError as error:
    message = error.message
print(json.dumps({'error': message, 'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def test_a_30000_pixel_square_png_is_refused_by_the_predict_bytes_signature_in_little_memory(
        digits_export, tmp_path):
    _, path, _ = digits_export
    huge = tmp_path / 'huge.png'
    huge.write_bytes(png_claiming(HUGE_SIDE, HUGE_SIDE))
    code, stdout, stderr, peak_mb = run_measured([sys.executable, '-c', PREDICT_BYTES_SNIPPET, path, str(huge)])
    assert code == 0, stderr[-2000:]
    report = json.loads(stdout.splitlines()[-1])
    assert f'claims {HUGE_SIDE}x{HUGE_SIDE} pixels' in report['error']
    print(f'predict_bytes in-process: peak {report["peak_mb"]:.0f} MB (seen by its parent {peak_mb:.0f} MB)')
    assert report['peak_mb'] < MEMORY_LIMIT_MB and peak_mb < MEMORY_LIMIT_MB


# --- Clips and pixels through the serving signatures ------------------------------------


@pytest.fixture(scope='module')
def loaded_digits(digits_export):
    """The digits export as predicting.load gives it, loaded once for every request here."""
    return predicting.load(digits_export[1])


@pytest.fixture(scope='module')
def loaded_clips(clips_export):
    """The clips export as predicting.load gives it, loaded once for every request here."""
    return predicting.load(clips_export[1])


def _refused(loaded, body, message, signature='serving_default'):
    with pytest.raises(UserError, match=message) as raised:
        predicting.run_request(loaded, signature, body)
    assert '\n' not in str(raised.value)


def test_served_clips_over_max_frames_or_of_no_frames_are_refused(clips_export, loaded_clips):
    run, _, examples = clips_export
    frame = examples.inputs[0][:1].astype(np.float32).tolist()
    too_long = frame * (receivers.DEFAULT_MAX_FRAMES_SERVED + 1)
    _refused(loaded_clips, {'instances': [too_long]},
             'frames: clips of 513 frames, more than max_frames_served=512')
    # Real encoded frames: with '' (padding) the clip would also be empty, a second fault
    # whose check could fire first.
    png = base64.b64encode(tf.io.encode_png(examples.inputs[0][0].astype(np.uint8)).numpy()).decode()
    _refused(loaded_clips, {'instances': [{'frames_bytes': [{'b64': png}] * 513}]},
             'frames_bytes: clips of 513 frames, more than max_frames_served', 'predict_bytes')
    signatures = loaded_clips.signatures
    height, width, channels = (run.hparams[key] for key in ('height', 'width', 'channels'))
    with pytest.raises(tf.errors.InvalidArgumentError, match='frames: a clip of no frames'):
        signatures['serving_default'](frames=tf.zeros([1, 0, height, width, channels]))
    with pytest.raises(tf.errors.InvalidArgumentError, match='frames_bytes: a clip of no frames'):
        signatures['predict_bytes'](frames_bytes=tf.zeros([2, 0], tf.string))


def test_served_clips_with_empty_or_impossible_lengths_are_refused(clips_export, loaded_clips):
    _, _, examples = clips_export
    frames = examples.inputs[:2, :3].astype(np.float32).tolist()
    _refused(loaded_clips, {'inputs': {'frames': frames, 'lengths': [3, 0]}}, 'lengths: an empty clip',
             'predict_with_lengths')
    _refused(loaded_clips, {'inputs': {'frames': frames, 'lengths': [3, 4]}},
             'lengths: a length beyond the 3 frames', 'predict_with_lengths')
    _refused(loaded_clips, {'inputs': {'frames': frames, 'lengths': [3]}}, 'lengths: 1 lengths for 2 clips',
             'predict_with_lengths')
    # Encoded frames: a clip of padding only ('' every frame) is a clip of length 0.
    _refused(loaded_clips, {'instances': [[{'b64': ''}, {'b64': ''}]]}, r'lengths: an empty clip',
             'predict_bytes')


@pytest.mark.parametrize('bad_value', [float('nan'), float('inf'), -float('inf')])
def test_nan_and_infinite_pixels_are_refused_by_every_raw_pixel_signature(
        digits_export, clips_export, loaded_digits, loaded_clips, bad_value):
    _, _, digits = digits_export
    image = digits.inputs[0].astype(np.float32)
    image[3, 4] = bad_value
    _refused(loaded_digits, {'instances': [image.tolist()]}, 'image: NaN or infinite pixel values')
    _, _, clips = clips_export
    clip = clips.inputs[0][:4].astype(np.float32)
    clip[2, 5, 6] = bad_value
    _refused(loaded_clips, {'instances': [clip.tolist()]}, 'frames: NaN or infinite pixel values')
    _refused(loaded_clips, {'inputs': {'frames': [clip.tolist()], 'lengths': [4]}},
             'frames: NaN or infinite pixel values', 'predict_with_lengths')


def test_the_limits_come_from_the_hparams_and_default_for_old_runs():
    """The receivers of a run with small limits, and of one whose hparams predate them."""
    size = dict(height=8, width=8, channels=1, resize='resize')
    frame = png(np.zeros([8, 8, 1]))
    for hparams, max_frames in ((dict(size, max_frames_served=3, max_image_pixels=64), 3),
                                (size, receivers.DEFAULT_MAX_FRAMES_SERVED)):
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            features, inputs = receivers.receivers(CLIP, hparams)
            frames_bytes = inputs['predict_bytes']['frames_bytes']
            session.run(features, {frames_bytes: [[frame] * max_frames]})
            with pytest.raises(tf.errors.InvalidArgumentError, match=f'more than max_frames_served={max_frames}'):
                session.run(features, {frames_bytes: [[frame] * (max_frames + 1)]})
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            features, inputs = receivers.receivers(IMAGE, hparams)
            limit = hparams.get('max_image_pixels', preprocess.DEFAULT_MAX_IMAGE_PIXELS)
            with pytest.raises(tf.errors.InvalidArgumentError, match=f'more than max_image_pixels={limit}'):
                session.run(features, {inputs['predict_bytes']['image_bytes']: [png_claiming(9, limit // 9 + 1)]})


def test_exported_graphs_hold_plain_graph_ops_only(digits_export, clips_export):
    """TensorFlow Serving runs no Python: no py_func may hide in the checks."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
    for _, path, _ in (digits_export, clips_export):
        saved = saved_model_pb2.SavedModel.FromString(open(os.path.join(path, 'saved_model.pb'), 'rb').read())
        graph = saved.meta_graphs[0].graph_def
        ops = {node.op for node in graph.node} | {
            node.op for function in graph.library.function for node in function.node_def}
        assert 'Assert' in ops and not ops & {'PyFunc', 'EagerPyFunc', 'PyFuncStateless'}
