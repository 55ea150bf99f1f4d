"""TF1 recurrent-cell checkpoints converted to the variables of the project's models.

TF1 code keeps a cell's weights as one kernel over [inputs, state]; Keras' layers,
which estimator_models.layers.recurrent uses, keep the input and recurrent kernels
apart and order the gates differently:

  LSTMCell / BasicLSTMCell under dynamic_rnn, `.../lstm_cell/{kernel,bias}`:
    kernel [F+U, 4U] with gate columns i, j, f, o; `forget_bias` (default 1.0) is
    added at run time, not stored. Keras LSTM: `kernel` [F, 4U] = rows :F,
    `recurrent_kernel` [U, 4U] = rows F:, gate columns i, f, c(=j), o, and the forget
    bias folded into `bias`.
  GRUCell, `.../gru_cell/{gates,candidate}/{kernel,bias}`:
    gates kernel [F+U, 2U] (r, u), candidate kernel [F+U, U], the reset gate applied
    before the candidate's matmul. That is Keras GRU(reset_after=False) (the project's
    hparam gru_reset_after=false) with columns u(=z), r, candidate.
  Dense layers `dense/{kernel,bias}`: the model's `logits` layer, unchanged.

Layers of a MultiRNNCell (`multi_rnn_cell/cell_N/`) become rnn_N; the directions of a
bidirectional_dynamic_rnn (`fw/`, `bw/`) the forward and backward layers of
`bidirectional_rnn_N`. Optimizer slots and the global step are not model weights and
are left behind.
"""

import os
import re

import numpy as np
import tensorflow as tf

from estimator_models.errors import UserError

CELL_VARIABLE = re.compile(
    r'^(?P<scope>(?:.*?/)?)(?:(?P<direction>fw|bw)/)?(?:multi_rnn_cell/cell_(?P<layer>\d+)/)?'
    r'(?P<cell>lstm_cell|basic_lstm_cell|gru_cell)/(?P<part>kernel|bias|gates/kernel|gates/bias|'
    r'candidate/kernel|candidate/bias)$')
DENSE_VARIABLE = re.compile(r'^(?P<scope>(?:.*/)?)dense(?:_(?P<index>\d+))?/(?P<part>kernel|bias)$')
NOT_WEIGHTS = re.compile(r'(^|/)global_step$|_power(_\d+)?$|/(Adam|Momentum|RMSProp|Adagrad|Ftrl|'
                         r'Adadelta|AdagradDA|ExponentialMovingAverage)(_\d+)?$')
LOGITS = 'logits'
DIRECTION_NAMES = {None: None, 'fw': 'forward', 'bw': 'backward'}


def read(checkpoint):
    """{name: numpy array} of every variable in a checkpoint."""
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def is_tf1_recurrent(names):
    """Whether the variable names are those of TF1 recurrent cells: a cell kernel with no
    `recurrent_kernel` beside it (Keras layers, this project's too, keep one)."""
    names = set(names)
    for name in names:
        match = CELL_VARIABLE.match(name)
        if match and name[:match.end('cell')] + '/recurrent_kernel' not in names:
            return True
    return False


def convert(variables, forget_bias=1.0):
    """Converts a TF1 recurrent model's weights to the project's variables.

    Args:
      variables: {name: array} read from a TF1 checkpoint.
      forget_bias: the LSTMCell's `forget_bias` (TF1's default 1.0), folded into the bias.

    Returns:
      (converted, mapping, unmapped): {project name: array}; a list of
      (TF1 names, project name, how) lines describing each conversion; and the sorted
      TF1 weight names that fit nowhere.
    """
    weights = {name: value for name, value in variables.items() if not NOT_WEIGHTS.search(name)}
    cells, dense, unmapped = {}, {}, []
    for name in weights:
        cell_match, dense_match = CELL_VARIABLE.match(name), DENSE_VARIABLE.match(name)
        if cell_match:
            key = (cell_match['scope'], int(cell_match['layer'] or 0), cell_match['direction'])
            cells.setdefault(key, {'cell': cell_match['cell']})[cell_match['part']] = name
        elif dense_match:
            dense.setdefault((dense_match['scope'], int(dense_match['index'] or 0)), {})[dense_match['part']] = name
        else:
            unmapped.append(name)
    converted, mapping = {}, []
    layer_numbers = {key: number for number, key in enumerate(sorted({key[:2] for key in cells}))}
    for key, parts in sorted(cells.items()):
        target = _layer_scope(layer_numbers[key[:2]], key[2])
        convert_cell = _convert_gru if parts['cell'] == 'gru_cell' else _convert_lstm
        converted_parts, how = convert_cell(parts, weights, target, forget_bias, unmapped)
        converted.update(converted_parts)
        if converted_parts:
            mapping.append((sorted(name for part, name in parts.items() if part != 'cell'), target, how))
    for number, key in enumerate(sorted(dense)):
        if number < len(dense) - 1:
            unmapped.extend(dense[key].values())
            continue
        for part, name in dense[key].items():
            converted[f'{LOGITS}/{part}'] = weights[name]
            mapping.append(([name], f'{LOGITS}/{part}', 'unchanged'))
    return converted, mapping, sorted(unmapped)


def _layer_scope(number, direction):
    """The project's scope of recurrent layer `number`, in one direction or none."""
    if direction is None:
        return f'rnn_{number}'
    return f'bidirectional_rnn_{number}/{DIRECTION_NAMES[direction]}_rnn_{number}'


def _convert_lstm(parts, weights, target, forget_bias, unmapped):
    if set(parts) != {'cell', 'kernel', 'bias'}:
        unmapped.extend(name for part, name in parts.items() if part != 'cell')
        return {}, ''
    kernel, bias = weights[parts['kernel']], weights[parts['bias']]
    units = bias.shape[0] // 4
    inputs = kernel.shape[0] - units
    # TF1 gate columns i, j, f, o -> Keras i, f, c(=j), o.
    i, j, f, o = (slice(k * units, (k + 1) * units) for k in range(4))

    def reordered(array):
        return np.concatenate([array[..., i], array[..., f], array[..., j], array[..., o]], axis=-1)

    keras_bias = reordered(bias).copy()
    keras_bias[units:2 * units] += forget_bias
    converted = {
        f'{target}/lstm_cell/kernel': reordered(kernel[:inputs]),
        f'{target}/lstm_cell/recurrent_kernel': reordered(kernel[inputs:]),
        f'{target}/lstm_cell/bias': keras_bias,
    }
    how = (f'LSTM: kernel [{inputs}+{units}, {4 * units}] split into input and recurrent kernels, '
           f'gates i,j,f,o -> i,f,c,o, forget_bias {forget_bias:g} folded into the bias')
    return converted, how


def _convert_gru(parts, weights, target, forget_bias, unmapped):
    del forget_bias
    wanted = {'cell', 'gates/kernel', 'gates/bias', 'candidate/kernel', 'candidate/bias'}
    if set(parts) != wanted:
        unmapped.extend(name for part, name in parts.items() if part != 'cell')
        return {}, ''
    gates, candidate = weights[parts['gates/kernel']], weights[parts['candidate/kernel']]
    units = candidate.shape[1]
    inputs = candidate.shape[0] - units
    reset, update = slice(0, units), slice(units, 2 * units)

    def keras_order(gate_array, candidate_array):
        # TF1 gate columns r, u (+ candidate) -> Keras z(=u), r, h.
        return np.concatenate([gate_array[..., update], gate_array[..., reset], candidate_array], axis=-1)

    kernel = keras_order(gates, candidate)
    converted = {
        f'{target}/gru_cell/kernel': kernel[:inputs],
        f'{target}/gru_cell/recurrent_kernel': kernel[inputs:],
        f'{target}/gru_cell/bias': keras_order(weights[parts['gates/bias']], weights[parts['candidate/bias']]),
    }
    how = (f'GRU: gates [{inputs}+{units}, {2 * units}] and candidate kernels split into input and '
           'recurrent kernels, columns r,u,c -> z,r,h (needs gru_reset_after=false)')
    return converted, how


def write(variables, prefix):
    """Writes {name: array} as a TF1 checkpoint at `prefix`; returns its path."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with tf.Graph().as_default():
        saved = [tf.compat.v1.Variable(value, name=name) for name, value in sorted(variables.items())]
        saver = tf.compat.v1.train.Saver({variable.op.name: variable for variable in saved})
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, prefix, write_meta_graph=False)


def convert_checkpoint(source, prefix, forget_bias=1.0):
    """Reads a TF1 recurrent checkpoint, converts it and writes it to `prefix`.

    Returns (path written, mapping lines). A checkpoint without recurrent cells, or with
    weights that fit nowhere, is an error naming them.
    """
    variables = read(source)
    if not is_tf1_recurrent(variables):
        raise UserError(f'{source} holds no TF1 recurrent cell (lstm_cell, basic_lstm_cell, gru_cell); '
                        f'its variables: {", ".join(sorted(variables)[:8])}')
    converted, mapping, unmapped = convert(variables, forget_bias)
    if unmapped:
        raise UserError(f'cannot map these variables of {source}: {", ".join(unmapped)}')
    return write(converted, prefix), mapping


def describe(mapping):
    """Printable lines of a conversion's mapping."""
    return [f'{", ".join(sources)} -> {target}: {how}' for sources, target, how in mapping]
