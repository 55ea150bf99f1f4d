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
maps to ONNX's LSTM op (GRU layers become a generic Loop). Before the file is kept, VERIFY_EXAMPLES inputs (from eval data
when given, else seeded random pixels and clip lengths) run through it in onnxruntime and
through the SavedModel of the same checkpoint in TensorFlow; a larger probability
difference than TOLERANCE or a different argmax removes it. verification.json beside it
records what was compared.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import control_flow_util_v2

from estimator_models.errors import UserError
from estimator_models.run_description import Run
from estimator_models.serving import exporting, onnx_serving, receivers
from input_fns import BOXES_KEY, CLIP, FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, NUM_BOXES_KEY

ONNX_DIR = 'onnx'
VERIFICATION_FILE = 'verification.json'
OPSET = 17
VERIFY_EXAMPLES = 64
TOLERANCE = 1e-4
OUTPUT_KEYS = ('classes', 'probabilities', 'logits', 'attention')
# Random clips for verification, when no eval data is given, are this many frames long at most.
RANDOM_CLIP_FRAMES = 8
# The model_fn's feature key for each ONNX input name that differs from it.
_FEATURE_KEYS = {receivers.LENGTHS_KEY: LENGTH_KEY}


def input_signature(kind, hparams):
    """{input name: (dtype, shape)} of the ONNX model of a run's kind and hparams."""
    pixels = [hparams['height'], hparams['width'], hparams['channels']]
    if kind == CLIP:
        return {FRAMES_KEY: (tf.float32, [None, None] + pixels), receivers.LENGTHS_KEY: (tf.int32, [None])}
    signature = {IMAGE_KEY: (tf.float32, [None] + pixels)}
    if receivers.reads_boxes(hparams):
        signature.update({BOXES_KEY: (tf.float32, [None, None, 4]), NUM_BOXES_KEY: (tf.int32, [None])})
    return signature


def saved_model_signature(kind):
    """The SavedModel signature that takes the same inputs as the ONNX model."""
    return receivers.LENGTHS_SIGNATURE if kind == CLIP else 'serving_default'


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
        try:
            model_path = os.path.join(temporary_path, onnx_serving.MODEL_FILE)
            graph_def, inputs, outputs = frozen_serving_graph(run, checkpoint_path)
            write_onnx(graph_def, inputs, outputs, model_path)
            report = verify(run, saved_model, model_path, eval_source)
            report.update(checkpoint=checkpoint_path, saved_model=kept_saved_model, opset=OPSET,
                          versions=library_versions())
            with open(os.path.join(temporary_path, VERIFICATION_FILE), 'w') as stream:
                json.dump(report, stream, indent=2, sort_keys=True)
            exporting.write_checkpoint_record(os.path.join(temporary_path, exporting.CHECKPOINT_FILE), checkpoint_path,
                                              identity)
            shutil.rmtree(final_path, ignore_errors=True)
            os.rename(temporary_path, final_path)
        except BaseException:
            shutil.rmtree(temporary_path, ignore_errors=True)
            raise
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
                        for name, (dtype, shape) in input_signature(run.module.KIND, run.hparams).items()}
        features = {_FEATURE_KEYS.get(name, name): tensor for name, tensor in placeholders.items()}
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
    or raises UserError with them when the two disagree."""
    feeds, described = verification_inputs(run, eval_source)
    expected = _saved_model_outputs(saved_model, saved_model_signature(run.module.KIND), feeds)
    onnx_outputs = onnx_serving.run_onnx(onnx_serving.session(model_path), feeds)
    difference = float(np.max(np.abs(onnx_outputs['probabilities'] - expected['probabilities'])))
    argmax_differences = int(np.sum(np.argmax(onnx_outputs['probabilities'], -1)
                                    != np.argmax(expected['probabilities'], -1)))
    if difference > TOLERANCE or argmax_differences:
        raise UserError(f'the ONNX model disagrees with the SavedModel on {described}: largest '
                        f'probability difference {difference:.3g} (allowed {TOLERANCE:g}), '
                        f'{argmax_differences} different argmax; no ONNX file written')
    return {'inputs': described, 'examples': int(len(next(iter(feeds.values())))),
            'largest_probability_difference': difference, 'argmax_differences': argmax_differences,
            'tolerance': TOLERANCE}


def _saved_model_outputs(saved_model, signature_key, feeds):
    """{output name: numpy value} of one signature of the SavedModel, run in a graph and
    session of its own (TensorFlow Serving's way): exporters run inside a training
    session's hook, where eager execution would land in the finalized training graph."""
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], saved_model)
        signature = meta_graph.signature_def[signature_key]
        names = sorted(signature.outputs)
        values = session.run([signature.outputs[name].name for name in names],
                             {signature.inputs[name].name: value for name, value in feeds.items()})
    return dict(zip(names, values))


def verification_inputs(run, eval_source=None, count=VERIFY_EXAMPLES, seed=0):
    """({ONNX input name: numpy array} of `count` examples, what they are in words)."""
    if eval_source is not None:
        return _eval_inputs(run, eval_source, count), f'{count} examples of {eval_source.info.spec}'
    rng = np.random.default_rng(seed)
    signature = input_signature(run.module.KIND, run.hparams)
    pixels = signature[FRAMES_KEY if run.module.KIND == CLIP else IMAGE_KEY][1][-3:]
    if run.module.KIND == CLIP:
        frames = RANDOM_CLIP_FRAMES if not run.hparams.get('max_frames') else run.hparams['max_frames']
        lengths = (np.arange(count) % frames + 1).astype(np.int32)                       # 1..T, in turn
        clips = rng.uniform(0, 255, size=[count, frames] + pixels).astype(np.float32)
        clips[np.arange(frames)[None, :] >= lengths[:, None]] = 0
        return ({FRAMES_KEY: clips, receivers.LENGTHS_KEY: lengths},
                f'{count} clips of seeded random pixels (seed {seed}), lengths 1..{frames}')
    feeds = {IMAGE_KEY: rng.uniform(0, 255, size=[count] + pixels).astype(np.float32)}
    described = f'{count} images of seeded random pixels (seed {seed})'
    if BOXES_KEY in signature:
        rows, columns = (np.sort(rng.uniform(0, 1, size=[count, 3, 2]), axis=-1) for _ in range(2))
        feeds[BOXES_KEY] = np.stack([rows[..., 0], columns[..., 0], rows[..., 1], columns[..., 1]],
                                    axis=-1).astype(np.float32)                         # [N, 3, 4]
        feeds[NUM_BOXES_KEY] = (np.arange(count) % 4).astype(np.int32)                     # 0..3 boxes
        described += ', 0 to 3 random boxes each'
    return feeds, described


def _eval_inputs(run, eval_source, count):
    """The first `count` examples of eval data, as ONNX inputs."""
    input_fn = run.input_fn(eval_source, tf.estimator.ModeKeys.PREDICT, num_examples=count)
    names = {_FEATURE_KEYS.get(name, name): name for name in input_signature(run.module.KIND, run.hparams)}
    batches = []
    with tf.Graph().as_default():  # a graph of its own, as in _saved_model_outputs
        next_batch = tf.compat.v1.data.make_one_shot_iterator(input_fn()).get_next()
        with tf.compat.v1.Session() as session:
            while True:
                try:
                    features, _ = session.run(next_batch)
                except tf.errors.OutOfRangeError:
                    break
                batches.append({names[key]: value for key, value in features.items() if key in names})
    return {name: _concatenated([batch[name] for batch in batches]) for name in batches[0]}


def _concatenated(arrays):
    """Batches of one input joined; clips or boxes padded with zeros to the longest."""
    if arrays[0].ndim < 2:
        return np.concatenate(arrays)
    longest = max(array.shape[1] for array in arrays)
    return np.concatenate([np.pad(array, [(0, 0), (0, longest - array.shape[1])] + [(0, 0)] * (array.ndim - 2))
                           for array in arrays])


def library_versions():
    import onnx
    import onnxruntime
    import tf2onnx
    return {'tensorflow': tf.__version__, 'tf2onnx': tf2onnx.__version__, 'onnx': onnx.__version__,
            'onnxruntime': onnxruntime.__version__}
