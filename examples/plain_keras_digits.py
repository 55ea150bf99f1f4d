"""A plain Keras model to compare the project's defaults with (docs/models.md, Defaults, measured).

Two valid 3x3 convolutions with 2x2 max-pooling, the feature map's rows read by
LSTM(64), trained with `model.fit` (Adam at 0.001, no schedule, no augmentation) on an
.npz of digits (`x` [N, 28, 28] or [N, 28, 28, 1] pixels 0..255, `y` [N] labels), then
scored on another:

    python -m examples.plain_keras_digits --data=train.npz --eval_data=test.npz \\
        --steps=1500 --batch_size=32 --seed=42

Prints one line: the test accuracy.
"""

import numpy as np
import tensorflow as tf
from absl import app, flags

flags.DEFINE_string('data', None, '.npz to train on (x, y)')
flags.DEFINE_string('eval_data', None, '.npz to score on (x, y)')
flags.DEFINE_integer('steps', 1500, 'training steps')
flags.DEFINE_integer('batch_size', 32, 'examples per step')
flags.DEFINE_integer('seed', 42, 'weights and shuffling')
FLAGS = flags.FLAGS


def plain_model(num_classes=10):
    """[B, 28, 28, 1] pixels in 0..1 -> [B, K] logits."""
    return tf.keras.Sequential([
        tf.keras.layers.Conv2D(32, 3, activation='relu'),        # [B, 26, 26, 32]
        tf.keras.layers.MaxPool2D(2),                            # [B, 13, 13, 32]
        tf.keras.layers.Conv2D(64, 3, activation='relu'),        # [B, 11, 11, 64]
        tf.keras.layers.MaxPool2D(2),                            # [B, 5, 5, 64]
        tf.keras.layers.Reshape((5, 5 * 64)),                    # [B, 5 rows, 320]
        tf.keras.layers.LSTM(64),                                # [B, 64]
        tf.keras.layers.Dense(num_classes),                      # [B, K]
    ])


def load_digits(path):
    with np.load(path) as arrays:
        images = arrays['x'].astype(np.float32).reshape(-1, 28, 28, 1) / 255.0
        return images, arrays['y'].astype(np.int64)


def main(argv):
    del argv
    tf.keras.utils.set_random_seed(FLAGS.seed)
    train_images, train_labels = load_digits(FLAGS.data)
    test_images, test_labels = load_digits(FLAGS.eval_data)
    model = plain_model()
    model.compile(tf.keras.optimizers.Adam(1e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=['accuracy'])
    stream = (tf.data.Dataset.from_tensor_slices((train_images, train_labels))
              .shuffle(len(train_labels), seed=FLAGS.seed).repeat().batch(FLAGS.batch_size))
    model.fit(stream, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
    _, accuracy = model.evaluate(test_images, test_labels, verbose=0)
    print(f'plain Keras model: accuracy {accuracy:.4f} on {len(test_labels)} examples '
          f'after {FLAGS.steps} steps of batch {FLAGS.batch_size}')


if __name__ == '__main__':
    flags.mark_flags_as_required(['data', 'eval_data'])
    app.run(main)
