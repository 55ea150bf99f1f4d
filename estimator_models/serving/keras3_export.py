"""Keras 3 exports: a checkpoint as one `model.keras` file, for Keras 3 on any backend
(JAX, PyTorch, TensorFlow 2.16+), checked against the SavedModel of the same checkpoint.

EXPORT_BASE/<version>/ holds model.keras, verification.json (what was compared, the
builder's library versions) and checkpoint.json (exporting.write_checkpoint_record).
The model takes and gives the names of the SavedModel's raw-pixel signature
(verification.input_signature; outputs classes, probabilities, logits, and attention
with pooling=attention).

The file is built by keras3_model.py, run by path in the second Python environment
(keras3_environment), from two files this process writes:

  variables.npz     {checkpoint variable name: numpy array}: the model's variables, as
                    the serving graph restores them (no global_step, no optimizer slots)
  description.json  {format, model, kind, hparams, class_names}

and once built, loaded back from disk there and run on the verification inputs; a larger
probability difference than verification.TOLERANCE, or a different argmax, removes it.
"""

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import tensorflow as tf

from estimator_models import python_environments
from estimator_models.errors import UserError
from estimator_models.legacy import user_model_fn
from estimator_models.run_description import Run
from estimator_models.serving import exporting, keras3_environment, verification

KERAS3_DIR = 'keras3'
MODEL_FILE = 'model.keras'
VERIFICATION_FILE = verification.VERIFICATION_FILE
VARIABLES_FILE = 'variables.npz'
DESCRIPTION_FILE = 'description.json'
DESCRIPTION_FORMAT = 1
# Seconds for the builder to build, save, load and run the model once.
BUILD_TIMEOUT = 1800


def export_keras3(run: Run, checkpoint_path, export_base, keras3_python=None, eval_source=None):
    """Writes export_base/<version>/model.keras, verification.json and checkpoint.json;
    returns the file's path.

    `keras3_python` is the interpreter to build with (default: the cached environment,
    made on first use); verification inputs come from the Source `eval_source` when given.
    An export_base that holds a version of the checkpoint already answers with that
    version's file, writing nothing. A user's own model_fn, an environment that does not
    work or a file that does not answer like the SavedModel is a UserError and leaves
    nothing behind.
    """
    refuse_unconvertible(run)
    identity = exporting.checkpoint_identity(checkpoint_path)
    existing = exporting.exported_version(export_base, identity, exporting.CHECKPOINT_FILE)
    if existing is not None:
        return os.path.join(existing, MODEL_FILE)
    environment = keras3_environment.environment(keras3_python)
    scratch = tempfile.mkdtemp(prefix='keras3-export-')
    try:
        saved_model = exporting.export_saved_model(run, checkpoint_path, os.path.join(scratch, 'saved_model'))
        feeds, described = verification.verification_inputs(run, eval_source)
        expected = verification.saved_model_outputs(
            saved_model, verification.saved_model_signature(run.module.KIND), feeds)
        write_builder_inputs(run, saved_model, scratch)
        version, temporary_path = exporting.reserve_version(export_base)
        final_path = os.path.join(export_base, str(version))
        with exporting.renamed_when_complete(temporary_path, final_path):
            answered = build(environment, scratch, os.path.join(temporary_path, MODEL_FILE), feeds)
            report = verification.agreement(expected, answered, feeds, described, 'Keras 3 model')
            report.update(checkpoint=checkpoint_path, backend=environment.backend, versions=environment.versions)
            verification.write_records(temporary_path, report, checkpoint_path, identity)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return os.path.join(final_path, MODEL_FILE)


def refuse_unconvertible(run):
    """A UserError of one line for a run the builder has no Keras 3 form of: a user's own
    model_fn, whose layers only its TF1 graph describes."""
    if user_model_fn.is_user_model(run.model):
        raise UserError(f'a Keras 3 export needs one of the built-in models; {run.model_dir} runs your own '
                        f'model_fn {run.model}, which has no Keras 3 form (export it as saved_model or onnx)')


def write_builder_inputs(run, saved_model, folder):
    """Writes folder/variables.npz (model_variables of the SavedModel) and
    folder/description.json (description(run))."""
    np.savez(os.path.join(folder, VARIABLES_FILE), **model_variables(saved_model))
    with open(os.path.join(folder, DESCRIPTION_FILE), 'w') as stream:
        json.dump(description(run), stream, indent=2, sort_keys=True)


def model_variables(saved_model):
    """{checkpoint variable name: numpy array} of the variables a SavedModel restores: those
    of the serving graph, by the names they have in the training checkpoint, without the
    global step and the optimizer's slots and powers, which only training reads."""
    reader = tf.train.load_checkpoint(os.path.join(saved_model, tf.saved_model.VARIABLES_DIRECTORY,
                                                   tf.saved_model.VARIABLES_FILENAME))
    return {name: reader.get_tensor(name) for name in sorted(reader.get_variable_to_shape_map())}


def description(run):
    """What the builder needs besides the variables: the model, its kind, every hparam, the
    class names."""
    return {'format': DESCRIPTION_FORMAT, 'model': run.model, 'kind': run.module.KIND,
            'hparams': run.hparams, 'class_names': list(run.class_names)}


def build(environment, folder, model_path, feeds):
    """Runs the builder in `environment` on folder's variables.npz and description.json:
    it writes model_path, loads it back and runs it on `feeds` ({input name: numpy array}).
    Returns its outputs {name: numpy array}; a UserError with its last error line when it
    fails."""
    inputs, outputs = os.path.join(folder, 'verify_inputs.npz'), os.path.join(folder, 'verify_outputs.npz')
    np.savez(inputs, **feeds)
    command = [environment.python, keras3_environment.BUILDER, 'build', os.path.join(folder, VARIABLES_FILE),
               os.path.join(folder, DESCRIPTION_FILE), model_path,
               '--verify_inputs', inputs, '--verify_outputs', outputs]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                                env=environment.variables())
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UserError(f'the Keras 3 builder did not finish: {error}') from None
    if result.returncode != 0:
        raise UserError(f'the Keras 3 builder failed: '
                        f'{python_environments.last_line(result.stderr, result.returncode)}')
    with np.load(outputs) as answered:
        return {name: answered[name] for name in answered.files}
