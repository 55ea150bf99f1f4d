"""tf.data input functions shared by every model.

Feature dictionaries seen by a model_fn (and built by the serving receivers):

  images: {IMAGE_KEY: float32 [batch, H, W, C]}                 raw pixels 0..255
  clips:  {FRAMES_KEY: float32 [batch, T, H, W, C],            raw pixels 0..255,
           LENGTH_KEY: int32 [batch]}                          true clip lengths (<= T)

Labels are int32 [batch] class indices. Pixel scaling happens inside the model, so
serving clients send the same raw values the input functions produce.
"""

IMAGE_KEY = 'image'
FRAMES_KEY = 'frames'
LENGTH_KEY = 'length'

IMAGE = 'image'
CLIP = 'clip'
