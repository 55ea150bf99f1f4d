"""bin/predict: a SavedModel's or an ONNX file's answer to files or to a TensorFlow Serving
REST request body, as that REST API answers."""

import json

from absl import flags

from estimator_models.errors import UserError
from estimator_models.running.cli.command import Command
from estimator_models.running.cli.flag_groups import SAVED_MODEL, FlagGroup, flag
from estimator_models.serving import onnx_export, onnx_serving, predicting

MODEL = FlagGroup('model', (
    SAVED_MODEL,
    flag(flags.DEFINE_string, 'onnx', None,
         'An ONNX file of bin/export --format=onnx, its version directory, or a base directory of '
         'versions (the highest is used), run by onnxruntime instead of --saved_model (signatures '
         'serving_default and, for clips, predict_with_lengths).'),
    flag(flags.DEFINE_string, 'signature', 'serving_default', 'Signature to run.'),
))
INPUT = FlagGroup('input', (
    flag(flags.DEFINE_multi_string, 'input', None,
         # absl adds '; repeat this option to specify a list of values'.
         'Input file: image, .npz, TFRecord (*.tfrecord*), or (clips) a directory of frames'),
    flag(flags.DEFINE_string, 'request', None,
         'A TensorFlow Serving REST request body (JSON file): {"instances": [...]}, {"inputs": ...} '
         'or {"examples": [...]}.'),
))


def run(options, argv):
    del argv
    if bool(options.saved_model) == bool(options.onnx):
        raise UserError('give either --saved_model or --onnx')
    if bool(options.input) == bool(options.request):
        raise UserError('give either --input files or a --request body')
    if options.onnx:
        onnx_export.check_available()
    loaded = onnx_serving.load(options.onnx) if options.onnx else predicting.load(options.saved_model)
    if options.request:
        body = _read_json(options.request)
    else:
        body = predicting.file_request(loaded, options.signature, options.input)
    print(json.dumps(predicting.run_request(loaded, options.signature, body)))


def _read_json(path):
    try:
        with open(path) as stream:
            return json.load(stream)
    except OSError as error:
        raise UserError(f'cannot read {path}: {error.strerror}') from None
    except ValueError as error:
        raise UserError(f'{path} is not valid JSON: {error}') from None
    except RecursionError:
        raise UserError(f'{path} nests its JSON too deeply') from None


COMMAND = Command(
    summary='classifies files, or answers a TensorFlow Serving REST request, with a SavedModel or an '
            'ONNX file.',
    examples=('--saved_model=runs/cnn_lstm/export/best --input=digit.png --input=more.npz',
              '--onnx=runs/cnn_lstm/export/manual/onnx --request=request.json'),
    flag_groups=(MODEL, INPUT),
    run=run)
