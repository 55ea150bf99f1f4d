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
//
// With `bfloat16_products` (precision=mixed_bfloat16, training only) each step's product
// with the recurrent kernel multiplies bfloat16 copies of h_{t-1} (or of the step's gate
// gradient) and of the kernel, accumulating in float32 (AVX512_BF16's VDPBF16PS, twice
// the multiply-adds of a float32 FMA per instruction); the state, the gates and every
// output stay float32. Where the build's CPU lacks AVX512_BF16, or units is not a
// multiple of 16, the products stay float32.

#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

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
    .Attr("bfloat16_products: bool = false")
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
    .Attr("bfloat16_products: bool = false")
    .SetShapeFn([](InferenceContext* context) {
      context->set_output(0, context->input(3));
      return Status();
    });

namespace {

// Splits the batch into one block of rows per thread and runs block_function(first, last)
// on each. Rows of a batch never interact, so each thread runs every step of its rows:
// one hand-off to the thread pool per op call. A hand-off per step, as this op first
// did, cost about as much as the step's products (waking the waiting thread each time).
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


// bfloat16 products: C[rows, N] (= or +=) A[rows, K] . B[K, N], A and B in bfloat16,
// C in float32. VDPBF16PS multiplies pairs of bfloat16 (k, k+1) and adds both products
// to one float32 lane, so B is packed once per op call with each (k, k+1) pair of a
// column side by side, in panels of 64 columns that a block of rows reads from L1.
constexpr int64_t kPanelColumns = 64;
constexpr int kBlockRows = 4;

uint16_t ToBfloat16(float value) {  // round to nearest even, NaN kept a NaN
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// B[K, N] as bfloat16 pairs: panel p holds columns [64p, 64p + width) as
// data[offset(p) + (pair * width + column) * 2 + (k & 1)], k = 2 * pair + (k & 1).
class PackedBfloat16 {
 public:
  // element(k, n) reads B; K and N must be multiples of 2 and 16.
  template <typename Element>
  PackedBfloat16(int64_t depth, int64_t columns, Element element)
      : pairs_(depth / 2), columns_(columns), data_(depth * columns) {
    for (int64_t first = 0; first < columns; first += kPanelColumns) {
      const int64_t width = PanelWidth(first);
      uint16_t* panel = data_.data() + first * depth;
      for (int64_t k = 0; k < depth; ++k) {
        for (int64_t n = 0; n < width; ++n) {
          panel[((k / 2) * width + n) * 2 + (k & 1)] = ToBfloat16(element(k, first + n));
        }
      }
    }
  }
  int64_t pairs() const { return pairs_; }
  int64_t columns() const { return columns_; }
  int64_t PanelWidth(int64_t first) const { return std::min(kPanelColumns, columns_ - first); }
  const uint16_t* Panel(int64_t first) const { return data_.data() + first * pairs_ * 2; }

 private:
  int64_t pairs_, columns_;
  std::vector<uint16_t> data_;
};

#if defined(__AVX512BF16__)
constexpr bool kHaveBfloat16Products = true;

void RowToBfloat16(const float* row, int64_t length, uint16_t* out) {
  for (int64_t i = 0; i < length; i += 16) {
    const __m256bh converted = _mm512_cvtneps_pbh(_mm512_loadu_ps(row + i));
    std::memcpy(out + i, &converted, sizeof(converted));
  }
}

// kRows rows of A (bfloat16 pairs, a_stride pairs apart) times one panel of kVectors * 16
// columns; 16 float32 accumulators at most, so A's broadcasts and B's loads fit the other
// registers.
template <int kRows, int kVectors>
void DotBlock(const uint32_t* a, int64_t a_stride, const uint16_t* panel, int64_t pairs,
              float* c, int64_t c_stride, bool accumulate) {
  __m512 sum[kRows][kVectors];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v)
      sum[r][v] = accumulate ? _mm512_loadu_ps(c + r * c_stride + 16 * v) : _mm512_setzero_ps();
  constexpr int64_t width = 16 * kVectors;
  for (int64_t pair = 0; pair < pairs; ++pair) {
    __m512bh b[kVectors];
    for (int v = 0; v < kVectors; ++v)
      b[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(panel + (pair * width + 16 * v) * 2));
    for (int r = 0; r < kRows; ++r) {
      const __m512bh a_pair = reinterpret_cast<__m512bh>(_mm512_set1_epi32(a[r * a_stride + pair]));
      for (int v = 0; v < kVectors; ++v) sum[r][v] = _mm512_dpbf16_ps(sum[r][v], a_pair, b[v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) _mm512_storeu_ps(c + r * c_stride + 16 * v, sum[r][v]);
}

template <int kRows>
void DotRows(const uint32_t* a, int64_t a_stride, const uint16_t* panel, int64_t pairs,
             int64_t width, float* c, int64_t c_stride, bool accumulate) {
  switch (width / 16) {
    case 1: return DotBlock<kRows, 1>(a, a_stride, panel, pairs, c, c_stride, accumulate);
    case 2: return DotBlock<kRows, 2>(a, a_stride, panel, pairs, c, c_stride, accumulate);
    case 3: return DotBlock<kRows, 3>(a, a_stride, panel, pairs, c, c_stride, accumulate);
    default: return DotBlock<kRows, 4>(a, a_stride, panel, pairs, c, c_stride, accumulate);
  }
}

// c[rows, N] (= or +=) a[rows, K] . B, a in bfloat16 with rows K apart, c with rows N apart.
void Bfloat16Product(const uint16_t* a, int64_t rows, const PackedBfloat16& b, float* c, bool accumulate) {
  const int64_t pairs = b.pairs(), columns = b.columns();
  const uint32_t* a_pairs = reinterpret_cast<const uint32_t*>(a);
  for (int64_t first = 0; first < columns; first += kPanelColumns) {
    const int64_t width = b.PanelWidth(first);
    for (int64_t row = 0; row < rows; row += kBlockRows) {
      const uint32_t* a_block = a_pairs + row * pairs;
      float* c_block = c + row * columns + first;
      switch (std::min<int64_t>(kBlockRows, rows - row)) {
        case 1: DotRows<1>(a_block, pairs, b.Panel(first), pairs, width, c_block, columns, accumulate); break;
        case 2: DotRows<2>(a_block, pairs, b.Panel(first), pairs, width, c_block, columns, accumulate); break;
        case 3: DotRows<3>(a_block, pairs, b.Panel(first), pairs, width, c_block, columns, accumulate); break;
        default: DotRows<4>(a_block, pairs, b.Panel(first), pairs, width, c_block, columns, accumulate);
      }
    }
  }
}
#else
constexpr bool kHaveBfloat16Products = false;

void RowToBfloat16(const float*, int64_t, uint16_t*) {}
void Bfloat16Product(const uint16_t*, int64_t, const PackedBfloat16&, float*, bool) {}
#endif

bool UseBfloat16Products(bool requested, int64_t units) {
  return requested && kHaveBfloat16Products && units % 16 == 0;
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
  explicit LstmSequenceOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("bfloat16_products", &bfloat16_products_));
  }

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
    const float* kernel_data = kernel.flat<float>().data();
    ConstMatrix recurrent(kernel_data, units, 4 * units);
    const int64_t step_state = batch * units, step_gates = batch * 4 * units;
    const bool bfloat16 = UseBfloat16Products(bfloat16_products_, units);
    std::unique_ptr<PackedBfloat16> packed;
    if (bfloat16) {
      packed = std::make_unique<PackedBfloat16>(
          units, 4 * units, [&](int64_t k, int64_t n) { return kernel_data[k * 4 * units + n]; });
    }
    // The last step's h in bfloat16: a block's product reads its rows before its row pass
    // overwrites them.
    std::vector<uint16_t> h_bfloat16(bfloat16 ? step_state : 0);

    ForEachRowBlock(device, batch, [&](int64_t first, int64_t last) {
      for (int64_t t = 0; t < steps; ++t) {
        float* z = gates->flat<float>().data() + t * step_gates;
        const float* x_t = x_proj.flat<float>().data() + t * step_gates;
        const float* h_prev = t ? h->flat<float>().data() + (t - 1) * step_state : nullptr;
        const float* c_prev = t ? c->flat<float>().data() + (t - 1) * step_state : nullptr;
        float* h_t = h->flat<float>().data() + t * step_state;
        float* c_t = c->flat<float>().data() + t * step_state;
        Matrix z_block(z + first * 4 * units, last - first, 4 * units);
        if (!h_prev) {
          z_block.setZero();
        } else if (bfloat16) {
          Bfloat16Product(h_bfloat16.data() + first * units, last - first, *packed, z_block.data(), false);
        } else {
          z_block.noalias() = ConstMatrix(h_prev + first * units, last - first, units) * recurrent;
        }
        for (int64_t row = first; row < last; ++row) {
          ForwardRow(units, mask_data[t * batch + row] != 0.0f, x_t + row * 4 * units,
                     z + row * 4 * units, c_prev ? c_prev + row * units : nullptr,
                     h_prev ? h_prev + row * units : nullptr, c_t + row * units, h_t + row * units);
          if (bfloat16) RowToBfloat16(h_t + row * units, units, h_bfloat16.data() + row * units);
        }
      }
    });
  }

 private:
  bool bfloat16_products_;
};

class LstmSequenceGradOp : public OpKernel {
 public:
  explicit LstmSequenceGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("bfloat16_products", &bfloat16_products_));
  }

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
    const float* kernel_data = kernel.flat<float>().data();
    ConstMatrix recurrent(kernel_data, units, 4 * units);
    const int64_t step_state = batch * units, step_gates = batch * 4 * units;
    const bool bfloat16 = UseBfloat16Products(bfloat16_products_, units);
    std::unique_ptr<PackedBfloat16> packed_transpose;
    if (bfloat16) {
      packed_transpose = std::make_unique<PackedBfloat16>(
          4 * units, units, [&](int64_t k, int64_t n) { return kernel_data[n * 4 * units + k]; });
    }
    std::vector<uint16_t> dz_bfloat16(bfloat16 ? step_gates : 0);  // one step's dz

    ForEachRowBlock(device, batch, [&](int64_t first, int64_t last) {
      for (int64_t t = steps - 1; t >= 0; --t) {
        const float* gate_t = gates.flat<float>().data() + t * step_gates;
        const float* c_t = c.flat<float>().data() + t * step_state;
        const float* c_prev = t ? c.flat<float>().data() + (t - 1) * step_state : nullptr;
        const float* grad_h_t = grad_h.flat<float>().data() + t * step_state;
        float* dz = grad_x_proj->flat<float>().data() + t * step_gates;
        for (int64_t row = first; row < last; ++row) {
          BackwardRow(units, mask_data[t * batch + row] != 0.0f, gate_t + row * 4 * units,
                      c_t + row * units, c_prev ? c_prev + row * units : nullptr,
                      grad_h_t + row * units, dz + row * 4 * units, dh_next + row * units,
                      dc_next + row * units);
        }
        if (t == 0) break;
        // What reaches h_{t-1}: dz . recurrent^T, plus what padded rows passed through.
        if (bfloat16) {
          uint16_t* dz_rows = dz_bfloat16.data() + first * 4 * units;
          RowToBfloat16(dz + first * 4 * units, (last - first) * 4 * units, dz_rows);
          Bfloat16Product(dz_rows, last - first, *packed_transpose, dh_next + first * units, true);
        } else {
          Matrix next(dh_next + first * units, last - first, units);
          next.noalias() += ConstMatrix(dz + first * 4 * units, last - first, 4 * units) *
                            recurrent.transpose();
        }
      }
    });
  }

 private:
  bool bfloat16_products_;
};

REGISTER_KERNEL_BUILDER(Name("LstmSequence").Device(DEVICE_CPU), LstmSequenceOp);
REGISTER_KERNEL_BUILDER(Name("LstmSequenceGrad").Device(DEVICE_CPU), LstmSequenceGradOp);

}  // namespace
}  // namespace estimator_models
