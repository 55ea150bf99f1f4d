"""temporal_cnn_lstm: one CNN, shared by all frames, then the recurrent stack over the frames."""

import tensorflow as tf

from estimator_models.layers import backbones, head, recurrent, sequencing, summaries
from estimator_models.layers.hparam_declarations import NON_NEGATIVE, POSITIVE, HParam, choices_of
from input_fns import CLIP, FRAME_LABELS_KEY, FRAMES_KEY, LENGTH_KEY

KIND = CLIP
DEFAULT_DATA = 'moving_glyphs'
DEFAULT_TRAIN_STEPS = 1000
HPARAMS = (
    HParam('frame_features', 128, "size of each frame's vector, from its CNN feature map", bound=POSITIVE),
    HParam('max_frames', 0, 'read at most this many frames of each clip (0: all); 1 is the '
           'single-frame baseline, the same model blind to motion', bound=NON_NEGATIVE),
    HParam('frame_differences', True, "also give the CNN each frame's difference from the previous "
           'one as extra channels',
           details="""
               Motion then shows as a local pattern a convolution finds anywhere in the frame,
               instead of a change of position the recurrent stack must work out by itself. With a
               Keras application as the backbone (which takes 3-channel images) the differences are
               taken between the frames' feature vectors instead."""),
    *backbones.HPARAMS,
    HParam('head', 'clip', 'what is classified: the clip, or every frame from the frame labels of '
           'the data', choices=('clip', 'per_frame'),
           details="""
               `per_frame` reads `.npz` `frame_labels`, SequenceExample `clip/frame_labels` or the
               embedded clips' own; the loss and accuracy count each clip's true frames only,
               pooling does not apply, and exports answer `classes` [batch, T] and `probabilities`
               [batch, T, K] without a `classification` signature. TensorBoard's `accuracy` is
               then per frame, beside `num_frames`."""),
    HParam('num_frame_classes', 0, 'head=per_frame: classes of the frame labels (0: as many as the '
           'data shows)', bound=NON_NEGATIVE,
           details='Set it when the first records do not show the largest class.'),
)
DEFAULT_HPARAMS = {
    'batch_size': 32,
    # A clip is up to 12 frames: a tenth of the image models' buffer holds as many frames.
    'shuffle_buffer': 1000,
    'cnn_filters': [32, 64, 64],
}
HPARAM_CHOICES = choices_of(HPARAMS)


def model_fn(features, labels, mode, params):
    """Estimator model_fn; `params` is the run's hparams dict (estimator_models.running.hparams)."""
    frames = features[FRAMES_KEY] / 255.0                                   # [B, T, H, W, C]
    lengths = features[LENGTH_KEY]                                          # [B]
    if params['max_frames']:
        frames = frames[:, :params['max_frames']]                           # [B, T', H, W, C]
        lengths = tf.minimum(lengths, params['max_frames'])
    summaries.clip_frames(frames, mode, params)
    pixel_differences = params['frame_differences'] and params['backbone'] == 'small_cnn'
    if pixel_differences:
        frames = with_frame_differences(frames)                             # [B, T, H, W, 2C]
    images, positions = sequencing.true_frames_as_images(frames, lengths)   # [N, H, W, C], N true frames
    backbone = backbones.apply_backbone(images, params, mode)
    feature_map = tf.cast(backbone.feature_map, tf.float32)                 # [N, h, w, F]
    # Flattened rather than pooled: the motion is in where things are.
    per_frame = tf.keras.layers.Dense(
        params['frame_features'], activation='relu', name='frame_features')(
            tf.keras.layers.Flatten(name='flatten_frame')(feature_map))     # [N, D]
    sequence = sequencing.true_frames_as_sequences(per_frame, positions, frames)  # [B, T, D]
    if params['frame_differences'] and not pixel_differences:
        sequence = with_frame_differences(sequence)                         # [B, T, 2D]
    if params['head'] == 'per_frame':
        outputs = recurrent.recurrent_stack(sequence, params, mode, lengths,
                                            return_sequences=True)          # [B, T, U]
        logits = tf.keras.layers.Dense(params['num_frame_classes'], name='frame_logits')(outputs)  # [B, T, K]
        return head.per_frame_head(logits, features.get(FRAME_LABELS_KEY), lengths, mode, params, backbone)
    final, attention = recurrent.pooled_recurrent_stack(sequence, params, mode, lengths)  # [B, U], [B, T]
    logits = tf.keras.layers.Dense(params['num_classes'], name='logits')(final)  # [B, K]
    summaries.histograms(mode, params, frame_features=per_frame, final_state=final, logits=logits)
    return head.classification_head(logits, labels, mode, params, attention, backbone)


def with_frame_differences(frames):
    """[B, T, ..., C] -> [B, T, ..., 2C] (frames or per-frame features): each frame, then
    itself minus the frame before (zero for the first frame). Step t sees only frames
    t-1 and t, so padding after a clip's end still cannot reach its true steps."""
    previous = tf.concat([frames[:, :1], frames[:, :-1]], axis=1)
    return tf.concat([frames, frames - previous], axis=-1)
