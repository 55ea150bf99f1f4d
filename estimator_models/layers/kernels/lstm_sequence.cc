// A whole LSTM sequence in one op, forward and backward, for the CPU.
//
// Keras' LSTM inside a graph is a while loop of about ten small ops per time step and
// twice that in its gradient; at the sizes of this project each op does a few
// microseconds of work, so the executor's per-op cost and the separate passes over
// memory of every elementwise op bound the step (../../../BENCHMARKS.md). Here each
// step is one matrix product and one fused elementwise pass over the batch.
//
// The input projection x_t @ kernel + bias of all steps is one matmul before the op,
// and the recurrent kernel's gradient one matmul after it (../fused_recurrent.py), so the
// loop holds only what must be sequential.
//
// Gate order is Keras': i, f, c, o. A step whose mask is 0 carries the state through
// unchanged, as a masked Keras LSTM does.

#define EIGEN_USE_THREADS

#include <algorithm>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace estimator_models {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

using Device = Eigen::ThreadPoolDevice;
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Matrix = Eigen::Map<RowMajor>;
using ConstMatrix = Eigen::Map<const RowMajor>;
using Vector = Eigen::Map<Eigen::ArrayXf>;
using ConstVector = Eigen::Map<const Eigen::ArrayXf>;

REGISTER_OP("LstmSequence")
    .Input("x_proj: float")            // [T, B, 4U] x_t @ kernel + bias
    .Input("recurrent_kernel: float")  // [U, 4U]
    .Input("mask: float")              // [T, B] 1: the step counts, 0: carry the state
    .Output("h: float")                // [T, B, U]
    .Output("c: float")                // [T, B, U]
    .Output("gates: float")            // [T, B, 4U] activated i, f, c~, o
    .SetShapeFn([](InferenceContext* context) {
      ShapeHandle x_proj, kernel;
      TF_RETURN_IF_ERROR(context->WithRank(context->input(0), 3, &x_proj));
      TF_RETURN_IF_ERROR(context->WithRank(context->input(1), 2, &kernel));
      ShapeHandle state = context->MakeShape(
          {context->Dim(x_proj, 0), context->Dim(x_proj, 1), context->Dim(kernel, 0)});
      context->set_output(0, state);
      context->set_output(1, state);
      context->set_output(2, x_proj);
      return Status();
    });

REGISTER_OP("LstmSequenceGrad")
    .Input("recurrent_kernel: float")  // [U, 4U]
    .Input("mask: float")              // [T, B]
    .Input("c: float")                 // [T, B, U] from LstmSequence
    .Input("gates: float")             // [T, B, 4U] from LstmSequence
    .Input("grad_h: float")            // [T, B, U]
    .Output("grad_x_proj: float")      // [T, B, 4U]
    .SetShapeFn([](InferenceContext* context) {
      context->set_output(0, context->input(3));
      return Status();
    });

namespace {

// Splits the batch into one block of rows per thread and runs block_function(first, last)
// on each: per time step, one hand-off to the thread pool covers both the matmul and the
// elementwise pass, which at these sizes costs less than parallelising either alone.
template <typename BlockFunction>
void ForEachRowBlock(const Device& device, int64_t batch, BlockFunction block_function) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(device.numThreads(), batch / 8));
  if (blocks == 1) {
    block_function(0, batch);
    return;
  }
  const Eigen::TensorOpCost cost(0, 0, /*compute_cycles=*/1e7);
  device.parallelFor(blocks, cost, [&](Eigen::Index first_block, Eigen::Index last_block) {
    for (Eigen::Index block = first_block; block < last_block; ++block) {
      block_function(batch * block / blocks, batch * (block + 1) / blocks);
    }
  });
}

// One row of one forward step. z holds h_{t-1} . recurrent on entry and the activated
// gates on exit; c_prev and h_prev are null at the first step (a zero state).
void ForwardRow(int64_t units, bool counts, const float* x_row, float* z, const float* c_prev,
                const float* h_prev, float* c_row_data, float* h_row_data) {
  Vector zi(z, units), zf(z + units, units), zc(z + 2 * units, units), zo(z + 3 * units, units);
  zi = (zi + ConstVector(x_row, units)).logistic();
  zf = (zf + ConstVector(x_row + units, units)).logistic();
  zc = (zc + ConstVector(x_row + 2 * units, units)).tanh();
  zo = (zo + ConstVector(x_row + 3 * units, units)).logistic();
  Vector c_row(c_row_data, units), h_row(h_row_data, units);
  if (!counts) {  // padding: the state passes through untouched
    if (c_prev) {
      c_row = ConstVector(c_prev, units);
      h_row = ConstVector(h_prev, units);
    } else {
      c_row.setZero();
      h_row.setZero();
    }
    return;
  }
  if (c_prev) {
    c_row = zf * ConstVector(c_prev, units) + zi * zc;
  } else {
    c_row = zi * zc;
  }
  h_row = zo * c_row.tanh();
}

// One row of one backward step: writes dz (the gradient of the step's pre-activations)
// and turns dh/dc, the gradient reaching h_t and c_t, into what reaches c_{t-1} and the
// part of h_{t-1}'s that does not go through the recurrent kernel.
void BackwardRow(int64_t units, bool counts, const float* gate, const float* c_row,
                 const float* c_prev, const float* grad_h_row, float* dz, float* dh_data,
                 float* dc_data) {
  Vector dh(dh_data, units), dc(dc_data, units);
  dh += ConstVector(grad_h_row, units);
  Vector di(dz, units), df(dz + units, units), dg(dz + 2 * units, units), d_o(dz + 3 * units, units);
  if (!counts) {  // padding passed h and c through: so does their gradient
    di.setZero();
    df.setZero();
    dg.setZero();
    d_o.setZero();
    return;
  }
  ConstVector i(gate, units), f(gate + units, units), g(gate + 2 * units, units),
      o(gate + 3 * units, units);
  const Eigen::ArrayXf tanh_c = ConstVector(c_row, units).tanh();
  d_o = dh * tanh_c * o * (1.0f - o);
  dc += dh * o * (1.0f - tanh_c.square());
  if (c_prev) {
    df = dc * ConstVector(c_prev, units) * f * (1.0f - f);
  } else {
    df.setZero();
  }
  di = dc * g * i * (1.0f - i);
  dg = dc * i * (1.0f - g.square());
  dc *= f;
  dh.setZero();  // the recurrent part is added from dz after the row pass
}

Status CheckShapes(const Tensor& x_proj, const Tensor& kernel, const Tensor& mask) {
  if (x_proj.dims() != 3 || kernel.dims() != 2 || mask.dims() != 2)
    return tensorflow::errors::InvalidArgument("LstmSequence: x_proj must be [T, B, 4U], "
                                               "recurrent_kernel [U, 4U], mask [T, B]");
  const int64_t units = kernel.dim_size(0);
  if (kernel.dim_size(1) != 4 * units || x_proj.dim_size(2) != 4 * units)
    return tensorflow::errors::InvalidArgument("LstmSequence: recurrent_kernel is ",
                                               kernel.shape().DebugString(), " and x_proj ",
                                               x_proj.shape().DebugString(), "; expected [U, 4U] and [T, B, 4U]");
  if (mask.dim_size(0) != x_proj.dim_size(0) || mask.dim_size(1) != x_proj.dim_size(1))
    return tensorflow::errors::InvalidArgument("LstmSequence: mask is ", mask.shape().DebugString(),
                                               ", x_proj ", x_proj.shape().DebugString());
  return Status();
}

class LstmSequenceOp : public OpKernel {
 public:
  explicit LstmSequenceOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& x_proj = context->input(0);
    const Tensor& kernel = context->input(1);
    const Tensor& mask = context->input(2);
    OP_REQUIRES_OK(context, CheckShapes(x_proj, kernel, mask));
    const int64_t steps = x_proj.dim_size(0), batch = x_proj.dim_size(1), units = kernel.dim_size(0);

    Tensor *h = nullptr, *c = nullptr, *gates = nullptr;
    const TensorShape state_shape({steps, batch, units});
    OP_REQUIRES_OK(context, context->allocate_output(0, state_shape, &h));
    OP_REQUIRES_OK(context, context->allocate_output(1, state_shape, &c));
    OP_REQUIRES_OK(context, context->allocate_output(2, x_proj.shape(), &gates));
    if (steps == 0 || batch == 0) return;

    const Device& device = context->eigen_device<Device>();
    const float* mask_data = mask.flat<float>().data();
    ConstMatrix recurrent(kernel.flat<float>().data(), units, 4 * units);
    const int64_t step_state = batch * units, step_gates = batch * 4 * units;

    for (int64_t t = 0; t < steps; ++t) {
      float* z = gates->flat<float>().data() + t * step_gates;
      const float* x_t = x_proj.flat<float>().data() + t * step_gates;
      const float* h_prev = t ? h->flat<float>().data() + (t - 1) * step_state : nullptr;
      const float* c_prev = t ? c->flat<float>().data() + (t - 1) * step_state : nullptr;
      float* h_t = h->flat<float>().data() + t * step_state;
      float* c_t = c->flat<float>().data() + t * step_state;
      ForEachRowBlock(device, batch, [&](int64_t first, int64_t last) {
        Matrix z_block(z + first * 4 * units, last - first, 4 * units);
        if (h_prev) {
          z_block.noalias() = ConstMatrix(h_prev + first * units, last - first, units) * recurrent;
        } else {
          z_block.setZero();
        }
        for (int64_t row = first; row < last; ++row) {
          ForwardRow(units, mask_data[t * batch + row] != 0.0f, x_t + row * 4 * units,
                     z + row * 4 * units, c_prev ? c_prev + row * units : nullptr,
                     h_prev ? h_prev + row * units : nullptr, c_t + row * units, h_t + row * units);
        }
      });
    }
  }
};

class LstmSequenceGradOp : public OpKernel {
 public:
  explicit LstmSequenceGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& kernel = context->input(0);
    const Tensor& mask = context->input(1);
    const Tensor& c = context->input(2);
    const Tensor& gates = context->input(3);
    const Tensor& grad_h = context->input(4);
    OP_REQUIRES_OK(context, CheckShapes(gates, kernel, mask));
    const int64_t steps = gates.dim_size(0), batch = gates.dim_size(1), units = kernel.dim_size(0);
    OP_REQUIRES(context, c.shape() == TensorShape({steps, batch, units}) && grad_h.shape() == c.shape(),
                tensorflow::errors::InvalidArgument("LstmSequenceGrad: c and grad_h must be [T, B, U]"));

    Tensor* grad_x_proj = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, gates.shape(), &grad_x_proj));
    if (steps == 0 || batch == 0) return;
    // The gradient reaching h_t and c_t from step t + 1.
    Tensor carried_h, carried_c;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({batch, units}), &carried_h));
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({batch, units}), &carried_c));
    float* dh_next = carried_h.flat<float>().data();
    float* dc_next = carried_c.flat<float>().data();
    std::fill(dh_next, dh_next + batch * units, 0.0f);
    std::fill(dc_next, dc_next + batch * units, 0.0f);

    const Device& device = context->eigen_device<Device>();
    const float* mask_data = mask.flat<float>().data();
    ConstMatrix recurrent(kernel.flat<float>().data(), units, 4 * units);
    const int64_t step_state = batch * units, step_gates = batch * 4 * units;

    for (int64_t t = steps - 1; t >= 0; --t) {
      const float* gate_t = gates.flat<float>().data() + t * step_gates;
      const float* c_t = c.flat<float>().data() + t * step_state;
      const float* c_prev = t ? c.flat<float>().data() + (t - 1) * step_state : nullptr;
      const float* grad_h_t = grad_h.flat<float>().data() + t * step_state;
      float* dz = grad_x_proj->flat<float>().data() + t * step_gates;
      ForEachRowBlock(device, batch, [&](int64_t first, int64_t last) {
        for (int64_t row = first; row < last; ++row) {
          BackwardRow(units, mask_data[t * batch + row] != 0.0f, gate_t + row * 4 * units,
                      c_t + row * units, c_prev ? c_prev + row * units : nullptr,
                      grad_h_t + row * units, dz + row * 4 * units, dh_next + row * units,
                      dc_next + row * units);
        }
        if (t == 0) return;
        // What reaches h_{t-1}: dz . recurrent^T, plus what padded rows passed through.
        Matrix next(dh_next + first * units, last - first, units);
        next.noalias() += ConstMatrix(dz + first * 4 * units, last - first, 4 * units) *
                          recurrent.transpose();
      });
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("LstmSequence").Device(DEVICE_CPU), LstmSequenceOp);
REGISTER_KERNEL_BUILDER(Name("LstmSequenceGrad").Device(DEVICE_CPU), LstmSequenceGradOp);

}  // namespace
}  // namespace estimator_models
