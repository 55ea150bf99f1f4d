"""ONNX exports beside the SavedModels, converted by tf2onnx and verified by onnxruntime.

EXPORT_DIR/onnx/<version>/model.onnx holds the serving graph of one checkpoint, with
the names of the SavedModel's raw-pixel signature:

  images  inputs  image float32 [N, H, W, C], pixels 0..255
                  (cnn_lstm regions=boxes also: boxes float32 [N, R, 4], num_boxes int32 [N])
  clips   inputs  frames float32 [N, T, H, W, C], lengths int32 [N]
  both    outputs classes int64, probabilities float32, logits (and attention with
                  pooling=attention), shaped as the SavedModel's

The graph is the PREDICT graph of the model_fn with the recurrent stack in its
`unmasked` form (estimator_models.layers.unmasked_recurrent), whose LSTM layers tf2onnx
maps to ONNX's LSTM op (GRU layers become a generic Loop). Before the file is kept, the
inputs of estimator_models.serving.verification run through it in onnxruntime and
through the SavedModel of the same checkpoint in TensorFlow; a larger probability
difference than its TOLERANCE or a different argmax removes it. verification.json beside
it records what was compared.
"""

import contextlib
import logging
import os
import shutil
import tempfile

import tensorflow as tf
from tensorflow.python.ops import control_flow_util_v2

from estimator_models.errors import UserError
from estimator_models.run_description import Run
from estimator_models.serving import exporting, onnx_serving, verification

ONNX_DIR = 'onnx'
VERIFICATION_FILE = verification.VERIFICATION_FILE
OPSET = 17
OUTPUT_KEYS = ('classes', 'probabilities', 'logits', 'attention')


def export_onnx(run: Run, checkpoint_path, export_base, saved_model=None, eval_source=None):
    """Writes export_base/<version>/model.onnx, verification.json and checkpoint.json (the
    checkpoint's record, exporting.write_checkpoint_record); returns the file's path.

    `saved_model` is the SavedModel of the same checkpoint to verify against (its version
    number is reused); without it, one is written to a temporary directory and removed,
    and an export_base that holds a version of the checkpoint already
    (exporting.exported_version) answers with that version's file, writing nothing.
    Verification inputs come from the Source `eval_source` when given. A graph that does
    not convert, or a file that does not answer like the SavedModel, is a UserError and
    leaves nothing behind.
    """
    identity = exporting.checkpoint_identity(checkpoint_path)
    if saved_model is None:
        existing = exporting.exported_version(export_base, identity, exporting.CHECKPOINT_FILE)
        if existing is not None:
            return os.path.join(existing, onnx_serving.MODEL_FILE)
    os.makedirs(export_base, exist_ok=True)
    kept_saved_model = saved_model
    scratch = tempfile.mkdtemp(prefix='onnx-export-')
    try:
        if saved_model is None:
            saved_model = exporting.export_saved_model(run, checkpoint_path, os.path.join(scratch, 'saved_model'))
            version, temporary_path = exporting.reserve_version(export_base)
            final_path = os.path.join(export_base, str(version))
        else:
            version = int(os.path.basename(os.path.normpath(saved_model)))
            final_path = os.path.join(export_base, str(version))
            if _verification(final_path).get('checkpoint') == checkpoint_path:  # best and latest exported it at once
                return os.path.join(final_path, onnx_serving.MODEL_FILE)
            temporary_path = os.path.join(export_base, f'temp-{version}')
            os.makedirs(temporary_path)
        with exporting.renamed_when_complete(temporary_path, final_path):
            model_path = os.path.join(temporary_path, onnx_serving.MODEL_FILE)
            graph_def, inputs, outputs = frozen_serving_graph(run, checkpoint_path)
            write_onnx(graph_def, inputs, outputs, model_path)
            report = verify(run, saved_model, model_path, eval_source)
            report.update(checkpoint=checkpoint_path, saved_model=kept_saved_model, opset=OPSET,
                          versions=library_versions())
            verification.write_records(temporary_path, report, checkpoint_path, identity)
            shutil.rmtree(final_path, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return os.path.join(final_path, onnx_serving.MODEL_FILE)


def check_available():
    """A UserError of one line when tf2onnx, onnx or onnxruntime cannot be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise UserError(f'ONNX export and serving need tf2onnx, onnx and onnxruntime '
                        f'(requirements.txt; Python 3.11): {error}') from None


def beside_saved_models(run, export_dir, eval_source=None):
    """The exporters' `after_export` of a training run: an ONNX file of each SavedModel
    exported to EXPORT_DIR/best or /latest, in EXPORT_DIR/onnx/<the same version>; a file
    goes once no SavedModel of its version is left."""
    onnx_base = os.path.join(export_dir, ONNX_DIR)

    def after_export(saved_model, checkpoint_path):
        path = export_onnx(run, checkpoint_path, onnx_base, saved_model, eval_source)
        print(f'ONNX export: {path}', flush=True)
        for version in exporting.versions(onnx_base):
            recorded = _verification(os.path.join(onnx_base, str(version))).get('saved_model')
            if recorded and not any(os.path.isdir(os.path.join(export_dir, name, str(version)))
                                    for name in os.listdir(export_dir) if name != ONNX_DIR):
                shutil.rmtree(os.path.join(onnx_base, str(version)), ignore_errors=True)

    return after_export


def _verification(version_path):
    """The verification.json of an ONNX version directory, or {} if there is none."""
    return exporting.read_json(os.path.join(version_path, VERIFICATION_FILE)) or {}


def frozen_serving_graph(run, checkpoint_path):
    """The PREDICT graph of `run` on the checkpoint, variables frozen into constants.

    Returns (GraphDef, {ONNX input name: tensor name}, {ONNX output name: tensor name}).
    """
    with tf.Graph().as_default() as graph, _loops_without_intermediates():
        placeholders = {name: tf.compat.v1.placeholder(dtype, shape, name=name)
                        for name, (dtype, shape) in verification.input_signature(run.module.KIND, run.hparams).items()}
        features = {verification.FEATURE_KEYS.get(name, name): tensor for name, tensor in placeholders.items()}
        spec = run.module.model_fn(features, None, tf.estimator.ModeKeys.PREDICT, conversion_hparams(run.hparams))
        outputs = {key: tf.identity(spec.predictions[key], name=key)
                   for key in OUTPUT_KEYS if key in spec.predictions}
        with tf.compat.v1.Session() as session:
            tf.compat.v1.train.Saver().restore(session, checkpoint_path)
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), [tensor.op.name for tensor in outputs.values()])
    _keep_loops_functional(frozen)
    return (frozen, {name: tensor.name for name, tensor in placeholders.items()},
            {name: tensor.name for name, tensor in outputs.items()})


@contextlib.contextmanager
def _loops_without_intermediates():
    """Builds while loops (Keras' recurrent layers) without the accumulators of every
    intermediate that a TF1 graph keeps for gradients: tf2onnx cannot map those
    (TensorListPushBack), and a serving graph never takes a gradient."""
    tf.compat.v1.experimental.output_all_intermediates(False)
    try:
        yield
    finally:
        control_flow_util_v2._EXPERIMENTAL_OUTPUT_ALL_INTERMEDIATES_OVERRIDE = None  # the default again


def _keep_loops_functional(graph_def):
    """Marks the graph's While and If ops not to be lowered to Switch/Merge control flow
    (Grappler lowers those built in a TF1 graph): tf2onnx recognises Keras' recurrent
    loops in their functional form only."""
    nodes = list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]
    for node in nodes:
        if node.op in ('While', 'StatelessWhile', 'If', 'StatelessIf'):
            node.attr['_lower_using_switch_merge'].b = False


def conversion_hparams(hparams):
    """The hparams with the recurrent stack in its convertible form (a user's model_fn,
    which has no such hparam, is converted as it is)."""
    if 'rnn_implementation' not in hparams:
        return hparams
    return dict(hparams, rnn_implementation='unmasked')


def write_onnx(graph_def, inputs, outputs, path):
    """Converts a frozen graph to ONNX at `path`, inputs and outputs renamed to the keys of
    `inputs` and `outputs` ({name: tensor name}); refuses ops ONNX cannot express."""
    from tf2onnx import optimizer, tf_loader, tfonnx  # imported here: it takes seconds to load
    import onnx
    logging.getLogger('tf2onnx').setLevel(logging.CRITICAL)
    input_names, output_names = list(inputs.values()), list(outputs.values())
    renames = {tensor: name for name, tensor in {**inputs, **outputs}.items()}
    with tf.Graph().as_default():
        optimized = tf_loader.tf_optimize(input_names, output_names, graph_def)
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(optimized, name='')
        try:
            onnx_graph = tfonnx.process_tf_graph(graph, opset=OPSET, input_names=input_names,
                                                 output_names=output_names, tensors_to_rename=renames)
        except Exception as error:  # tf2onnx raises whatever its op handlers raise
            raise UserError(f'cannot convert the serving graph to ONNX: {onnx_serving.first_line(error)}') from None
    model = optimizer.optimize_graph(onnx_graph).make_model('estimator_lstm_pipeline serving graph')
    unconverted = sorted({node.op_type for node in _all_nodes(model.graph)
                          if not onnx.defs.has(node.op_type, node.domain)})
    if unconverted:
        raise UserError(f'the serving graph holds ops with no ONNX mapping: {", ".join(unconverted)}')
    onnx.save(model, path)


def _all_nodes(graph):
    """Every node of an ONNX graph, those inside loop and branch bodies included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in [attribute.g] + list(attribute.graphs):
                yield from _all_nodes(subgraph)


def verify(run, saved_model, model_path, eval_source=None):
    """Runs the same inputs through the SavedModel and the ONNX file; returns the figures,
    or raises UserError with them when the two disagree (verification.agreement)."""
    feeds, described = verification.verification_inputs(run, eval_source)
    expected = verification.saved_model_outputs(
        saved_model, verification.saved_model_signature(run.module.KIND), feeds)
    answered = onnx_serving.run_onnx(onnx_serving.session(model_path), feeds)
    return verification.agreement(expected, answered, feeds, described, 'ONNX model')


def library_versions():
    import onnx
    import onnxruntime
    import tf2onnx
    return {'tensorflow': tf.__version__, 'tf2onnx': tf2onnx.__version__, 'onnx': onnx.__version__,
            'onnxruntime': onnxruntime.__version__}
