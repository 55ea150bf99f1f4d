"""Goes on training an exported model in Keras 3, where Estimator is gone.

Runs in the Keras 3 environment that `bin/export --format=keras3` made (its python is
printed by the export, and lives in the cache folder's keras3/), not in the project's:

    KERAS_BACKEND=jax PYTHON_OF_KERAS3 examples/keras3_fine_tune.py \\
        --model=runs/pixel_row_lstm/export/manual/keras3/1/model.keras \\
        --data=train.npz --eval_data=test.npz --steps=300 --output=fine_tuned.keras

It loads `model.keras`, scores it on --eval_data, trains it with `model.fit` on --data
(Adam at --learning_rate, sparse cross-entropy on the `logits` output), scores it again and saves it. The
.npz files hold what the model takes, raw pixels 0..255: `x` [N, H, W] or [N, H, W, C]
images and `y` [N] labels; clips `x` [N, T, H, W(, C)] with `lengths` [N]. Prints the
loss on --data and the accuracy on --eval_data before and after, one line each.
"""

import argparse

import keras
import numpy as np


def read_examples(path, model):
    """(inputs for `model` {name: array}, int labels [N]) from an .npz."""
    with np.load(path) as arrays:
        pixels, labels = arrays['x'].astype(np.float32), arrays['y'].astype(np.int32)
        lengths = arrays['lengths'].astype(np.int32) if 'lengths' in arrays.files else None
    pixel_name = 'frames' if 'frames' in model.input else 'image'
    wanted_rank = len(model.get_layer(pixel_name).output.shape)
    if pixels.ndim == wanted_rank - 1:                                    # no channel axis: grayscale
        pixels = pixels[..., np.newaxis]
    inputs = {pixel_name: pixels}
    if pixel_name == 'frames':
        inputs['lengths'] = lengths if lengths is not None else np.full(len(pixels), pixels.shape[1], np.int32)
    return inputs, labels


def logits_model(model):
    """The same layers and weights, answering the logits alone: what the loss is taken of."""
    return keras.Model(model.input, model.output['logits'])


def accuracy(model, inputs, labels, batch_size):
    probabilities = model.predict(inputs, batch_size=batch_size, verbose=0)['probabilities']
    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


def random_batches(inputs, labels, batch_size, seed):
    """Endless batches drawn at random, with a seeded generator."""
    rng = np.random.default_rng(seed)
    while True:
        chosen = rng.integers(0, len(labels), batch_size)
        yield {name: value[chosen] for name, value in inputs.items()}, labels[chosen]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help='model.keras written by bin/export --format=keras3')
    parser.add_argument('--data', required=True, help='.npz to train on')
    parser.add_argument('--eval_data', help='.npz to score on (default: --data)')
    parser.add_argument('--steps', type=int, default=300, help='training steps')
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--learning_rate', type=float, default=3e-4,
                        help="Adam's rate; below the training run's, as a fine-tuning rate usually is")
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--output', required=True, help='where the fine-tuned model.keras goes')
    arguments = parser.parse_args()

    keras.utils.set_random_seed(arguments.seed)
    model = keras.saving.load_model(arguments.model)
    train_inputs, train_labels = read_examples(arguments.data, model)
    eval_inputs, eval_labels = read_examples(arguments.eval_data or arguments.data, model)
    trainable = logits_model(model)
    trainable.compile(optimizer=keras.optimizers.Adam(arguments.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def loss():
        return float(trainable.evaluate(train_inputs, train_labels, batch_size=256, verbose=0))

    loss_before, accuracy_before = loss(), accuracy(model, eval_inputs, eval_labels, 256)
    trainable.fit(random_batches(train_inputs, train_labels, arguments.batch_size, arguments.seed),
                  steps_per_epoch=arguments.steps, epochs=1, shuffle=False, verbose=0)
    loss_after, accuracy_after = loss(), accuracy(model, eval_inputs, eval_labels, 256)
    model.save(arguments.output)
    print(f'backend {keras.backend.backend()}, keras {keras.__version__}: {arguments.steps} steps of '
          f'batch {arguments.batch_size}')
    print(f'loss on {arguments.data}: {loss_before:.4f} before, {loss_after:.4f} after')
    print(f'accuracy on {arguments.eval_data or arguments.data}: {accuracy_before:.4f} before, '
          f'{accuracy_after:.4f} after')
    print(arguments.output)


if __name__ == '__main__':
    main()
