"""cnn_lstm: a CNN's last feature map, read as a sequence by the recurrent stack."""

import tensorflow as tf

from estimator_models.layers import backbones, head, recurrent, regions, sequencing, summaries
from estimator_models.layers.hparam_declarations import POSITIVE, HParam, choices_of
from input_fns import BOXES_KEY, IMAGE, IMAGE_KEY, NUM_BOXES_KEY

KIND = IMAGE
DEFAULT_DATA = 'glyph_digits'
DEFAULT_TRAIN_STEPS = 3000
HPARAMS = (
    HParam('sequence', 'rows', 'how the feature map becomes the steps: its rows, columns, every '
           'position (flatten), its average once per row (pooled), or regions',
           choices=tuple(sequencing.SEQUENCERS) + ('regions',),
           details='`regions` takes one step per region: the feature map under it, sampled at the '
                   'centres of its 2x2 equal parts.'),
    HParam('regions', 'grid', 'sequence=regions: the cells of grid, the same for every image, or each '
           "image's own boxes from the data", choices=regions.SOURCES,
           details="""
               `boxes` reads TFRecord Examples with `image/object/bbox/{ymin,xmin,ymax,xmax}` (the TF
               Object Detection API's keys, fractions of the image): a variable number per image,
               masked like the frames of a clip; an image without boxes is one box, the whole image.
               Boxes need resize=resize and augment=none, since anything else would move the image
               under its boxes, and exports then take `boxes` and `num_boxes`
               ([serving.md](serving.md#signatures)).
               E.g. `--data='boxes.tfrecord*' --hparams=sequence=regions,regions=boxes`."""),
    HParam('grid', '3x3', 'regions=grid: RxC equal cells, read in raster order'),
    HParam('step', 1, 'read every step-th row, column or position of the feature map, from the first',
           bound=POSITIVE),
    *backbones.HPARAMS,
)
DEFAULT_HPARAMS = {
    # Measured on 8,000 handwriting-like digits (docs/models.md, Defaults, measured):
    # BatchNorm in the CNN with light warps gains 0.2 points over light warps alone and
    # 0.25 over neither; strong warps with BatchNorm score the same and cost 15% more
    # time. regions=boxes turns the warps off (they would move the image under its boxes).
    'cnn_batch_norm': True,
    'augment': 'light',
}
HPARAM_CHOICES = choices_of(HPARAMS)


def model_fn(features, labels, mode, params):
    """Estimator model_fn; `params` is the run's hparams dict (estimator_models.running.hparams)."""
    images = features[IMAGE_KEY] / 255.0                                    # [B, H, W, C]
    summaries.input_images(images, mode, params)
    backbone = backbones.apply_backbone(images, params, mode)
    feature_map = backbone.feature_map                                      # [B, h, w, F], maybe bfloat16
    sequence, lengths = read_as_sequence(feature_map, features, params)    # [B, h, w*F] (rows), [B]
    if params['step'] > 1:  # a slice of every step would still copy its gradient
        sequence = sequence[:, ::params['step']]                            # [B, ceil(h/step), w*F]
        if lengths is not None:
            lengths = (lengths - 1) // params['step'] + 1                   # of boxes 0, step, 2*step...
    final, attention = recurrent.pooled_recurrent_stack(sequence, params, mode, lengths)  # [B, U], [B, T]
    logits = tf.keras.layers.Dense(params['num_classes'], name='logits')(final)  # [B, K]
    summaries.histograms(mode, params, feature_map=feature_map, final_state=final, logits=logits)
    return head.classification_head(logits, labels, mode, params, attention, backbone)


def read_as_sequence(feature_map, features, params):
    """[B, h, w, F] -> ([B, T, D] as `sequence` says, int32 [B] true lengths or None):
    rows [B, h, w*F], columns [B, w, h*F], flatten [B, h*w, F] (in the feature map's
    dtype: the recurrent stack reads a bfloat16 one as it is), pooled [B, h, F], or
    regions: [B, R*C, 4F] (grid=RxC), or [B, R, 4F] with each image's box count (boxes)."""
    if params['sequence'] not in sequencing.REARRANGING_SEQUENCERS:
        feature_map = tf.cast(feature_map, tf.float32)  # averaged or resampled: in float32
    if params['sequence'] != 'regions':
        return sequencing.SEQUENCERS[params['sequence']](feature_map), None
    if params['regions'] == 'grid':
        return regions.grid_as_sequence(feature_map, params['grid']), None
    boxes, counts = regions.whole_image_when_boxless(features[BOXES_KEY], features[NUM_BOXES_KEY])
    return regions.regions_as_sequence(feature_map, boxes), counts
