"""tf.data input functions shared by every model.

  sources/    one module per form of data (TFRecords, TFDS, .npz, class folders, arrays)
  embedded/   the embedded datasets: their generators and TFDS builders
  specs       a data spec to its sources, over both
  dataset     the input_fn factory: a source to what an Estimator reads
  writing     labelled images and clips written as TFRecord shards
  preprocess  image preprocessing, also the serving receivers'
  augment     training-time augmentation
  progress    the progress lines of long counts of examples

Feature dictionaries seen by a model_fn (and built by the serving receivers):

  images: {IMAGE_KEY: float32 [batch, H, W, C]}                 raw pixels 0..255
  clips:  {FRAMES_KEY: float32 [batch, T, H, W, C],            raw pixels 0..255,
           LENGTH_KEY: int32 [batch]}                          true clip lengths (<= T)

Batches from the input functions (not the serving receivers) also carry
  BAD_RECORDS_KEY: int64 [batch], records of the source dropped as unreadable so far
  in the current pass (see input_fns.sources.source); the models ignore it.
Images from TFRecord Examples with boxes (image/object/bbox/{ymin,xmin,ymax,xmax}, the
TF Object Detection API's keys) also carry
  BOXES_KEY: float32 [batch, R, 4]  (ymin, xmin, ymax, xmax) in fractions of the image,
                                    zero boxes past each image's count
  NUM_BOXES_KEY: int32 [batch]      boxes of each image
Clips whose data labels every frame (npz `frame_labels`, SequenceExample feature list
`clip/frame_labels`, the embedded moving_glyphs) also carry
  FRAME_LABELS_KEY: int32 [batch, T] a class per frame, 0 past each clip's length

Labels are int32 [batch] class indices. Pixel scaling happens inside the model, so
serving clients send the same raw values the input functions produce.
"""

IMAGE_KEY = 'image'
FRAMES_KEY = 'frames'
LENGTH_KEY = 'length'
BAD_RECORDS_KEY = 'bad_records'
BOXES_KEY = 'boxes'
NUM_BOXES_KEY = 'num_boxes'
FRAME_LABELS_KEY = 'frame_labels'

IMAGE = 'image'
CLIP = 'clip'
