"""The fused kernel's portable path against its AVX-512 path.

A CPU without AVX-512 (most AMD and laptop CPUs) runs the kernel's Eigen path: one
product per step, then a pass over the step's rows. This machine builds the AVX-512 path.
Here the same source is also built for Haswell (AVX2, no AVX-512), with its ops renamed
so that both libraries load in one process, and every output of both ops is compared on
shapes that cover partial row blocks and panels, padded steps, inputs projected inside
the loop and before it, and a single step. The bfloat16 copies the ops hand over are
widened and rounded outside the loop there, and checked too.

It costs one more compile of the kernel, about 20 seconds.
"""

import numpy as np
import pytest
import tensorflow as tf

import test_precision
from conftest import build_kernel_variant
from estimator_models.layers import kernels

pytestmark = pytest.mark.skipif('avx512f' not in kernels._cpu_flags().split(),
                                reason='this CPU has no AVX-512: the kernel it builds is the portable path')

# (steps, batch, units, features): 37 rows split unevenly over two threads, units that
# fill no whole panel, inputs wider than the units (projected before the op), one step.
SHAPES = [(5, 37, 20, 7), (11, 128, 72, 28), (1, 16, 16, 3), (7, 64, 128, 200)]
OUTPUTS = ('h', 'h_last', 'grad_x_proj', 'grad_bias', 'grad_kernel', 'grad_recurrent_kernel')


def _with_portable_op_names(source):
    for op in ('LstmSequenceGrad', 'LstmSequence'):
        source = source.replace(f'"{op}"', '"{}"'.format(op.replace('LstmSequence', 'LstmSequencePortable')))
    return source


@pytest.fixture(scope='module')
def portable_library(tmp_path_factory):
    """The kernel built for Haswell, its ops named LstmSequencePortable and
    LstmSequencePortableGrad."""
    # The last -march wins: Haswell's instruction sets, AVX2 and FMA, without AVX-512.
    library = build_kernel_variant(tmp_path_factory.mktemp('portable'), 'portable', _with_portable_op_names,
                                   ['-march=haswell'])
    return tf.load_op_library(library)


def random_sequence(steps, batch, units, features, seed):
    """Inputs, weights, a mask of random lengths, and the gradients reaching h and h_last."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, steps + 1, batch)
    return dict(
        x=rng.normal(size=(steps, batch, features)).astype(np.float32),
        kernel=(rng.normal(size=(features, 4 * units)) * 0.2).astype(np.float32),
        recurrent_kernel=(rng.normal(size=(units, 4 * units)) * 0.2).astype(np.float32),
        bias=(rng.normal(size=4 * units) * 0.2).astype(np.float32),
        mask=(np.arange(steps)[:, None] < lengths[None, :]).astype(np.float32),
        grad_h=rng.normal(size=(steps, batch, units)).astype(np.float32),
        grad_h_last=rng.normal(size=(batch, units)).astype(np.float32))


def forward_and_gradient(forward_op, gradient_op, arrays, in_loop, with_h):
    """The six OUTPUTS of the forward op and its gradient op on `arrays`: x projected by
    the op's loop (`in_loop`) or by a matmul before it, and the recurrent kernel's
    gradient summed by the op when `with_h`."""
    graph = tf.Graph()
    with graph.as_default():
        nothing = tf.zeros([0])
        x, kernel = arrays['x'], arrays['kernel']
        if in_loop:
            inputs, input_kernel = x, kernel
        else:
            inputs = tf.reshape(tf.reshape(x, [-1, x.shape[2]]) @ kernel, [x.shape[0], x.shape[1], -1])
            input_kernel = nothing
        h, c, gates, h_last, _ = forward_op(inputs, arrays['recurrent_kernel'], arrays['bias'], arrays['mask'],
                                         input_kernel)
        gradients = gradient_op(arrays['recurrent_kernel'], arrays['mask'], c, gates, arrays['grad_h'],
                                arrays['grad_h_last'], x if in_loop else nothing, h if with_h else nothing)
        with tf.compat.v1.Session(graph=graph) as session:
            return dict(zip(OUTPUTS, session.run([h, h_last] + list(gradients))))


@pytest.mark.parametrize('shape', SHAPES, ids=lambda shape: 'x'.join(map(str, shape)))
def test_the_portable_path_gives_the_avx512_paths_outputs(portable_library, shape):
    native = kernels.load()
    arrays = random_sequence(*shape, seed=sum(shape))
    for in_loop in ([True, False] if shape[3] <= shape[2] else [False]):
        for with_h in (True, False):
            case = f'{shape} in_loop={in_loop} with_h={with_h}'
            expected = forward_and_gradient(native.lstm_sequence, native.lstm_sequence_grad, arrays, in_loop, with_h)
            portable = forward_and_gradient(portable_library.lstm_sequence_portable,
                                            portable_library.lstm_sequence_portable_grad, arrays, in_loop, with_h)
            for name in OUTPUTS:
                assert portable[name].shape == expected[name].shape, f'{case}: {name}'
                scale = max(1.0, float(np.abs(expected[name]).max(initial=0.0)))
                np.testing.assert_allclose(portable[name], expected[name], rtol=0, atol=2e-5 * scale,
                                           err_msg=f'{case}: {name}')


def test_the_portable_path_rounds_and_widens_the_bfloat16_copies(portable_library):
    """Without AVX-512 the ops widen a bfloat16 x_proj before the loop and round h_{t-1}
    and the gate gradients after it."""
    test_precision.check_bfloat16_outputs(portable_library.lstm_sequence_portable,
                                          portable_library.lstm_sequence_portable_grad, 5, 37, 20)
