"""Fuzzing with malformed input from a fixed seed: encoded images, TFRecords through the
input functions' bad-record guard, clips and REST bodies through run_request on briefly
trained exports, and a few bodies and files through bin/predict.

Every case must end, within its time bound, in a result (when the input was valid) or in
one of the clear error types with a one-line message: UserError, or TensorFlow's
InvalidArgumentError / DataLossError for the input functions. Anything else is a crash.
"""

import base64
import json
import time

import numpy as np
import tensorflow as tf

from conftest import run_cli
from estimator_models.errors import UserError
from estimator_models.serving import predicting
from input_fns import BAD_RECORDS_KEY, preprocess
from input_fns.sources import source, tfrecords
from test_hostile_input import CLAIMING, bmp_claiming, decode_in_graph, png

SEED = 0
CASE_SECONDS = 60  # wall-clock bound of one in-process case (the first builds its tf.data graphs)
LIMIT = preprocess.DEFAULT_MAX_IMAGE_PIXELS
CLEAR_ERRORS = (UserError, tf.errors.InvalidArgumentError, tf.errors.DataLossError)


class Verdicts:
    """The outcome of every case: how many, which broke a rule, and the slowest."""

    def __init__(self):
        self.count = 0
        self.broken = []
        self.slowest = 0.0

    def run(self, name, call, expect, inputs=1):
        """Runs `call()`, which feeds `inputs` generated inputs to the code under test;
        `expect` is 'error' (must fail clearly), 'either', or a callable that checks the
        result of a call that must succeed. Returns the result or the error."""
        self.count += inputs
        start = time.monotonic()
        try:
            result, error = call(), None
        except CLEAR_ERRORS as clear:
            result, error = None, clear
        except Exception as crash:  # pylint: disable=broad-except  (that is what is counted)
            result, error = None, crash
            self.broken.append(f'{name}: crashed with {type(crash).__name__}: {str(crash)[:200]}')
        elapsed = time.monotonic() - start
        self.slowest = max(self.slowest, elapsed)
        if elapsed > CASE_SECONDS:
            self.broken.append(f'{name}: took {elapsed:.1f} s')
        if error is None and expect == 'error':
            self.broken.append(f'{name}: accepted')
        if error is not None and expect not in ('error', 'either'):
            self.broken.append(f'{name}: refused ({_message(error)[:200]})')
        if error is not None and isinstance(error, CLEAR_ERRORS) and not _message(error).strip():
            self.broken.append(f'{name}: an error without a message')
        if error is None and callable(expect) and not expect(result):
            self.broken.append(f'{name}: wrong result')
        return error if error is not None else result

    def check(self, at_least):
        assert not self.broken, f'{len(self.broken)} of {self.count} cases broke a rule:\n' + '\n'.join(
            self.broken[:30])
        assert self.count >= at_least
        print(f'{self.count} cases, slowest {self.slowest:.2f} s')


def _message(error):
    return error.message if isinstance(error, tf.errors.OpError) else str(error)


# --- Encoded images through the shared decoder -----------------------------------------


def _noise_image(rng, height, width, channels):
    return rng.integers(0, 256, [height, width, channels], dtype=np.uint8)


def _bmp(pixels):
    """A valid 24-bit BMP of uint8 [h, w, 3] pixels, bottom-up rows padded to 4 bytes."""
    height, width, _ = pixels.shape
    row = np.zeros([height, (width * 3 + 3) // 4 * 4], np.uint8)
    row[:, :width * 3] = pixels[::-1, :, ::-1].reshape(height, -1)  # BGR, bottom row first
    header = bmp_claiming(width, height)
    return header + row.tobytes()


def image_cases(rng):
    """(name, encoded bytes, expectation) of malformed and odd encoded images."""
    cases = [('empty', b'', 'error')]
    for index in range(60):
        cases.append((f'random bytes {index}', rng.bytes(int(rng.integers(1, 400))), 'error'))
    for index in range(30):
        height, width = rng.integers(8, 64, 2)
        pixels = _noise_image(rng, height, width, 1)
        encoded = png(pixels) if index % 2 else tf.io.encode_jpeg(tf.constant(pixels)).numpy()
        cut = int(rng.integers(1, len(encoded) * 0.8))
        cases.append((f'truncated {"png" if index % 2 else "jpeg"} {index} at {cut}', encoded[:cut], 'error'))
    for image_format, claiming in sorted(CLAIMING.items()):
        for index in range(15):
            width = int(rng.integers(4097, 65535))
            height = int(rng.integers(LIMIT // width + 1, 65535))
            cases.append((f'{image_format} claiming {width}x{height}', claiming(width, height), 'huge'))
    for index in range(30):
        height, width = (int(side) for side in rng.integers(1, 300, 2))
        pixels = _noise_image(rng, height, width, 3)
        encoders = (lambda: png(pixels), lambda: tf.io.encode_jpeg(tf.constant(pixels)).numpy(),
                    lambda: _bmp(pixels))
        encoded = encoders[index % 3]()
        cases.append((f'valid {height}x{width} #{index}', encoded, (height, width)))
    for index in range(30):
        encoded = bytearray(png(_noise_image(rng, 16, 16, 1)) if index % 2 else
                            tf.io.encode_jpeg(tf.constant(_noise_image(rng, 16, 16, 1))).numpy())
        for position in rng.integers(0, len(encoded), 4):
            encoded[position] ^= 1 << int(rng.integers(0, 8))
        cases.append((f'bit-flipped {index}', bytes(encoded), 'either'))
    return cases


def _image_expectation(expected):
    if expected == 'huge':
        return 'error'
    if isinstance(expected, tuple):
        return lambda decoded: decoded.shape == expected + (3,)
    return expected


def test_fuzzed_images_decode_or_give_a_clear_error():
    rng = np.random.default_rng(SEED)
    verdicts = Verdicts()
    for name, encoded, expected in image_cases(rng):
        outcome = verdicts.run(name, lambda data=encoded: decode_in_graph(data, channels=3),
                               _image_expectation(expected))
        if expected == 'huge' and 'more than max_image_pixels' not in _message(outcome):
            verdicts.broken.append(f'{name}: not refused for its size ({_message(outcome)[:120]})')
    verdicts.check(at_least=200)


# --- TFRecords through the input functions ---------------------------------------------


def _example(features):
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _bytes(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(*values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def bad_image_records(rng, good_png):
    """(name, serialized record) of records the guard must drop: each fails to parse or decode."""
    huge = CLAIMING['png'](30000, 30000)
    makers = [
        ('garbage record', lambda: rng.bytes(int(rng.integers(1, 200)))),
        ('encoded is int64', lambda: _example({'image/encoded': _ints(1, 2), 'image/class/label': _ints(0)})),
        ('label is bytes', lambda: _example({'image/encoded': _bytes(good_png), 'image/class/label': _bytes(b'0')})),
        ('label missing', lambda: _example({'image/encoded': _bytes(good_png)})),
        ('encoded missing', lambda: _example({'image/class/label': _ints(1)})),
        ('encoded random', lambda: _example({'image/encoded': _bytes(rng.bytes(50)), 'image/class/label': _ints(1)})),
        ('encoded empty', lambda: _example({'image/encoded': _bytes(b''), 'image/class/label': _ints(1)})),
        ('encoded huge', lambda: _example({'image/encoded': _bytes(huge), 'image/class/label': _ints(0)})),
        ('two labels', lambda: _example({'image/encoded': _bytes(good_png), 'image/class/label': _ints(0, 1)})),
        ('label out of range', lambda: _example({'image/encoded': _bytes(good_png), 'image/class/label': _ints(9)})),
    ]
    return [(f'{name} {index}', make()) for index in range(10) for name, make in makers]


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _decoded(path, kind, skip_bad_records):
    source, _ = tfrecords.open_tfrecords(path, kind)
    return list(source.examples(1, 2, skip_bad_records=skip_bad_records).as_numpy_iterator())


def test_fuzzed_tfrecords_are_dropped_and_counted_or_named(tmp_path):
    rng = np.random.default_rng(SEED)
    verdicts = Verdicts()
    good_png = png(np.zeros([28, 28, 1]))
    good = _example({'image/encoded': _bytes(good_png), 'image/class/label': _ints(1)})
    bad = bad_image_records(rng, good_png)
    order = rng.permutation(len(bad) + 40)  # 40 good records among the bad ones
    records = [bad[position][1] if position < len(bad) else good for position in order]
    records.insert(0, good)  # the first record tells the source its kind and frame shape
    mixed = _write(tmp_path / 'mixed.tfrecord', records)
    verdicts.run('mixed file, bad records skipped', lambda: _decoded(mixed, 'image', True),
                 lambda rows: len(rows) == 41 and rows[-1][0][BAD_RECORDS_KEY] == len(bad), inputs=len(bad))
    # Alone after two good records, each kind of bad record is named by its index.
    for name, record in bad[:10]:
        path = _write(tmp_path / f'{name.replace(" ", "_")}.tfrecord', [good, good, record])
        error = verdicts.run(f'named: {name}', lambda path=path: _decoded(path, 'image', False), 'error')
        if not (source.bad_record_message(_message(error)) or '').startswith(f'bad record 2 of {path} '):
            verdicts.broken.append(f'{name}: not named ({_message(error)[:200]})')
    # Files cut short at random places: the reader's error, not a hang or a retry loop.
    # TensorFlow's reader takes a file cut inside a record's length field for a shorter
    # file, so a cut file may also give fewer examples.
    whole = open(mixed, 'rb').read()
    for cut in rng.integers(20, len(whole) - 20, 8):
        path = tmp_path / f'cut_{cut}.tfrecord'
        path.write_bytes(whole[:cut])
        rows = verdicts.run(f'file cut at {cut}', lambda path=str(path): _decoded(path, 'image', True), 'either')
        if isinstance(rows, list) and len(rows) >= 41:
            verdicts.broken.append(f'file cut at {cut}: read whole')
    verdicts.check(at_least=100)


def test_fuzzed_clip_records_are_dropped_and_counted(tmp_path):
    rng = np.random.default_rng(SEED)
    verdicts = Verdicts()
    frame = png(np.zeros([16, 16, 1]))

    def clip(frames, label=0):
        """A clip SequenceExample of any frame bytes (writing.clip_sequence_example checks them)."""
        return tf.train.SequenceExample(
            context=tf.train.Features(feature={'clip/label/index': _ints(label)}),
            feature_lists=tf.train.FeatureLists(feature_list={'image/encoded': tf.train.FeatureList(
                feature=[_bytes(encoded) for encoded in frames])})).SerializeToString()

    bad = [clip([frame, png(np.zeros([8, 8, 1]))]), clip([frame, b'']), clip([frame, rng.bytes(30)]),
           clip([frame, CLAIMING['gif'](60000, 60000)]), clip([]), clip([frame], label=5), rng.bytes(64)]
    path = _write(tmp_path / 'clips.tfrecord', [clip([frame] * 3)] + bad + [clip([frame] * 2, 1)])
    verdicts.run('clips, bad records skipped', lambda: _decoded(path, 'clip', True),
                 lambda rows: len(rows) == 2 and rows[-1][0][BAD_RECORDS_KEY] == len(bad), inputs=len(bad))
    verdicts.run('clips, first bad record named', lambda: _decoded(path, 'clip', False), 'error')
    verdicts.check(at_least=2)


# --- REST bodies and clips through run_request on trained exports -----------------------


def _b64(data):
    return {'b64': base64.b64encode(data).decode('ascii')}


def _deeply_nested(depth):
    nested = 0.0
    for _ in range(depth):
        nested = [nested]
    return nested


def malformed_image_bodies(rng, image):
    """(name, signature, body) of requests an image model must refuse; `image` is one
    valid [H, W, C] list."""
    height, width, channels = np.array(image).shape
    bodies = [
        ('not a dict', 'serving_default', ['instances']),
        ('none', 'serving_default', None),
        ('no instances', 'serving_default', {}),
        ('instances a string', 'serving_default', {'instances': 'image'}),
        ('instances empty', 'serving_default', {'instances': []}),
        ('inputs empty', 'serving_default', {'inputs': {'image': []}}),
        ('bytes empty list', 'predict_bytes', {'inputs': {'image_bytes': []}}),
        ('unknown input', 'serving_default', {'inputs': {'pixels': [image]}}),
        ('unknown signature', 'serving_default', {'signature_name': 'nope', 'instances': [image]}),
        ('signature a list', 'serving_default', {'signature_name': ['x'], 'instances': [image]}),
        ('deep nesting', 'serving_default', {'instances': _deeply_nested(100000)}),
        ('huge list', 'serving_default', {'instances': [0.0] * 300000}),
        ('huge int', 'serving_default', {'instances': [[[[10 ** 400]] * width] * height]}),
        ('bytes leaf', 'serving_default', {'instances': [[[[b'x']] * width] * height]}),
        ('set leaf', 'serving_default', {'instances': [[[[{1}]] * width] * height]}),
        ('none leaf', 'serving_default', {'instances': [[[[None]] * width] * height]}),
        ('string leaf', 'serving_default', {'instances': [[[['abc']] * width] * height]}),
        ('nan pixel', 'serving_default', {'instances': [[[[float('nan')]] * width] * height]}),
        ('inf pixel', 'serving_default', {'instances': [[[[float('inf')]] * width] * height]}),
        ('ragged rows', 'serving_default', {'instances': [image[:-1] + [image[-1][:-1]]]}),
        ('bytes as floats', 'predict_bytes', {'instances': [[1.0, 2.0]]}),
        ('b64 not base64', 'predict_bytes', {'instances': [{'b64': '***not base64***'}]}),
        ('b64 a number', 'predict_bytes', {'instances': [{'b64': 12}]}),
        ('b64 of nothing', 'predict_bytes', {'instances': [{'b64': ''}]}),
        ('raw string not b64', 'predict_bytes', {'instances': ['iVBORw0KGgo']}),
        ('huge header', 'predict_bytes', {'instances': [_b64(CLAIMING['jpeg'](40000, 40000))]}),
        ('examples not a list', 'classification', {'examples': {'image/encoded': _b64(b'x')}}),
        ('example not a dict', 'classification', {'examples': [[1, 2]]}),
        ('example mixed values', 'classification', {'examples': [{'image/encoded': [1, _b64(b'x')]}]}),
        ('example int overflow', 'classification', {'examples': [{'image/class/label': 2 ** 70}]}),
        ('example without image', 'classification', {'examples': [{'label': 1}]}),
        ('example image as ints', 'classification', {'examples': [{'image/encoded': [1, 2]}]}),
        ('examples to predict', 'serving_default', {'examples': [{'image/encoded': _b64(b'x')}]}),
        ('mixed instance names', 'predict_bytes', {'instances': [{'image_bytes': _b64(b'x')}, {'other': 1}]}),
    ]
    for index in range(60):
        rank = int(rng.integers(1, 6))
        shape = [int(side) for side in rng.integers(1, int(100000 ** (1 / rank)), rank)]  # <= 1e5 values
        if shape[-3:] == [height, width, channels]:
            shape[-1] += 1
        bodies.append((f'wrong shape {shape}', 'serving_default', {'instances': np.zeros(shape).tolist()}))
    for index in range(40):
        garbage = rng.bytes(int(rng.integers(1, 300)))
        bodies.append((f'random bytes b64 {index}', 'predict_bytes', {'instances': [_b64(garbage)]}))
        bodies.append((f'random bytes example {index}', 'classification',
                       {'examples': [{'image/encoded': _b64(garbage)}]}))
    for index in range(20):
        text = ''.join(chr(int(code)) for code in rng.integers(33, 127, int(rng.integers(1, 40))))
        bodies.append((f'bad b64 {index}', 'predict_bytes', {'instances': [{'b64': text + '!'}]}))
    return bodies


def malformed_clip_bodies(rng, clip, frame_png):
    """(name, signature, body) of requests a clip model must refuse; `clip` is one valid
    [T, H, W, C] list, `frame_png` one valid encoded frame."""
    frame = clip[0]
    bodies = [
        ('too many frames', 'serving_default', {'instances': [[frame] * 513]}),
        ('too many encoded frames', 'predict_bytes', {'instances': [[_b64(frame_png)] * 513]}),
        ('no frames', 'serving_default', {'instances': [[]]}),
        ('no encoded frames', 'predict_bytes', {'instances': [[]]}),
        ('padding only', 'predict_bytes', {'instances': [[{'b64': ''}] * 3]}),
        ('lengths missing', 'predict_with_lengths', {'inputs': {'frames': [clip]}}),
        ('length zero', 'predict_with_lengths', {'inputs': {'frames': [clip], 'lengths': [0]}}),
        ('length negative', 'predict_with_lengths', {'inputs': {'frames': [clip], 'lengths': [-3]}}),
        ('length too long', 'predict_with_lengths', {'inputs': {'frames': [clip], 'lengths': [len(clip) + 1]}}),
        ('length overflow', 'predict_with_lengths', {'inputs': {'frames': [clip], 'lengths': [2 ** 40]}}),
        ('lengths a string', 'predict_with_lengths', {'inputs': {'frames': [clip], 'lengths': 'all'}}),
        ('too many lengths', 'predict_with_lengths', {'inputs': {'frames': [clip], 'lengths': [1, 1]}}),
        ('mixed frame sizes', 'serving_default', {'instances': [[frame, frame[:-1]]]}),
        ('mixed clip lengths', 'serving_default', {'instances': [clip, clip[:-1]]}),
        ('image not clip', 'serving_default', {'instances': [frame]}),
        ('encoded frame huge', 'predict_bytes', {'instances': [[_b64(frame_png), _b64(CLAIMING['bmp'](9000, 9000))]]}),
        ('encoded rows ragged', 'predict_bytes', {'instances': [[_b64(frame_png)], [_b64(frame_png)] * 2]}),
        ('example without frames', 'classification', {'examples': [{'label': 1}]}),
    ]
    for bad_value in (float('nan'), float('inf'), -float('inf')):
        poisoned = json.loads(json.dumps(clip))
        poisoned[int(rng.integers(0, len(clip)))][int(rng.integers(0, len(frame)))][0][0] = bad_value
        bodies.append((f'{bad_value} pixel', 'serving_default', {'instances': [poisoned]}))
        bodies.append((f'{bad_value} pixel with lengths', 'predict_with_lengths',
                       {'inputs': {'frames': [poisoned], 'lengths': [len(clip)]}}))
    for index in range(20):
        garbage = [_b64(frame_png)] * int(rng.integers(0, 3)) + [_b64(rng.bytes(int(rng.integers(1, 100))))]
        bodies.append((f'garbage frame {index}', 'predict_bytes', {'instances': [garbage]}))
        bodies.append((f'garbage example frame {index}', 'classification',
                       {'examples': [{'image/encoded': garbage}]}))
    return bodies


def _one_line_refusal(loaded, signature, body):
    def call():
        try:
            return predicting.run_request(loaded, signature, body)
        except UserError as error:
            assert '\n' not in str(error), f'a message of several lines: {error}'
            raise
    return call


def test_fuzzed_requests_get_one_line_errors(digits_export, clips_export):
    rng = np.random.default_rng(SEED)
    verdicts = Verdicts()
    _, image_path, digits = digits_export
    _, clip_path, clips = clips_export
    image = digits.inputs[0].astype(np.float32).tolist()
    clip = clips.inputs[0][:4].astype(np.float32).tolist()
    frame_png = png(clips.inputs[0][0])
    for path, bodies in ((image_path, malformed_image_bodies(rng, image)),
                         (clip_path, malformed_clip_bodies(rng, clip, frame_png))):
        loaded = predicting.load(path)
        for name, signature, body in bodies:
            error = verdicts.run(name, _one_line_refusal(loaded, signature, body), 'error')
            if not isinstance(error, UserError):
                verdicts.broken.append(f'{name}: not a UserError ({type(error).__name__})')
    verdicts.check(at_least=200)


# --- bin/predict, run in this process --------------------------------------------------


def _bin_predict_cases(tmp_path, rng, saved_model):
    """(name, bin/predict arguments) of runs that must end in exit code 2 and one error line."""
    def request(name, body):
        path = tmp_path / f'{name}.json'
        path.write_text(json.dumps(body))
        return [f'--request={path}']

    def file(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return [f'--input={path}', '--signature=predict_bytes']

    valid = tf.io.TFRecordWriter(str(tmp_path / 'whole.tfrecord'))
    valid.write(_example({'image/encoded': _bytes(png(np.zeros([28, 28, 1])))}))
    valid.close()
    whole = (tmp_path / 'whole.tfrecord').read_bytes()
    cases = [
        ('instances a string', request('string', {'instances': 'garbage'})),
        ('bad b64', request('b64', {'signature_name': 'predict_bytes', 'instances': [{'b64': '%%%'}]})),
        ('wrong shape', request('shape', {'instances': [[1.0, 2.0, 3.0]]})),
        ('nan pixels', request('nan', {'instances': [[[[float('nan')]] * 28] * 28]})),
        ('random bytes png', file('random.png', rng.bytes(300))),
        ('huge gif', file('huge.gif', CLAIMING['gif'](50000, 50000))),
        ('truncated tfrecord', file('cut.tfrecord', whole[:len(whole) // 2])),
    ]
    return [(name, [f'--saved_model={saved_model}'] + arguments) for name, arguments in cases]


def test_bin_predict_refuses_fuzzed_requests_and_files_in_one_line(digits_export, tmp_path):
    _, path, _ = digits_export
    cases = _bin_predict_cases(tmp_path, np.random.default_rng(SEED), path)
    broken = []
    for name, arguments in cases:
        start = time.monotonic()
        done = run_cli('predict', *arguments, check=False)
        seconds = time.monotonic() - start
        errors = [line for line in done.stderr.splitlines() if line.startswith('error: ')]
        if (done.returncode != 2 or len(errors) != 1 or done.stdout or 'Traceback' in done.stderr
                or seconds > CASE_SECONDS):
            broken.append(f'{name}: exit {done.returncode} in {seconds:.0f} s, stderr {done.stderr[-500:]!r}')
    assert not broken, '\n'.join(broken)
    assert len(cases) >= 5
