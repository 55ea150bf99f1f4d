"""bin/export: a SavedModel, an ONNX file or a Keras 3 file of a trained model_dir's latest
checkpoint, once: a checkpoint exported already answers with the path of its export."""

import os

from absl import flags

from estimator_models.running import experiment
from estimator_models.running.cli.command import Command, require
from estimator_models.running.cli.flag_groups import TRAINED_MODEL_DIR, FlagGroup, data_group, flag
from estimator_models.serving import keras3_environment, keras3_export, onnx_export, verification

# bin/export's own base directory: the trainer prunes best/ and latest/ to their newest versions.
MANUAL_EXPORTS = 'manual'

RUN = FlagGroup('run', (TRAINED_MODEL_DIR,))
EXPORT = FlagGroup('export', (
    flag(flags.DEFINE_enum, 'format', 'saved_model',
         'saved_model (for TensorFlow Serving): EXPORT_DIR/<version>; onnx: '
         'EXPORT_DIR/onnx/<version>/model.onnx; or keras3: EXPORT_DIR/keras3/<version>/model.keras, '
         'for Keras 3 on JAX, PyTorch or TensorFlow 2.16+. onnx and keras3 files are verified against '
         'the SavedModel of the same checkpoint.',
         enum_values=['saved_model', 'onnx', 'keras3']),
    flag(flags.DEFINE_string, 'export_dir', None,
         f'Where the versions go (see --format). Default: MODEL_DIR/export/{MANUAL_EXPORTS}, which the '
         'trainer leaves alone. A checkpoint that has a version there already is not exported again: '
         'that version is printed.'),
    flag(flags.DEFINE_bool, 'list_variables', False,
         'Print the variables of the latest checkpoint (name, shape, dtype) instead of exporting.'),
    flag(flags.DEFINE_string, 'keras3_python', None,
         'With --format=keras3: a Python interpreter that has Keras 3 to build the file with, on the '
         f'backend ${keras3_environment.BACKEND_VARIABLE} names (default {keras3_environment.DEFAULT_BACKEND}). '
         'Default: a venv of requirements-keras3.txt (JAX backend), made on first use in the cache folder '
         '(about 40 s, 700 MB).'),
))
DATA = data_group(f'With --format=onnx or keras3: the data whose first {verification.VERIFY_EXAMPLES} examples '
                  'verify the file; default: seeded random pixels (and clip lengths)')


def run(options, argv):
    del argv
    require(options, 'model_dir')
    if options.list_variables:
        _list_variables(options.model_dir)
        return
    trained = experiment.load_run(options.model_dir)
    if options.data_dir:
        trained.data_dir = options.data_dir
    export_dir = options.export_dir or os.path.join(options.model_dir, 'export', MANUAL_EXPORTS)
    if options.format == 'onnx':
        _export_onnx(trained, os.path.join(export_dir, onnx_export.ONNX_DIR), options.data)
        return
    if options.format == 'keras3':
        _export_keras3(trained, os.path.join(export_dir, keras3_export.KERAS3_DIR), options)
        return
    print(experiment.export(trained, export_dir))


def _list_variables(model_dir):
    checkpoint, variables = experiment.checkpoint_variables(model_dir)
    print(f'# {checkpoint}')
    for name, shape, dtype in variables:
        print(f'{name}\t{shape}\t{dtype}')


def _export_onnx(trained, onnx_base, data):
    onnx_export.check_available()
    eval_source = trained.evaluation_source(data) if data else None
    path = experiment.export_onnx(trained, onnx_base, eval_source)
    print(f'verified: {os.path.join(os.path.dirname(path), onnx_export.VERIFICATION_FILE)}')
    print(path)


def _export_keras3(trained, keras3_base, options):
    keras3_export.refuse_unconvertible(trained)
    eval_source = trained.evaluation_source(options.data) if options.data else None
    path = experiment.export_keras3(trained, keras3_base, options.keras3_python, eval_source)
    print(f'verified: {os.path.join(os.path.dirname(path), keras3_export.VERIFICATION_FILE)}')
    print(path)


COMMAND = Command(
    summary="exports a trained model_dir's latest checkpoint as a SavedModel, an ONNX file or a Keras 3 file.",
    examples=('--model_dir=runs/cnn_lstm', '--model_dir=runs/cnn_lstm --format=onnx'),
    flag_groups=(RUN, EXPORT, DATA),
    run=run)
