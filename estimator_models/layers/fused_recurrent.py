"""LSTM layers that run a whole sequence in one op: `fused` (CPU) and `cudnn` (GPU).

Both hold exactly the variables of Keras' `LSTM` under the same names
(`<layer>/lstm_cell/{kernel, recurrent_kernel, bias}`, gate order i, f, c, o, one bias),
so a checkpoint written by any implementation restores into any other, and both treat a
mask as Keras does: a masked step carries the state through. Each layer converts its
weights in the graph to the layout its op wants.

  fused  estimator_models/layers/kernels/lstm_sequence.cc: the op's loop runs the steps
         with the bias and, in float32 for inputs no wider than the units, each step's
         input projection; in float32 the backward op also sums the recurrent kernel's
         gradient (fused_lstm_sequence).
  cudnn  tf.raw_ops.CudnnRNNV3 with sequence lengths, which only has a GPU kernel. A
         Keras LSTM inside an Estimator graph never picks cuDNN itself.
"""

import numpy as np
import tensorflow as tf

from estimator_models.layers import kernels


def fused_lstm_sequence(inputs, kernel, recurrent_kernel, bias, step_mask, arithmetic_dtype=tf.float32):
    """Keras' LSTM over time-major `inputs` [T, B, F] by the fused op; returns h [T, B, U]
    and the last step's h [B, U].

    In float32, with no more input features than units, the op's loop projects each
    step's inputs itself (no [T, B, 4U] projection written and read back), and its
    gradient sums the input kernel's gradient while each step's gate gradients are in
    cache. Wider inputs are projected by one matmul before the op: their kernel panels no
    longer stay in cache beside the recurrent kernel's (BENCHMARKS.md). In float32 the
    backward op's loop also sums the recurrent kernel's gradient. With
    `arithmetic_dtype` tf.bfloat16 the input projection and both kernels' gradients (one
    product) are bfloat16 matmuls around the op, accumulating in float32. The op then
    reads the projection in bfloat16 and hands over h_{t-1} and the gate gradients in
    bfloat16, the copies its per-step products make, so no cast runs between the op and
    those matmuls. `inputs` may then be bfloat16 too (a bfloat16 CNN's features), and
    their gradient is bfloat16.
    """
    library = kernels.load()
    bfloat16 = arithmetic_dtype == tf.bfloat16
    projects_in_loop = not bfloat16 and inputs.shape[-1] <= recurrent_kernel.shape[0]
    nothing = tf.zeros([0])

    def product(a, b, dtype=tf.float32, **transposes):  # [rows, columns] in `dtype`
        return tf.cast(tf.matmul(tf.cast(a, arithmetic_dtype), tf.cast(b, arithmetic_dtype), **transposes), dtype)

    @tf.custom_gradient
    def run(inputs, kernel, recurrent_kernel, bias):
        steps, batch = tf.shape(inputs)[0], tf.shape(inputs)[1]
        units = recurrent_kernel.shape[0]
        flat_inputs = tf.reshape(inputs, [-1, inputs.shape[-1]])                    # [T*B, F]
        if projects_in_loop:
            h, c, gates, final, _ = library.lstm_sequence(inputs, recurrent_kernel, bias, step_mask, kernel)
        else:
            # In bfloat16 the op reads the projection as the matmul gives it, and hands
            # back every step's h_{t-1} in bfloat16 for the kernels' gradient product.
            projected = tf.reshape(product(flat_inputs, kernel, arithmetic_dtype),
                                   [steps, batch, 4 * units])                        # [T, B, 4U]
            h, c, gates, final, previous_h = library.lstm_sequence(
                projected, recurrent_kernel, bias, step_mask, nothing, bfloat16_products=bfloat16,
                bfloat16_outputs=bfloat16)                                            # [T, B, U], [B, U]

        def gradient(grad_h, grad_final):
            # [T, B, 4U] (float32, or bfloat16 only), [4U], [F, 4U], [U, 4U]
            grad_x_proj, grad_bias, grad_kernel, grad_recurrent, grad_x_proj_bfloat16 = library.lstm_sequence_grad(
                recurrent_kernel, step_mask, c, gates, _reaching(grad_h), _reaching(grad_final),
                inputs if projects_in_loop else nothing, nothing if bfloat16 else h,
                bfloat16_products=bfloat16, bfloat16_outputs=bfloat16)
            # Every gradient product below reads it; in bfloat16 the op rounded it itself.
            flat_grad = tf.reshape(grad_x_proj_bfloat16 if bfloat16 else grad_x_proj,
                                   [-1, 4 * units])                                  # [T*B, 4U]
            if bfloat16:
                # Both kernels' gradients in one product (BENCHMARKS.md): split, the input
                # kernel's ([F, T*B] . [T*B, 4U], F as small as 28) ran far below its rate.
                both = product(_inputs_beside_previous_h(inputs, previous_h), flat_grad,
                               transpose_a=True)                                     # [F+U, 4U]
                grad_kernel, grad_recurrent = tf.split(both, [inputs.shape[-1], units])   # [F, 4U], [U, 4U]
            elif not projects_in_loop:
                grad_kernel = product(flat_inputs, flat_grad, transpose_a=True)
            grad_inputs = tf.reshape(product(flat_grad, kernel, inputs.dtype, transpose_b=True),
                                     tf.shape(inputs))                               # [T, B, F]
            return grad_inputs, grad_kernel, grad_recurrent, grad_bias

        return (h, final), gradient

    return run(inputs, kernel, recurrent_kernel, bias)


def _inputs_beside_previous_h(inputs, previous_h):
    """[x_t, h_{t-1}] of every step, h_{-1} the zero state: the rows whose product with
    step t's gate gradients gives both kernels' gradients.

    Args:
      inputs: [T, B, F]; previous_h: bfloat16 [T, B, U] from the forward op.

    Returns:
      bfloat16 [T*B, F+U].
    """
    stacked = tf.concat([tf.cast(inputs, previous_h.dtype), previous_h], axis=-1)      # [T, B, F+U]
    return tf.reshape(stacked, [-1, stacked.shape[-1]])


def _reaching(gradient):
    """The gradient of an output, or an empty tensor where only the zeros TensorFlow
    fills in for an unused output reach it: the kernel then reads nothing (a model that
    uses only the final state never builds the [T, B, U] zeros)."""
    if gradient is None or gradient.op.type == 'ZerosLike':
        return tf.zeros([0])
    return gradient


class _SequenceLSTM(tf.keras.layers.Layer):
    """What the fused and cuDNN layers share: Keras LSTM's variables, masks, directions.

    Called on [B, T, F] with an optional bool mask [B, T]; returns float32 [B, T, U]
    (return_sequences, in the order the steps ran, as Keras' LSTM does) or [B, U]. The
    inputs are read as float32 unless reads_inputs_as says otherwise.
    """

    def __init__(self, units, return_sequences=False, go_backwards=False, **kwargs):
        # Keras would cast the inputs to float32 itself; reads_inputs_as decides instead.
        super().__init__(autocast=False, **kwargs)
        self.units = units
        self.return_sequences = return_sequences
        self.go_backwards = go_backwards
        self.supports_masking = True
        # Builds the variables exactly as Keras' LSTM does, under the same names.
        self.cell = tf.keras.layers.LSTMCell(units, name='lstm_cell')

    def build(self, input_shape):
        with tf.name_scope(self.cell.name):
            self.cell.build(tf.TensorShape(input_shape)[-1:])
        super().build(input_shape)

    def call(self, inputs, mask=None, training=None):
        del training  # no dropout inside the layer: the stack applies it between layers
        inputs = tf.cast(inputs, self.reads_inputs_as(inputs.dtype))
        time_major = tf.transpose(inputs, [1, 0, 2])                                  # [T, B, F]
        step_mask = (tf.ones(tf.shape(time_major)[:2]) if mask is None
                     else tf.transpose(tf.cast(mask, tf.float32)))                   # [T, B]
        if self.go_backwards:
            time_major = tf.reverse(time_major, [0])
            step_mask = tf.reverse(step_mask, [0])
        outputs, final = self._run(time_major, step_mask)                             # [T, B, U], [B, U]
        if self.return_sequences:
            return tf.transpose(outputs, [1, 0, 2])
        return final

    def compute_mask(self, inputs, mask=None):
        return mask if self.return_sequences else None

    def reads_inputs_as(self, given):
        """The dtype the layer reads inputs of dtype `given` in."""
        del given
        return tf.float32

    def _run(self, time_major, step_mask):
        raise NotImplementedError


class FusedLSTM(_SequenceLSTM):
    """Keras' LSTM computed by the fused CPU kernel. With `arithmetic_dtype` tf.bfloat16
    (precision=mixed_bfloat16, training graphs) the input projection of all steps, each
    step's product with the recurrent kernel (on AVX512_BF16, units a multiple of 16) and
    the one product that gives both kernels' gradients run in bfloat16, accumulating in
    float32; the state, the gates and the variables stay float32. Then the inputs are
    read as bfloat16 before they are made time-major: the projection reads them so, and a
    float32 copy would be rearranged for nothing."""

    def __init__(self, units, arithmetic_dtype=tf.float32, **kwargs):
        super().__init__(units, **kwargs)
        self.arithmetic_dtype = arithmetic_dtype

    def reads_inputs_as(self, given):
        del given
        return tf.bfloat16 if self.arithmetic_dtype == tf.bfloat16 else tf.float32

    def _run(self, time_major, step_mask):
        return fused_lstm_sequence(time_major, self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias,
                                   step_mask, self.arithmetic_dtype)


class CudnnLSTM(_SequenceLSTM):
    """Keras' LSTM computed by cuDNN (GPU only)."""

    def _run(self, time_major, step_mask):
        lengths = tf.cast(tf.reduce_sum(step_mask, axis=0), tf.int32)               # [B]
        padding = tf.shape(time_major)[0] - lengths                                   # [B]
        # cuDNN wants each row's padding at its end; a reversed sequence has it first.
        if self.go_backwards:
            time_major = _rotate_steps(time_major, padding)
        zeros = tf.zeros([1, tf.shape(time_major)[1], self.units])
        outputs, final_h, _, _, _ = tf.raw_ops.CudnnRNNV3(
            input=time_major, input_h=zeros, input_c=zeros,
            params=cudnn_params(self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias),
            sequence_lengths=lengths, rnn_mode='lstm', input_mode='linear_input',
            direction='unidirectional', is_training=True, time_major=True)
        if self.go_backwards:
            outputs = _rotate_steps(outputs, lengths)
        return outputs, final_h[0]


def _rotate_steps(time_major, shift):
    """[T, B, D] -> [T, B, D] whose row b at step t is the input's at (t + shift[b]) mod T."""
    steps = tf.shape(time_major)[0]
    positions = (tf.range(steps)[None, :] + shift[:, None]) % steps                 # [B, T]
    rotated = tf.gather(tf.transpose(time_major, [1, 0, 2]), positions, batch_dims=1)  # [B, T, D]
    return tf.transpose(rotated, [1, 0, 2])


# cuDNN's canonical LSTM parameters, as TensorFlow's CudnnRNN ops take them flat: the
# eight weight matrices (input i, f, c, o then recurrent i, f, c, o), each transposed to
# [U, F] or [U, U], then eight bias vectors of U. Its gate order is Keras'; it has an
# input and a recurrent bias where Keras has one, so the input biases are zero.

def cudnn_params(kernel, recurrent_kernel, bias):
    """Keras LSTM weights -> cuDNN's flat parameter vector (in the graph)."""
    weights = tf.split(kernel, 4, axis=1) + tf.split(recurrent_kernel, 4, axis=1)
    biases = tf.split(tf.zeros_like(bias), 4) + tf.split(bias, 4)
    return tf.concat([tf.reshape(tf.transpose(weight), [-1]) for weight in weights] + biases, axis=0)


def cudnn_params_numpy(kernel, recurrent_kernel, bias):
    """cudnn_params in numpy."""
    weights = np.split(kernel, 4, axis=1) + np.split(recurrent_kernel, 4, axis=1)
    biases = np.split(np.zeros_like(bias), 4) + np.split(bias, 4)
    return np.concatenate([weight.T.ravel() for weight in weights] + biases)


def keras_weights_from_cudnn(params, input_size, units):
    """cuDNN's flat LSTM parameters -> (kernel [F, 4U], recurrent_kernel [U, 4U], bias [4U]);
    the two biases of each gate are summed into Keras' one."""
    sizes = [units * input_size] * 4 + [units * units] * 4 + [units] * 8
    parts = np.split(params, np.cumsum(sizes)[:-1])
    kernel = np.concatenate([part.reshape(units, input_size).T for part in parts[:4]], axis=1)
    recurrent_kernel = np.concatenate([part.reshape(units, units).T for part in parts[4:8]], axis=1)
    bias = np.concatenate(parts[8:12]) + np.concatenate(parts[12:])
    return kernel, recurrent_kernel, bias


class Bidirectional(tf.keras.layers.Layer):
    """Keras' Bidirectional over one of the layers above, with Keras' variable names
    (`<name>/forward_<layer>/...`, `<name>/backward_<layer>/...`) and its outputs: the
    forward and backward results concatenated, sequences back in time order."""

    def __init__(self, layer_class, units, layer_name, return_sequences=False, **kwargs):
        super().__init__(**kwargs)
        self.return_sequences = return_sequences
        self.supports_masking = True
        self.forward_layer = layer_class(units, return_sequences=return_sequences,
                                         name=f'forward_{layer_name}')
        self.backward_layer = layer_class(units, return_sequences=return_sequences, go_backwards=True,
                                          name=f'backward_{layer_name}')

    def call(self, inputs, mask=None, training=None):
        forward = self.forward_layer(inputs, mask=mask, training=training)
        backward = self.backward_layer(inputs, mask=mask, training=training)
        if self.return_sequences:
            backward = tf.reverse(backward, [1])
        return tf.concat([forward, backward], axis=-1)

    def compute_mask(self, inputs, mask=None):
        return mask if self.return_sequences else None
