"""The check every converted export (ONNX, Keras 3) passes before it is kept: the same
inputs run through it and through the SavedModel of the same checkpoint, and their
probabilities must agree.

The inputs carry the names of the SavedModel's raw-pixel signature (input_signature):

  images  image float32 [N, H, W, C], pixels 0..255
          (cnn_lstm regions=boxes also: boxes float32 [N, R, 4], num_boxes int32 [N])
  clips   frames float32 [N, T, H, W, C], lengths int32 [N]

They are VERIFY_EXAMPLES eval examples when eval data is given, else seeded random
pixels (and clip lengths 1..T in turn, boxes 0..3 per image).
"""

import json
import os

import numpy as np
import tensorflow as tf

from estimator_models.errors import UserError
from estimator_models.serving import exporting, receivers
from input_fns import BOXES_KEY, CLIP, FRAMES_KEY, IMAGE_KEY, LENGTH_KEY, NUM_BOXES_KEY

# Beside each converted file: what agreement() compared and found.
VERIFICATION_FILE = 'verification.json'
VERIFY_EXAMPLES = 64
TOLERANCE = 1e-4
# Random clips for verification, when no eval data is given, are this many frames long at most.
RANDOM_CLIP_FRAMES = 8
# The model_fn's feature key for each input name that differs from it.
FEATURE_KEYS = {receivers.LENGTHS_KEY: LENGTH_KEY}


def input_signature(kind, hparams):
    """{input name: (dtype, shape)} of the raw-pixel inputs of a run's kind and hparams."""
    pixels = [hparams['height'], hparams['width'], hparams['channels']]
    if kind == CLIP:
        return {FRAMES_KEY: (tf.float32, [None, None] + pixels), receivers.LENGTHS_KEY: (tf.int32, [None])}
    signature = {IMAGE_KEY: (tf.float32, [None] + pixels)}
    if receivers.reads_boxes(hparams):
        signature.update({BOXES_KEY: (tf.float32, [None, None, 4]), NUM_BOXES_KEY: (tf.int32, [None])})
    return signature


def saved_model_signature(kind):
    """The SavedModel signature that takes the inputs of input_signature."""
    return receivers.LENGTHS_SIGNATURE if kind == CLIP else 'serving_default'


def saved_model_outputs(saved_model, signature_key, feeds):
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


def agreement(expected, answered, feeds, described, what):
    """The figures of `answered` against `expected` ({output name: numpy value}, the
    SavedModel's) on `feeds`, described in words by `described`: {examples,
    largest_probability_difference, argmax_differences, tolerance, inputs}.

    Per-frame probabilities [N, T, K] are compared on each clip's true frames only
    (t < lengths). Raises UserError with the figures when the largest difference exceeds
    TOLERANCE or an argmax differs; `what` names the converted model in that line
    (e.g. 'ONNX model').
    """
    probabilities, reference = answered['probabilities'], expected['probabilities']
    if reference.ndim == 3 and receivers.LENGTHS_KEY in feeds:
        true_frames = np.arange(reference.shape[1])[None, :] < feeds[receivers.LENGTHS_KEY][:, None]
        probabilities, reference = probabilities[true_frames], reference[true_frames]      # [frames, K]
    difference = float(np.max(np.abs(probabilities - reference)))
    argmax_differences = int(np.sum(np.argmax(probabilities, -1) != np.argmax(reference, -1)))
    if difference > TOLERANCE or argmax_differences:
        raise UserError(f'the {what} disagrees with the SavedModel on {described}: largest '
                        f'probability difference {difference:.3g} (allowed {TOLERANCE:g}), '
                        f'{argmax_differences} different argmax; no {what.removesuffix(" model")} file written')
    return {'inputs': described, 'examples': int(len(next(iter(feeds.values())))),
            'largest_probability_difference': difference, 'argmax_differences': argmax_differences,
            'tolerance': TOLERANCE}


def write_records(folder, report, checkpoint_path, identity):
    """Writes `report` (agreement's figures and more) to folder/verification.json and the
    checkpoint's record (exporting.write_checkpoint_record) to folder/checkpoint.json."""
    with open(os.path.join(folder, VERIFICATION_FILE), 'w') as stream:
        json.dump(report, stream, indent=2, sort_keys=True)
    exporting.write_checkpoint_record(os.path.join(folder, exporting.CHECKPOINT_FILE), checkpoint_path, identity)


def verification_inputs(run, eval_source=None, count=VERIFY_EXAMPLES, seed=0):
    """({input name: numpy array} of `count` examples, what they are in words)."""
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
    """The first `count` examples of eval data, as raw-pixel inputs."""
    input_fn = run.input_fn(eval_source, tf.estimator.ModeKeys.PREDICT, num_examples=count)
    names = {FEATURE_KEYS.get(name, name): name for name in input_signature(run.module.KIND, run.hparams)}
    batches = []
    with tf.Graph().as_default():  # a graph of its own, as in saved_model_outputs
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
