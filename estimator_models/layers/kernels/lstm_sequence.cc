// A whole LSTM sequence in one op, forward and backward, for the CPU.
//
// Keras' LSTM inside a graph is a while loop of about ten small ops per time step and
// twice that in its gradient; at the sizes of this project each op does a few
// microseconds of work, so the executor's per-op cost and the separate passes over
// memory of every elementwise op bound the step (../../../BENCHMARKS.md). Here each
// step is one matrix product and one fused elementwise pass over the batch.
//
// Given `kernel`, the forward loop projects each step's inputs itself, in the same pass
// over the accumulators as the recurrent product, and the backward loop sums the input
// kernel's gradient: no [T, B, 4U] projection is written and read back, and no
// weight-gradient matmul reads all the gate gradients again. Without it the op takes
// x_proj = x_t @ kernel of all steps, one matmul before it (../fused_recurrent.py: wide
// inputs, and bfloat16 products). Given h, the backward loop also sums the recurrent
// kernel's gradient, 128 rows at a time while their gate gradients are in cache (in
// bfloat16 it is a matmul after the op). The bias is added inside the loop and its
// gradient summed there, where the gate gradients are in registers anyway: a separate
// reduction over them read the whole [T, B, 4U] tensor again.
//
// Gate order is Keras': i, f, c, o. A step whose mask is 0 carries the state through
// unchanged, as a masked Keras LSTM does.
//
// With `bfloat16_products` (precision=mixed_bfloat16, training only) each step's product
// with the recurrent kernel multiplies bfloat16 copies of h_{t-1} (or of the step's gate
// gradient) and of the kernel, accumulating in float32 (AVX512_BF16's VDPBF16PS, twice
// the multiply-adds of a float32 FMA per instruction); the state, the gates and every
// output stay float32. Where the build's CPU lacks AVX512_BF16, or units is not a
// multiple of 16, the products stay float32. With `bfloat16_outputs` the ops also hand
// over, in bfloat16, what the weight-gradient product after them reads: the forward op
// every step's h_{t-1}, the gradient op the gate gradients (in bfloat16 only). The
// bfloat16 products write these copies as their operands anyway; other paths round them
// at the end. x_proj may then be bfloat16 too, the projection matmul's own output.

#define EIGEN_USE_THREADS

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
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
    .Input("x_proj: Tx")               // [T, B, 4U] x_t @ kernel; with `kernel`, x itself [T, B, F] (float)
    .Input("recurrent_kernel: float")  // [U, 4U]
    .Input("bias: float")              // [4U]
    .Input("mask: float")              // [T, B] 1: the step counts, 0: carry the state
    .Input("kernel: float")            // [F, 4U] projecting x inside the loop, or [0]
    .Output("h: float")                // [T, B, U]
    .Output("c: float")                // [T, B, U]
    .Output("gates: float")            // [T, B, 4U] activated i, f, c~, o
    .Output("h_last: float")           // [B, U] h of the last step (zeros when T = 0)
    .Output("previous_h: bfloat16")    // [T, B, U] h_{t-1} at step t, zeros at t = 0; [0] unless bfloat16_outputs
    .Attr("Tx: {float, bfloat16} = DT_FLOAT")
    .Attr("bfloat16_products: bool = false")
    .Attr("bfloat16_outputs: bool = false")
    .SetShapeFn([](InferenceContext* context) {
      ShapeHandle x_proj, kernel;
      TF_RETURN_IF_ERROR(context->WithRank(context->input(0), 3, &x_proj));
      TF_RETURN_IF_ERROR(context->WithRank(context->input(1), 2, &kernel));
      bool bfloat16_outputs = false;
      TF_RETURN_IF_ERROR(context->GetAttr("bfloat16_outputs", &bfloat16_outputs));
      ShapeHandle state = context->MakeShape(
          {context->Dim(x_proj, 0), context->Dim(x_proj, 1), context->Dim(kernel, 0)});
      context->set_output(0, state);
      context->set_output(1, state);
      context->set_output(2, context->MakeShape({context->Dim(x_proj, 0), context->Dim(x_proj, 1),
                                                 context->Dim(kernel, 1)}));
      context->set_output(3, context->MakeShape({context->Dim(x_proj, 1), context->Dim(kernel, 0)}));
      context->set_output(4, bfloat16_outputs ? state : context->Vector(0));
      return Status();
    });

REGISTER_OP("LstmSequenceGrad")
    .Input("recurrent_kernel: float")  // [U, 4U]
    .Input("mask: float")              // [T, B]
    .Input("c: float")                 // [T, B, U] from LstmSequence
    .Input("gates: float")             // [T, B, 4U] from LstmSequence
    .Input("grad_h: float")            // [T, B, U], or [0]: no gradient reaches h
    .Input("grad_h_last: float")       // [B, U], or [0]: none reaches h_last
    .Input("x: float")                 // [T, B, F] that `kernel` projected, or [0]: no kernel gradient
    .Input("h: float")                 // [T, B, U] from LstmSequence, or [0]: no recurrent kernel gradient
    .Output("grad_x_proj: float")      // [T, B, 4U], or [0] with bfloat16_outputs
    .Output("grad_bias: float")        // [4U]
    .Output("grad_kernel: float")      // [F, 4U], or [0] when x is [0]
    .Output("grad_recurrent_kernel: float")  // [U, 4U], or [0] when h is [0]
    // grad_x_proj rounded, with bfloat16_outputs (grad_x_proj is then [0]); else [0]
    .Output("grad_x_proj_bfloat16: bfloat16")
    .Attr("bfloat16_products: bool = false")
    .Attr("bfloat16_outputs: bool = false")
    .SetShapeFn([](InferenceContext* context) {
      const auto gates = context->Dim(context->input(3), 2);
      bool bfloat16_outputs = false;
      TF_RETURN_IF_ERROR(context->GetAttr("bfloat16_outputs", &bfloat16_outputs));
      context->set_output(0, bfloat16_outputs ? context->Vector(0) : context->input(3));
      context->set_output(4, bfloat16_outputs ? context->input(3) : context->Vector(0));
      context->set_output(1, context->Vector(gates));
      const auto given = [&](int input) {
        ShapeHandle shape = context->input(input);
        return !(context->RankKnown(shape) && context->Rank(shape) == 1);
      };
      context->set_output(2, given(6) ? context->Matrix(context->Dim(context->input(6), -1), gates) : context->Vector(0));
      context->set_output(3, given(7) ? context->Matrix(context->Dim(context->input(0), 0), gates) : context->Vector(0));
      return Status();
    });

namespace {

void SpinPause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

int64_t RowBlocks(const Device& device, int64_t batch) {
  return std::max<int64_t>(1, std::min<int64_t>(device.numThreads(), batch / 8));
}

// Splits the batch into RowBlocks() blocks of rows, one per thread, and runs
// block_function(block, first, last) on each. Rows of a batch never interact, so each
// thread runs every step of its rows: one hand-off to the thread pool per op call. A
// hand-off per step, as this op first did, cost about as much as the step's products
// (waking the waiting thread each time).
//
// The calling thread runs block 0, then any block no pool thread has started yet, then
// waits for the rest spinning before it yields: a blocking wait let its core sleep, and
// waking it took tens of microseconds, at times hundreds (BENCHMARKS.md). A block's rows
// and partial sums do not depend on which thread runs it, so results stay the same.
template <typename BlockFunction>
void ForEachRowBlock(const Device& device, int64_t batch, BlockFunction block_function) {
  const int64_t blocks = RowBlocks(device, batch);
  const auto run = [&](int64_t block) { block_function(block, batch * block / blocks, batch * (block + 1) / blocks); };
  // Shared with the pool's tasks, which may start after this call has returned: a task
  // touches `run` only after claiming its block, and then this call waits for it.
  struct Claims {
    explicit Claims(int64_t blocks) : taken(new std::atomic<bool>[blocks]()) {}
    std::unique_ptr<std::atomic<bool>[]> taken;
    std::atomic<int64_t> running{0};  // blocks being run by pool threads
  };
  const auto claims = std::make_shared<Claims>(blocks);
  for (int64_t block = 1; block < blocks; ++block) {
    device.enqueueNoNotification([claims, block, &run] {
      claims->running.fetch_add(1);
      if (!claims->taken[block].exchange(true)) run(block);
      claims->running.fetch_sub(1);
    });
  }
  for (int64_t block = 0; block < blocks; ++block) {
    if (!claims->taken[block].exchange(true)) run(block);
  }
  constexpr int kSpins = 2000;  // about 0.1 ms of PAUSE
  for (int spins = 0; claims->running.load() != 0;) {
    if (spins < kSpins) {
      ++spins;
      SpinPause();
    } else {
      std::this_thread::yield();
    }
  }
}

Status CheckShapes(const TensorShape& x_proj, const TensorShape& kernel, const TensorShape& mask) {
  if (x_proj.dims() != 3 || kernel.dims() != 2 || mask.dims() != 2)
    return tensorflow::errors::InvalidArgument("LstmSequence: x_proj must be [T, B, 4U], "
                                               "recurrent_kernel [U, 4U], mask [T, B]");
  const int64_t units = kernel.dim_size(0);
  if (kernel.dim_size(1) != 4 * units || x_proj.dim_size(2) != 4 * units)
    return tensorflow::errors::InvalidArgument("LstmSequence: recurrent_kernel is ", kernel.DebugString(),
                                               " and x_proj ", x_proj.DebugString(),
                                               "; expected [U, 4U] and [T, B, 4U]");
  if (mask.dim_size(0) != x_proj.dim_size(0) || mask.dim_size(1) != x_proj.dim_size(1))
    return tensorflow::errors::InvalidArgument("LstmSequence: mask is ", mask.DebugString(), ", x_proj ",
                                               x_proj.DebugString());
  return Status();
}

// x [T, B, F] that input_kernel [F, 4U] projects inside the loop: the projection's shape
// is then checked as x_proj's.
Status CheckProjectedShapes(const Tensor& x, const Tensor& input_kernel, const Tensor& kernel, const Tensor& mask) {
  if (x.dims() != 3 || input_kernel.dims() != 2 || input_kernel.dim_size(0) != x.dim_size(2))
    return tensorflow::errors::InvalidArgument("LstmSequence: x is ", x.shape().DebugString(), " and kernel ",
                                               input_kernel.shape().DebugString(), "; expected [T, B, F] and [F, 4U]");
  return CheckShapes(TensorShape({x.dim_size(0), x.dim_size(1), input_kernel.dim_size(1)}), kernel.shape(),
                     mask.shape());
}

// [0]: the caller leaves out an optional input.
bool IsEmptyVector(const Tensor& tensor) { return tensor.dims() == 1 && tensor.NumElements() == 0; }

uint16_t ToBfloat16(float value) {  // round to nearest even, NaN kept a NaN
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

void RoundToBfloat16(const float* in, int64_t size, uint16_t* out) {
  for (int64_t i = 0; i < size; ++i) out[i] = ToBfloat16(in[i]);
}

void WidenBfloat16(const uint16_t* in, int64_t size, float* out) {
  for (int64_t i = 0; i < size; ++i) {
    const uint32_t bits = static_cast<uint32_t>(in[i]) << 16;
    std::memcpy(out + i, &bits, sizeof(bits));
  }
}

const uint16_t* Bfloat16Data(const Tensor& tensor) {
  return reinterpret_cast<const uint16_t*>(tensor.flat<Eigen::bfloat16>().data());
}

uint16_t* Bfloat16Data(Tensor* tensor) { return reinterpret_cast<uint16_t*>(tensor->flat<Eigen::bfloat16>().data()); }

// What one call of either op reads and writes, as flat arrays in the ops' layouts.
struct Sequence {
  int64_t steps, batch, units;
  const float* mask;    // [T, B]
  const float* kernel;  // [U, 4U]
  bool Counts(int64_t t, int64_t row) const { return mask[t * batch + row] != 0.0f; }
  int64_t StepState() const { return batch * units; }
  int64_t StepGates() const { return batch * 4 * units; }
};

struct Forward {
  Sequence sequence;
  const float* x_proj;  // [T, B, 4U], or null: the loop projects x
  const float* x;       // [T, B, F] with x_proj null
  const float* input_kernel;  // [F, 4U] with x
  int64_t features;     // F
  const float* bias;    // [4U]
  float* h;             // [T, B, U]
  float* c;             // [T, B, U]
  float* gates;         // [T, B, 4U] activated i, f, c~, o
  // x_proj in bfloat16 instead ([T, B, 4U]), read as it is: the AVX-512 loop only.
  const uint16_t* x_proj_bfloat16;
  // [T, B, U] bfloat16 h_{t-1} at step t, or null. The bfloat16 products write it as the
  // next step's operand; every other path leaves it to the op.
  uint16_t* previous_h;
};

struct Backward {
  Sequence sequence;
  const float* c;       // [T, B, U]
  const float* gates;   // [T, B, 4U]
  const float* grad_h;  // [T, B, U], or null: zeros
  float* grad_x_proj;   // [T, B, 4U], or null with grad_x_proj_bfloat16 and bfloat16 products
  // [T, B, 4U] the gate gradients rounded to bfloat16, or null. The bfloat16 products
  // write it as the next step's operand; every other path leaves it to the op.
  uint16_t* grad_x_proj_bfloat16;
  float* carried_h;     // [B, U] gradient that padded steps pass through to h_{t-1}
  float* carried_c;     // [B, U] gradient reaching c_t from step t + 1
  float* grad_bias;     // [RowBlocks, 4U] each row block's sum of its gate gradients
  // The input kernel's gradient is summed inside the loop, while each step's gate
  // gradients are in cache, when x (the op's inputs, [T, B, F]) is given.
  const float* x;
  int64_t features;
  float* kernel_sums;   // [RowBlocks, F, sums_width] sum over t of x_t^T . grad_x_proj_t
  // The recurrent kernel's gradient is summed inside the loop when h is given.
  const float* h;       // [T, B, U]
  float* recurrent_sums;  // [RowBlocks, U, sums_width] sum over t >= 1 of h_{t-1}^T . grad_x_proj_t
  int64_t sums_width;
};

// Zeroes a row block's partial sums, in the thread that adds to them: in parallel, and
// into that thread's cache.
void ZeroBlockSums(const Backward& op, int64_t block) {
  const int64_t gates = 4 * op.sequence.units;
  std::fill_n(op.grad_bias + block * gates, gates, 0.0f);
  std::fill_n(op.kernel_sums + block * op.features * op.sums_width, op.features * op.sums_width, 0.0f);
  if (op.h) {
    const int64_t size = op.sequence.units * op.sums_width;
    std::fill_n(op.recurrent_sums + block * size, size, 0.0f);
  }
}

#if defined(__AVX512F__)
// ---------------------------------------------------------------------------------------
// AVX-512: each step is, for every block of a few rows and every panel of the recurrent
// kernel's columns, one register-blocked product followed at once by the step's
// elementwise work on the block's results while they are in L1. The kernel is packed once
// per op call into panels that a block's product reads from L1, and the panels are laid
// out so that a forward panel holds the i, f, c~ and o columns of the same 16 units: the
// cell update of those units needs nothing else. No pass over the whole step's gates, no
// zero-filled product destination, no repacking per step.
// ---------------------------------------------------------------------------------------
constexpr int64_t kLanes = 16;                  // float32 lanes of an AVX-512 register
constexpr int64_t kPanelColumns = 4 * kLanes;   // columns of a packed panel
constexpr int kMaxBlockRows = 6;                // 6 x 4 accumulators leave 8 registers

__mmask16 LaneMask(int64_t width) {
  return width >= kLanes ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << width) - 1);
}

// exp(x) to about 2 ulp: x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor series to r^7.
// NaN stays NaN (MAXPS returns its second operand when either is NaN).
__m512 Exp(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 1 / x: the 14-bit estimate and one Newton step (about 1 ulp).
__m512 Reciprocal(__m512 x) {
  const __m512 estimate = _mm512_rcp14_ps(x);
  return _mm512_mul_ps(estimate, _mm512_fnmadd_ps(x, estimate, _mm512_set1_ps(2.0f)));
}

__m512 Sigmoid(__m512 x) {
  return Reciprocal(_mm512_add_ps(_mm512_set1_ps(1.0f), Exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

__m512 Tanh(__m512 x) {  // 2 sigmoid(2x) - 1: absolute error about 1e-7
  return _mm512_fmsub_ps(_mm512_set1_ps(2.0f), Sigmoid(_mm512_add_ps(x, x)), _mm512_set1_ps(1.0f));
}

// A kernel in float32 panels of 64 columns, each [depth][64] row-major (zero where a
// panel has fewer real columns), each written by fill_panel(panel, depth, out).
class PackedFloat32 {
 public:
  template <typename FillPanel>
  PackedFloat32(int64_t depth, int64_t panels, FillPanel fill_panel)
      : depth_(depth), data_(new float[depth * panels * kPanelColumns]) {
    for (int64_t panel = 0; panel < panels; ++panel) fill_panel(panel, depth, data_.get() + panel * depth * kPanelColumns);
  }
  int64_t depth() const { return depth_; }
  const float* Panel(int64_t panel) const { return data_.get() + panel * depth_ * kPanelColumns; }

 private:
  int64_t depth_;
  std::unique_ptr<float[]> data_;
};

// How many panel rows ahead a block product asks for the panel's lines. A backward panel
// (128 KiB at 128 units) lives in L2, and a forward one (32 KiB) shares L1 with the
// epilogue's reads and writes between two blocks; the hardware prefetchers did not keep
// up with 256 bytes a row (BENCHMARKS.md).
constexpr int64_t kPanelRowsAhead = 4;

// The accumulators of a block product: kRows rows of 4 vectors, one flat array that
// loops walk fully unrolled. As sum[kRows][4] in nested loops, gcc zeroed and stored them
// through the stack on every call: a tenth of a bfloat16 block's time at 64 pairs.
#define FOR_EACH_ACCUMULATOR _Pragma("GCC unroll 32") for (int i = 0; i < kRows * 4; ++i)

// row[v] += a * b[v] for the 4 vectors of a block row.
__attribute__((always_inline)) inline void MultiplyAdd(__m512* row, __m512 a, const __m512 (&b)[4]) {
  row[0] = _mm512_fmadd_ps(a, b[0], row[0]);
  row[1] = _mm512_fmadd_ps(a, b[1], row[1]);
  row[2] = _mm512_fmadd_ps(a, b[2], row[2]);
  row[3] = _mm512_fmadd_ps(a, b[3], row[3]);
}

// sum[kRows * 4 vectors] += a[kRows, depth] . panel[depth, 64], a's rows a_stride apart.
template <int kRows>
__attribute__((always_inline)) inline void MultiplyPanel(__m512 (&sum)[kRows * 4], const float* a, int64_t a_stride,
                                                         const float* panel, int64_t depth) {
  for (int64_t k = 0; k < depth; ++k) {
    const float* b_row = panel + k * kPanelColumns;
    const char* ahead =
        reinterpret_cast<const char*>(panel + std::min(k + kPanelRowsAhead, depth - 1) * kPanelColumns);
    for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    const __m512 b[4] = {_mm512_loadu_ps(b_row), _mm512_loadu_ps(b_row + 16), _mm512_loadu_ps(b_row + 32),
                         _mm512_loadu_ps(b_row + 48)};
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) MultiplyAdd(sum + 4 * r, _mm512_set1_ps(a[r * a_stride + k]), b);
  }
}

// out[kRows][64] = a[kRows, depth] . panel[depth, 64], a's rows a_stride apart.
template <int kRows>
void Float32Block(const float* a, int64_t a_stride, const float* panel, int64_t depth, float* out) {
  __m512 sum[kRows * 4];
  FOR_EACH_ACCUMULATOR sum[i] = _mm512_setzero_ps();
  MultiplyPanel<kRows>(sum, a, a_stride, panel, depth);
  FOR_EACH_ACCUMULATOR _mm512_storeu_ps(out + i / 4 * kPanelColumns + 16 * (i % 4), sum[i]);
}

// Calls block(std::integral_constant<int, rows>()) for rows in 1..kMaxBlockRows: a block
// product's row count is a template argument, so that its accumulators stay in registers.
template <typename Block>
__attribute__((always_inline)) inline void WithRows(int64_t rows, Block block) {
  switch (rows) {
    case 1: return block(std::integral_constant<int, 1>());
    case 2: return block(std::integral_constant<int, 2>());
    case 3: return block(std::integral_constant<int, 3>());
    case 4: return block(std::integral_constant<int, 4>());
    case 5: return block(std::integral_constant<int, 5>());
    default: return block(std::integral_constant<int, kMaxBlockRows>());
  }
}

void Float32Product(const float* a, int64_t a_stride, int64_t rows, const PackedFloat32& b, int64_t panel,
                    float* out) {
  WithRows(rows, [&](auto block_rows) {
    Float32Block<decltype(block_rows)::value>(a, a_stride, b.Panel(panel), b.depth(), out);
  });
}

// out[kRows][64] = x[kRows, x_depth] . x_panel + a[kRows, depth] . panel (a null: none):
// a step's input projection and recurrent product in one pass over the accumulators.
// Kept out of line: inlined into the forward loop, gcc spilled accumulators there.
template <int kRows>
__attribute__((noinline)) void Float32InputAndRecurrentBlock(const float* x, int64_t x_stride,
                                                             const float* x_panel, int64_t x_depth, const float* a,
                                                             int64_t a_stride, const float* panel, int64_t depth,
                                                             float* out) {
  __m512 sum[kRows * 4];
  FOR_EACH_ACCUMULATOR sum[i] = _mm512_setzero_ps();
  MultiplyPanel<kRows>(sum, x, x_stride, x_panel, x_depth);
  if (a) MultiplyPanel<kRows>(sum, a, a_stride, panel, depth);
  FOR_EACH_ACCUMULATOR _mm512_storeu_ps(out + i / 4 * kPanelColumns + 16 * (i % 4), sum[i]);
}

// sums[kRows][64] += a^T . b over `depth` rows k, where a(k, r) = a[k * a_stride + r *
// a_row_stride] and row k of b is b[k * b_stride ...]. A partial panel (kFull false)
// reads only the lanes `lanes` selects, none past b's end; a full one reads plain
// vectors: with masked loads in the loop gcc kept the sums on the stack.
template <int kRows, bool kFull>
void Float32AccumulateBlock(const float* a, int64_t a_stride, int64_t a_row_stride, const float* b, int64_t b_stride,
                            int64_t depth, const __mmask16 (&lanes)[4], float* sums, int64_t sums_stride) {
  const auto load = [&](const float* from, int v) {
    return kFull ? _mm512_loadu_ps(from) : _mm512_maskz_loadu_ps(lanes[v], from);
  };
  __m512 sum[kRows * 4];
  FOR_EACH_ACCUMULATOR sum[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < depth; ++k) {
    const float* b_row = b + k * b_stride;
    const __m512 b_k[4] = {load(b_row, 0), load(b_row + 16, 1), load(b_row + 32, 2), load(b_row + 48, 3)};
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) MultiplyAdd(sum + 4 * r, _mm512_set1_ps(a[k * a_stride + r * a_row_stride]), b_k);
  }
  // Added at the end: accumulators that start from memory, gcc stored back at every k.
  FOR_EACH_ACCUMULATOR {
    float* out = sums + i / 4 * sums_stride + 16 * (i % 4);
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), sum[i]));
  }
}

// bfloat16 products: VDPBF16PS multiplies pairs of bfloat16 (k, k+1) and adds both
// products to one float32 lane, so the kernel is packed with each (k, k+1) pair of a
// column side by side. PackedBfloat16 holds a PackedFloat32's panels that way, each
// [depth / 2][64][2].
class PackedBfloat16 {
 public:
  PackedBfloat16(const PackedFloat32& float32, int64_t panels)
      : pairs_(float32.depth() / 2), data_(float32.depth() * panels * kPanelColumns) {
    for (int64_t panel = 0; panel < panels; ++panel)
      for (int64_t k = 0; k < 2 * pairs_; ++k)
        for (int64_t column = 0; column < kPanelColumns; ++column)
          data_[((panel * pairs_ + k / 2) * kPanelColumns + column) * 2 + (k & 1)] =
              ToBfloat16(float32.Panel(panel)[k * kPanelColumns + column]);
  }
  int64_t pairs() const { return pairs_; }
  const uint16_t* Panel(int64_t panel) const { return data_.data() + panel * pairs_ * kPanelColumns * 2; }

 private:
  int64_t pairs_;
  std::vector<uint16_t> data_;
};

#if defined(__AVX512BF16__)
constexpr bool kHaveBfloat16Products = true;

void StoreBfloat16(uint16_t* out, __m512 values) {
  const __m256bh converted = _mm512_cvtneps_pbh(values);
  std::memcpy(out, &converted, sizeof(converted));
}

// out[kRows][64] = a[kRows, 2 * pairs] . panel, a in bfloat16 pairs a_stride pairs apart.
template <int kRows>
void Bfloat16Block(const uint32_t* a, int64_t a_stride, const uint16_t* panel, int64_t pairs, float* out) {
  __m512 sum[kRows * 4];
  FOR_EACH_ACCUMULATOR sum[i] = _mm512_setzero_ps();
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const uint16_t* row = panel + pair * kPanelColumns * 2;
    const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_ps(row)),
                   b1 = reinterpret_cast<__m512bh>(_mm512_loadu_ps(row + 32)),
                   b2 = reinterpret_cast<__m512bh>(_mm512_loadu_ps(row + 64)),
                   b3 = reinterpret_cast<__m512bh>(_mm512_loadu_ps(row + 96));
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512bh a_pair =
          reinterpret_cast<__m512bh>(_mm512_castsi512_ps(_mm512_set1_epi32(a[r * a_stride + pair])));
      sum[4 * r] = _mm512_dpbf16_ps(sum[4 * r], a_pair, b0);
      sum[4 * r + 1] = _mm512_dpbf16_ps(sum[4 * r + 1], a_pair, b1);
      sum[4 * r + 2] = _mm512_dpbf16_ps(sum[4 * r + 2], a_pair, b2);
      sum[4 * r + 3] = _mm512_dpbf16_ps(sum[4 * r + 3], a_pair, b3);
    }
  }
  FOR_EACH_ACCUMULATOR _mm512_storeu_ps(out + i / 4 * kPanelColumns + 16 * (i % 4), sum[i]);
}

void Bfloat16Product(const uint16_t* a, int64_t a_stride, int64_t rows, const PackedBfloat16& b,
                     int64_t panel, float* out) {
  const uint32_t* pairs = reinterpret_cast<const uint32_t*>(a);
  WithRows(rows, [&](auto block_rows) {
    Bfloat16Block<decltype(block_rows)::value>(pairs, a_stride / 2, b.Panel(panel), b.pairs(), out);
  });
}
#else
constexpr bool kHaveBfloat16Products = false;

void StoreBfloat16(uint16_t*, __m512) {}
void Bfloat16Product(const uint16_t*, int64_t, int64_t, const PackedBfloat16&, int64_t, float*) {}
#endif

// The AVX-512 forward loop reads a bfloat16 x_proj as it is.
constexpr bool kReadsBfloat16Inputs = true;

bool UseBfloat16Products(bool requested, int64_t units) {
  return requested && kHaveBfloat16Products && units % 16 == 0;
}

// Where the bfloat16 operands of every step go when the op outputs them: step t's at
// slot t + shift of `steps` slots (past the last slot: nowhere, no step reads them).
struct KeptOperands {
  uint16_t* data = nullptr;  // [steps, operand_size]
  int64_t steps = 0, shift = 0;
};

// The recurrent kernel packed for one op call: in float32, or in bfloat16 with each
// thread's operand rows (h_{t-1} or the gate gradients) kept in bfloat16 as well: in the
// op's bfloat16 output where it has one, else in two buffers of their own that alternate
// between steps (a step reads the one its previous step wrote).
class StepProducts {
 public:
  template <typename FillPanel>
  StepProducts(bool bfloat16, int64_t depth, int64_t panels, int64_t operand_size, KeptOperands kept,
               FillPanel fill_panel)
      : float32_(std::make_unique<PackedFloat32>(depth, panels, fill_panel)), operand_size_(operand_size),
        kept_(kept) {
    if (bfloat16) {
      bfloat16_ = std::make_unique<PackedBfloat16>(*float32_, panels);
      float32_.reset();
      if (!kept.data)
        for (auto& buffer : operands_) buffer.resize(operand_size);
    }
  }
  bool bfloat16() const { return bfloat16_ != nullptr; }
  // The bfloat16 copy of step t's operands, for the epilogue writing them; null where
  // nothing keeps them.
  uint16_t* Operands(int64_t t) {
    if (!bfloat16()) return nullptr;
    if (!kept_.data) return operands_[t & 1].data();
    const int64_t slot = t + kept_.shift;
    return slot < kept_.steps ? kept_.data + slot * operand_size_ : nullptr;
  }
  // out[rows][64] = x rows (x_stride apart) times panel `panel` of `x_panels`, plus the
  // rows of h_{t-1} at `a` (null at the first step) times the recurrent panel. Float32
  // products only.
  void InputAndRecurrentProduct(const float* x, int64_t x_stride, const PackedFloat32& x_panels, const float* a,
                                int64_t a_stride, int64_t rows, int64_t panel, float* out) {
    WithRows(rows, [&](auto block_rows) {
      Float32InputAndRecurrentBlock<decltype(block_rows)::value>(x, x_stride, x_panels.Panel(panel),
                                                                 x_panels.depth(), a, a_stride,
                                                                 float32_->Panel(panel), float32_->depth(), out);
    });
  }
  // out[rows][64] = operand rows (float32 at `a`, or their bfloat16 copy from step t at
  // `offset`), a_stride apart, times panel `panel`.
  void Product(int64_t t, const float* a, int64_t offset, int64_t a_stride, int64_t rows, int64_t panel,
               float* out) {
    if (bfloat16()) {
      Bfloat16Product(Operands(t) + offset, a_stride, rows, *bfloat16_, panel, out);
    } else {
      Float32Product(a, a_stride, rows, *float32_, panel, out);
    }
  }

 private:
  std::unique_ptr<PackedFloat32> float32_;
  std::unique_ptr<PackedBfloat16> bfloat16_;
  const int64_t operand_size_;
  const KeptOperands kept_;
  std::vector<uint16_t> operands_[2];
};

// The lanes `lanes` selects of 16 bfloat16 values at `from`, widened to float32 (exact).
__m512 LoadBfloat16(const uint16_t* from, __mmask16 lanes) {
  __m256i bits;
  if (lanes == 0xffff) {
    bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
  } else {  // the last panel of units that are not a multiple of 16: read none past them
    alignas(32) uint16_t part[kLanes] = {};
    for (int lane = 0; lane < kLanes; ++lane)
      if (lanes >> lane & 1) part[lane] = from[lane];
    bits = _mm256_load_si256(reinterpret_cast<const __m256i*>(part));
  }
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// One row's 16 (or, in the last panel, `width`) units of forward step t: `product` holds
// h_{t-1} . recurrent for the row's i, f, c~, o columns of those units (zero at t = 0),
// plus x_t . kernel where the loop projects x.
void ForwardUnits(const Forward& op, int64_t t, int64_t row, int64_t unit, int64_t width,
                  const float* product, uint16_t* h_bfloat16) {
  const Sequence& s = op.sequence;
  const __mmask16 lanes = LaneMask(width);
  const int64_t gates_at = (t * s.batch + row) * 4 * s.units + unit;
  const int64_t state_at = (t * s.batch + row) * s.units + unit;
  __m512 gate[4];
  for (int g = 0; g < 4; ++g) {
    const __m512 bias = _mm512_maskz_loadu_ps(lanes, op.bias + g * s.units + unit);
    __m512 z = _mm512_add_ps(_mm512_loadu_ps(product + 16 * g), bias);
    if (op.x_proj) z = _mm512_add_ps(z, _mm512_maskz_loadu_ps(lanes, op.x_proj + gates_at + g * s.units));
    if (op.x_proj_bfloat16) z = _mm512_add_ps(z, LoadBfloat16(op.x_proj_bfloat16 + gates_at + g * s.units, lanes));
    gate[g] = g == 2 ? Tanh(z) : Sigmoid(z);
    _mm512_mask_storeu_ps(op.gates + gates_at + g * s.units, lanes, gate[g]);
  }
  const bool first = t == 0;
  const __m512 c_prev = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(lanes, op.c + state_at - s.StepState());
  __m512 c, h;
  if (s.Counts(t, row)) {
    c = _mm512_fmadd_ps(gate[1], c_prev, _mm512_mul_ps(gate[0], gate[2]));
    h = _mm512_mul_ps(gate[3], Tanh(c));
  } else {  // padding: the state passes through untouched
    c = c_prev;
    h = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(lanes, op.h + state_at - s.StepState());
  }
  _mm512_mask_storeu_ps(op.c + state_at, lanes, c);
  _mm512_mask_storeu_ps(op.h + state_at, lanes, h);
  if (h_bfloat16) StoreBfloat16(h_bfloat16 + row * s.units + unit, h);
}

// One row's units [unit, unit + width) of backward step t, width <= 64: `product` holds
// the part of the gradient reaching h_t through step t + 1's recurrent product (null at
// the last step). Writes the step's gate gradients and carries what reaches c_{t-1}
// and, through padding, h_{t-1}.
void BackwardUnits(const Backward& op, int64_t block, int64_t t, int64_t row, int64_t unit, int64_t width,
                   const float* product, uint16_t* dz_bfloat16) {
  const Sequence& s = op.sequence;
  const bool counts = s.Counts(t, row);
  const int64_t gates_at = (t * s.batch + row) * 4 * s.units;
  const int64_t state_at = (t * s.batch + row) * s.units;
  for (int64_t v = 0; v * kLanes < width; ++v) {
    const int64_t u = unit + v * kLanes;
    const __mmask16 lanes = LaneMask(width - v * kLanes);
    float* carried_h = op.carried_h + row * s.units + u;
    float* carried_c = op.carried_c + row * s.units + u;
    __m512 dh = _mm512_maskz_loadu_ps(lanes, carried_h);
    if (op.grad_h) dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(lanes, op.grad_h + state_at + u));
    if (product) dh = _mm512_add_ps(dh, _mm512_loadu_ps(product + v * kLanes));
    float* dz = op.grad_x_proj ? op.grad_x_proj + gates_at + u : nullptr;
    if (!counts) {  // padding passed h and c through: so does their gradient
      if (dz)
        for (int g = 0; g < 4; ++g) _mm512_mask_storeu_ps(dz + g * s.units, lanes, _mm512_setzero_ps());
      _mm512_mask_storeu_ps(carried_h, lanes, dh);
      if (dz_bfloat16)
        for (int g = 0; g < 4; ++g) StoreBfloat16(dz_bfloat16 + row * 4 * s.units + g * s.units + u, _mm512_setzero_ps());
      continue;
    }
    const float* gate = op.gates + gates_at + u;
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 i = _mm512_maskz_loadu_ps(lanes, gate), f = _mm512_maskz_loadu_ps(lanes, gate + s.units),
                 g = _mm512_maskz_loadu_ps(lanes, gate + 2 * s.units),
                 o = _mm512_maskz_loadu_ps(lanes, gate + 3 * s.units);
    const __m512 tanh_c = Tanh(_mm512_maskz_loadu_ps(lanes, op.c + state_at + u));
    const __m512 c_prev = t ? _mm512_maskz_loadu_ps(lanes, op.c + state_at - s.StepState() + u) : _mm512_setzero_ps();
    const __m512 d_o = _mm512_mul_ps(_mm512_mul_ps(dh, tanh_c), _mm512_mul_ps(o, _mm512_sub_ps(one, o)));
    const __m512 dc = _mm512_fmadd_ps(_mm512_mul_ps(dh, o), _mm512_fnmadd_ps(tanh_c, tanh_c, one),
                                      _mm512_maskz_loadu_ps(lanes, carried_c));
    const __m512 df = _mm512_mul_ps(_mm512_mul_ps(dc, c_prev), _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
    const __m512 di = _mm512_mul_ps(_mm512_mul_ps(dc, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
    const __m512 dg = _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one));
    const __m512 gradients[4] = {di, df, dg, d_o};
    float* grad_bias = op.grad_bias + block * 4 * s.units + u;
    for (int gate_index = 0; gate_index < 4; ++gate_index) {
      if (dz) _mm512_mask_storeu_ps(dz + gate_index * s.units, lanes, gradients[gate_index]);
      float* sum = grad_bias + gate_index * s.units;
      _mm512_mask_storeu_ps(sum, lanes, _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, sum), gradients[gate_index]));
      if (dz_bfloat16) StoreBfloat16(dz_bfloat16 + row * 4 * s.units + gate_index * s.units + u, gradients[gate_index]);
    }
    _mm512_mask_storeu_ps(carried_c, lanes, _mm512_mul_ps(dc, f));
    _mm512_mask_storeu_ps(carried_h, lanes, _mm512_setzero_ps());
  }
}

int64_t CeilDiv(int64_t value, int64_t divisor) { return (value + divisor - 1) / divisor; }

// A row of the kernel-gradient sums holds whole panels of columns: a block reads and
// writes all 64.
int64_t SumsWidth(int64_t columns) { return CeilDiv(columns, kPanelColumns) * kPanelColumns; }

// Asks for the x_proj lines that the block of `rows` rows from `row` reads at step t for
// the 16 units from `unit`. x_proj was written by another op: its lines are in L3 or
// memory, one row's 2 KiB apart, too scattered for the hardware prefetchers, and the
// epilogue otherwise waits for each. Issued one block ahead, they arrive during the
// block's product.
void PrefetchForwardInputs(const Forward& op, int64_t t, int64_t row, int64_t rows, int64_t unit) {
  const Sequence& s = op.sequence;
  for (int64_t r = row; r < row + rows; ++r)
    for (int64_t gate = 0; gate < 4; ++gate) {
      const int64_t at = (t * s.batch + r) * 4 * s.units + gate * s.units + unit;
      const void* line = op.x_proj ? static_cast<const void*>(op.x_proj + at) : op.x_proj_bfloat16 + at;
      _mm_prefetch(static_cast<const char*>(line), _MM_HINT_T0);
    }
}

// The x_proj lines of the block after the one of `rows` rows from `row` in panel `panel`
// of step t: the next rows, else the first rows of the next panel or step.
void PrefetchNextBlockInputs(const Forward& op, int64_t t, int64_t row, int64_t rows, int64_t first, int64_t last,
                             int64_t panel, int64_t panels) {
  const int64_t first_rows = std::min<int64_t>(kMaxBlockRows, last - first);
  if (row + rows < last) {
    PrefetchForwardInputs(op, t, row + rows, std::min<int64_t>(kMaxBlockRows, last - row - rows), panel * kLanes);
  } else if (panel + 1 < panels) {
    PrefetchForwardInputs(op, t, first, first_rows, (panel + 1) * kLanes);
  } else if (t + 1 < op.sequence.steps) {
    PrefetchForwardInputs(op, t + 1, first, first_rows, 0);
  }
}

void RunForward(const Device& device, const Forward& op, bool bfloat16) {
  const Sequence& s = op.sequence;
  const int64_t units = s.units, panels = CeilDiv(units, kLanes);
  // Forward panel p of a kernel [depth, 4U]: the i, f, c~, o columns (16 each) of units
  // [16p, 16p + 16).
  const auto forward_panels = [&](const float* kernel) {
    return [=](int64_t panel, int64_t depth, float* out) {
      const int64_t unit = panel * kLanes;
      const __mmask16 lanes = LaneMask(units - unit);
      for (int64_t k = 0; k < depth; ++k)
        for (int64_t gate = 0; gate < 4; ++gate)
          _mm512_storeu_ps(out + k * kPanelColumns + gate * kLanes,
                           _mm512_maskz_loadu_ps(lanes, kernel + k * 4 * units + gate * units + unit));
    };
  };
  // Step t's bfloat16 h is step t + 1's operand: slot t + 1 of previous_h.
  StepProducts products(bfloat16, units, panels, s.StepState(), KeptOperands{op.previous_h, s.steps, 1},
                        forward_panels(s.kernel));
  std::unique_ptr<PackedFloat32> input_panels;
  if (op.x) input_panels = std::make_unique<PackedFloat32>(op.features, panels, forward_panels(op.input_kernel));
  ForEachRowBlock(device, s.batch, [&](int64_t, int64_t first, int64_t last) {
    alignas(64) float product[kMaxBlockRows * kPanelColumns] = {};
    for (int64_t t = 0; t < s.steps; ++t) {
      const float* h_prev = t ? op.h + (t - 1) * s.StepState() : nullptr;
      for (int64_t panel = 0; panel < panels; ++panel) {
        const int64_t unit = panel * kLanes, width = std::min(kLanes, units - unit);
        for (int64_t row = first; row < last; row += kMaxBlockRows) {
          const int64_t rows = std::min<int64_t>(kMaxBlockRows, last - row);
          if (!op.x) PrefetchNextBlockInputs(op, t, row, rows, first, last, panel, panels);
          if (op.x) {
            products.InputAndRecurrentProduct(op.x + (t * s.batch + row) * op.features, op.features, *input_panels,
                                              t ? h_prev + row * units : nullptr, units, rows, panel, product);
          } else if (t) {
            products.Product(t - 1, h_prev + row * units, row * units, units, rows, panel, product);
          }
          for (int64_t r = 0; r < rows; ++r)
            ForwardUnits(op, t, row + r, unit, width, product + r * kPanelColumns, products.Operands(t));
        }
      }
    }
  });
}

// sums[m][width] += a^T . b over `depth` rows: a [depth, m] and b [depth, n], their rows
// a_stride and b_stride apart.
void AccumulateTransposedProduct(const float* a, int64_t a_stride, int64_t m, const float* b, int64_t b_stride,
                                 int64_t n, int64_t depth, float* sums, int64_t width) {
  for (int64_t column = 0; column < n; column += kPanelColumns) {
    __mmask16 lanes[4];
    for (int v = 0; v < 4; ++v) lanes[v] = LaneMask(std::max<int64_t>(0, n - column - v * kLanes));
    const bool full = n - column >= kPanelColumns;
    for (int64_t row = 0; row < m; row += kMaxBlockRows) {
      WithRows(std::min<int64_t>(kMaxBlockRows, m - row), [&](auto rows) {
        constexpr int kRows = decltype(rows)::value;
        (full ? Float32AccumulateBlock<kRows, true> : Float32AccumulateBlock<kRows, false>)(
            a + row, a_stride, 1, b + column, b_stride, depth, lanes, sums + row * width + column, width);
      });
    }
  }
}

// Adds x_t^T . grad_x_proj_t of rows [first, last) to the row block's kernel sums.
void AccumulateKernelGradient(const Backward& op, int64_t block, int64_t t, int64_t first, int64_t last) {
  const Sequence& s = op.sequence;
  const int64_t gates = 4 * s.units;
  AccumulateTransposedProduct(op.x + (t * s.batch + first) * op.features, op.features, op.features,
                              op.grad_x_proj + (t * s.batch + first) * gates, gates, gates, last - first,
                              op.kernel_sums + block * op.features * op.sums_width, op.sums_width);
}

// out[c * out_stride + r] = in[r * in_stride + c] for a 16 x 16 tile, in registers: rows
// interleaved in pairs by one lane, then by two, four and eight.
void Transpose16(const float* in, int64_t in_stride, float* out, int64_t out_stride) {
  __m512 row[16], mixed[16];
  for (int i = 0; i < 16; ++i) row[i] = _mm512_loadu_ps(in + i * in_stride);
  for (int i = 0; i < 16; i += 2) {
    mixed[i] = _mm512_unpacklo_ps(row[i], row[i + 1]);
    mixed[i + 1] = _mm512_unpackhi_ps(row[i], row[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    row[i] = _mm512_shuffle_ps(mixed[i], mixed[i + 2], 0x44);
    row[i + 1] = _mm512_shuffle_ps(mixed[i], mixed[i + 2], 0xee);
    row[i + 2] = _mm512_shuffle_ps(mixed[i + 1], mixed[i + 3], 0x44);
    row[i + 3] = _mm512_shuffle_ps(mixed[i + 1], mixed[i + 3], 0xee);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      mixed[i + j] = _mm512_shuffle_f32x4(row[i + j], row[i + j + 4], 0x88);
      mixed[i + j + 4] = _mm512_shuffle_f32x4(row[i + j], row[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    row[j] = _mm512_shuffle_f32x4(mixed[j], mixed[j + 8], 0x88);
    row[j + 8] = _mm512_shuffle_f32x4(mixed[j], mixed[j + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(out + i * out_stride, row[i]);
}

// out[c * out_stride + r] = in[r * in_stride + c] for r < rows, c < columns: whole 16 x 16
// tiles in registers, the edges element by element.
void Transpose(const float* in, int64_t in_stride, int64_t rows, int64_t columns, float* out, int64_t out_stride) {
  const int64_t tiled_rows = rows / kLanes * kLanes, tiled_columns = columns / kLanes * kLanes;
  for (int64_t r = 0; r < tiled_rows; r += kLanes)
    for (int64_t c = 0; c < tiled_columns; c += kLanes)
      Transpose16(in + r * in_stride + c, in_stride, out + c * out_stride + r, out_stride);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = r < tiled_rows ? tiled_columns : 0; c < columns; ++c) out[c * out_stride + r] = in[r * in_stride + c];
}

// out[p * panel_stride + r * 64 + c] = in[r * in_stride + 64p + c] for c < 64 within
// `columns`, zero beyond: each row's panels, read in order.
void PackPanels(const float* in, int64_t in_stride, int64_t rows, int64_t columns, float* out, int64_t panel_stride) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t column = 0; column < SumsWidth(columns); column += kLanes) {
      const __m512 values =
          _mm512_maskz_loadu_ps(LaneMask(std::max<int64_t>(0, columns - column)), in + r * in_stride + column);
      const int64_t panel = column / kPanelColumns;
      _mm512_storeu_ps(out + panel * panel_stride + r * kPanelColumns + column % kPanelColumns, values);
    }
}

// Rows of h and of the gate gradients that the recurrent kernel's gradient takes at a
// time: a panel's packed copy of them (32 KiB) stays in L1 while every block of units
// reads it.
constexpr int64_t kGradientChunkRows = 128;

// The row block's sum over t >= 1 of h_{t-1}^T . dz_t, added to its recurrent kernel
// sums a chunk of rows at a time as the backward loop writes each step's dz (still in
// cache): h's rows copied transposed (a block of units then reads each unit's values in
// order) and dz's packed by panel (in place a panel's rows are 2 KiB apart at 128 units,
// and a chunk of them would crowd into two L1 sets).
class RecurrentKernelGradient {
 public:
  RecurrentKernelGradient(const Backward& op, int64_t block)
      : op_(op),
        units_(op.sequence.units),
        panels_(CeilDiv(4 * units_, kPanelColumns)),
        sums_(op.recurrent_sums + block * units_ * op.sums_width),
        transposed_(new float[units_ * kGradientChunkRows]),
        packed_(new float[panels_ * kPanelSize]) {}

  // Rows [first, last) of step t >= 1, whose dz the loop has written.
  void Add(int64_t t, int64_t first, int64_t last) {
    const Sequence& s = op_.sequence;
    const int64_t columns = 4 * units_;
    for (int64_t row = first; row < last;) {
      const int64_t rows = std::min(last - row, kGradientChunkRows - depth_);
      Transpose(op_.h + ((t - 1) * s.batch + row) * units_, units_, rows, units_, transposed_.get() + depth_,
                kGradientChunkRows);
      PackPanels(op_.grad_x_proj + (t * s.batch + row) * columns, columns, rows, columns,
                 packed_.get() + depth_ * kPanelColumns, kPanelSize);
      depth_ += rows;
      row += rows;
      if (depth_ == kGradientChunkRows) Flush();
    }
  }

  // Adds the rows copied so far to the sums.
  void Flush() {
    const __mmask16 all_lanes[4] = {0xffff, 0xffff, 0xffff, 0xffff};
    for (int64_t panel = 0; panel < panels_; ++panel) {
      const int64_t column = panel * kPanelColumns;
      for (int64_t unit = 0; unit < units_; unit += kMaxBlockRows) {
        WithRows(std::min<int64_t>(kMaxBlockRows, units_ - unit), [&](auto rows_in_block) {
          Float32AccumulateBlock<decltype(rows_in_block)::value, true>(
              transposed_.get() + unit * kGradientChunkRows, 1, kGradientChunkRows,
              packed_.get() + panel * kPanelSize, kPanelColumns, depth_, all_lanes,
              sums_ + unit * op_.sums_width + column, op_.sums_width);
        });
      }
    }
    depth_ = 0;
  }

 private:
  static constexpr int64_t kPanelSize = kGradientChunkRows * kPanelColumns;
  const Backward& op_;
  const int64_t units_, panels_;
  float* const sums_;
  // Written before they are read: rows [0, depth_) of each.
  std::unique_ptr<float[]> transposed_;  // [U][kGradientChunkRows]
  std::unique_ptr<float[]> packed_;      // [panels][kGradientChunkRows][64]
  int64_t depth_ = 0;              // rows copied and not yet added
};

void RunBackward(const Device& device, const Backward& op, bool bfloat16) {
  const Sequence& s = op.sequence;
  const int64_t units = s.units, panels = CeilDiv(units, kPanelColumns);
  // Backward panel p: columns [64p, 64p + 64) of recurrent^T, [4U, U].
  const auto backward_panels = [&](int64_t panel, int64_t depth, float* out) {
    const int64_t unit = panel * kPanelColumns, width = std::min(kPanelColumns, units - unit);
    Transpose(s.kernel + unit * depth, depth, width, depth, out, kPanelColumns);
    if (width < kPanelColumns) {
      for (int64_t k = 0; k < depth; ++k) std::fill(out + k * kPanelColumns + width, out + (k + 1) * kPanelColumns, 0.0f);
    }
  };
  // Step t's bfloat16 gate gradients: slot t of grad_x_proj_bfloat16.
  StepProducts products(bfloat16, 4 * units, panels, s.StepGates(), KeptOperands{op.grad_x_proj_bfloat16, s.steps, 0},
                        backward_panels);
  ForEachRowBlock(device, s.batch, [&](int64_t block, int64_t first, int64_t last) {
    ZeroBlockSums(op, block);
    alignas(64) float product[kMaxBlockRows * kPanelColumns];
    std::unique_ptr<RecurrentKernelGradient> recurrent_gradient;
    if (op.h) recurrent_gradient = std::make_unique<RecurrentKernelGradient>(op, block);
    const int64_t last_step = s.steps - 1;
    for (int64_t row = first; row < last; ++row)
      for (int64_t unit = 0; unit < units; unit += kPanelColumns)
        BackwardUnits(op, block, last_step, row, unit, std::min(kPanelColumns, units - unit), nullptr,
                      products.Operands(last_step));
    if (op.x) AccumulateKernelGradient(op, block, last_step, first, last);
    if (recurrent_gradient && last_step > 0) recurrent_gradient->Add(last_step, first, last);
    for (int64_t t = last_step; t > 0; --t) {
      // Read in float32 only by float32 products; bfloat16 ones read their own copy.
      const float* dz = products.bfloat16() ? nullptr : op.grad_x_proj + t * s.StepGates();
      for (int64_t panel = 0; panel < panels; ++panel) {
        const int64_t unit = panel * kPanelColumns, width = std::min(kPanelColumns, units - unit);
        for (int64_t row = first; row < last; row += kMaxBlockRows) {
          const int64_t rows = std::min<int64_t>(kMaxBlockRows, last - row);
          products.Product(t, dz ? dz + row * 4 * units : nullptr, row * 4 * units, 4 * units, rows, panel, product);
          for (int64_t r = 0; r < rows; ++r)
            BackwardUnits(op, block, t - 1, row + r, unit, width, product + r * kPanelColumns, products.Operands(t - 1));
        }
      }
      if (op.x) AccumulateKernelGradient(op, block, t - 1, first, last);
      if (recurrent_gradient && t > 1) recurrent_gradient->Add(t - 1, first, last);
    }
    if (recurrent_gradient) recurrent_gradient->Flush();
  });
}

#else
// ---------------------------------------------------------------------------------------
// Without AVX-512: each step's product with Eigen, then one elementwise pass per row.
// ---------------------------------------------------------------------------------------
bool UseBfloat16Products(bool, int64_t) { return false; }
constexpr bool kReadsBfloat16Inputs = false;
int64_t SumsWidth(int64_t columns) { return columns; }

// One row of one forward step. z holds x_t's projection plus h_{t-1} . recurrent on
// entry and the activated gates on exit; c_prev and h_prev are null at the first step
// (a zero state).
void ForwardRow(int64_t units, bool counts, const float* bias, float* z, const float* c_prev, const float* h_prev,
                float* c_row_data, float* h_row_data) {
  Vector zi(z, units), zf(z + units, units), zc(z + 2 * units, units), zo(z + 3 * units, units);
  zi = (zi + ConstVector(bias, units)).logistic();
  zf = (zf + ConstVector(bias + units, units)).logistic();
  zc = (zc + ConstVector(bias + 2 * units, units)).tanh();
  zo = (zo + ConstVector(bias + 3 * units, units)).logistic();
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
                 float* dc_data, float* grad_bias) {
  Vector dh(dh_data, units), dc(dc_data, units);
  if (grad_h_row) dh += ConstVector(grad_h_row, units);
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
  Vector(grad_bias, 4 * units) += ConstVector(dz, 4 * units);
}

void RunForward(const Device& device, const Forward& op, bool) {
  const Sequence& s = op.sequence;
  const int64_t units = s.units;
  ConstMatrix recurrent(s.kernel, units, 4 * units);
  ForEachRowBlock(device, s.batch, [&](int64_t, int64_t first, int64_t last) {
    for (int64_t t = 0; t < s.steps; ++t) {
      float* z = op.gates + t * s.StepGates();
      const float* h_prev = t ? op.h + (t - 1) * s.StepState() : nullptr;
      const float* c_prev = t ? op.c + (t - 1) * s.StepState() : nullptr;
      float* h_t = op.h + t * s.StepState();
      float* c_t = op.c + t * s.StepState();
      Matrix z_block(z + first * 4 * units, last - first, 4 * units);
      if (op.x_proj) {
        z_block = ConstMatrix(op.x_proj + t * s.StepGates() + first * 4 * units, last - first, 4 * units);
      } else {
        z_block.noalias() = ConstMatrix(op.x + (t * s.batch + first) * op.features, last - first, op.features) *
                            ConstMatrix(op.input_kernel, op.features, 4 * units);
      }
      if (h_prev) z_block.noalias() += ConstMatrix(h_prev + first * units, last - first, units) * recurrent;
      for (int64_t row = first; row < last; ++row) {
        ForwardRow(units, s.Counts(t, row), op.bias, z + row * 4 * units,
                   c_prev ? c_prev + row * units : nullptr, h_prev ? h_prev + row * units : nullptr,
                   c_t + row * units, h_t + row * units);
      }
    }
  });
}

void RunBackward(const Device& device, const Backward& op, bool) {
  const Sequence& s = op.sequence;
  const int64_t units = s.units;
  ConstMatrix recurrent(s.kernel, units, 4 * units);
  ForEachRowBlock(device, s.batch, [&](int64_t block, int64_t first, int64_t last) {
    ZeroBlockSums(op, block);
    for (int64_t t = s.steps - 1; t >= 0; --t) {
      const float* gate_t = op.gates + t * s.StepGates();
      const float* c_t = op.c + t * s.StepState();
      const float* c_prev = t ? op.c + (t - 1) * s.StepState() : nullptr;
      const float* grad_h_t = op.grad_h ? op.grad_h + t * s.StepState() : nullptr;
      float* dz = op.grad_x_proj + t * s.StepGates();
      for (int64_t row = first; row < last; ++row) {
        BackwardRow(units, s.Counts(t, row), gate_t + row * 4 * units, c_t + row * units,
                    c_prev ? c_prev + row * units : nullptr, grad_h_t ? grad_h_t + row * units : nullptr, dz + row * 4 * units,
                    op.carried_h + row * units, op.carried_c + row * units, op.grad_bias + block * 4 * units);
      }
      if (op.x) {
        Matrix(op.kernel_sums + block * op.features * 4 * units, op.features, 4 * units).noalias() +=
            ConstMatrix(op.x + (t * s.batch + first) * op.features, last - first, op.features).transpose() *
            ConstMatrix(dz + first * 4 * units, last - first, 4 * units);
      }
      if (t == 0) break;
      if (op.h) {
        Matrix(op.recurrent_sums + block * units * 4 * units, units, 4 * units).noalias() +=
            ConstMatrix(op.h + ((t - 1) * s.batch + first) * units, last - first, units).transpose() *
            ConstMatrix(dz + first * 4 * units, last - first, 4 * units);
      }
      // What reaches h_{t-1}: dz . recurrent^T, plus what padded rows passed through.
      Matrix next(op.carried_h + first * units, last - first, units);
      next.noalias() += ConstMatrix(dz + first * 4 * units, last - first, 4 * units) * recurrent.transpose();
    }
  });
}
#endif

// out[r][j] = sums[0][r][j] + sums[1][r][j] + ... for j < columns: each thread's partial
// sums ([blocks, rows, width >= columns]) added into an output [rows, columns].
void SumBlocks(const Tensor& sums, int64_t columns, float* out) {
  const auto partial = sums.tensor<float, 3>();
  for (int64_t r = 0; r < partial.dimension(1); ++r)
    for (int64_t j = 0; j < columns; ++j) out[r * columns + j] = partial(0, r, j);
  for (int64_t block = 1; block < partial.dimension(0); ++block)
    for (int64_t r = 0; r < partial.dimension(1); ++r)
      for (int64_t j = 0; j < columns; ++j) out[r * columns + j] += partial(block, r, j);
}

class LstmSequenceOp : public OpKernel {
 public:
  explicit LstmSequenceOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("bfloat16_products", &bfloat16_products_));
    OP_REQUIRES_OK(context, context->GetAttr("bfloat16_outputs", &bfloat16_outputs_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x_proj = context->input(0);
    const Tensor& kernel = context->input(1);
    const Tensor& bias = context->input(2);
    const Tensor& mask = context->input(3);
    const Tensor& input_kernel = context->input(4);
    const bool projects = !IsEmptyVector(input_kernel);
    OP_REQUIRES_OK(context, projects ? CheckProjectedShapes(x_proj, input_kernel, kernel, mask)
                                     : CheckShapes(x_proj.shape(), kernel.shape(), mask.shape()));
    const int64_t steps = x_proj.dim_size(0), batch = x_proj.dim_size(1), units = kernel.dim_size(0);
    OP_REQUIRES(context, bias.shape() == TensorShape({4 * units}),
                tensorflow::errors::InvalidArgument("LstmSequence: bias is ", bias.shape().DebugString(),
                                                    "; expected [4U] = [", 4 * units, "]"));
    const bool bfloat16 = UseBfloat16Products(bfloat16_products_, units);
    OP_REQUIRES(context, !(projects && (bfloat16 || x_proj.dtype() != tensorflow::DT_FLOAT)),
                tensorflow::errors::InvalidArgument("LstmSequence: the loop projects x in float32 only; "
                                                    "with bfloat16_products or bfloat16 inputs pass x_proj"));

    Tensor *h = nullptr, *c = nullptr, *gates = nullptr, *h_last = nullptr, *previous_h = nullptr;
    const TensorShape state_shape({steps, batch, units});
    OP_REQUIRES_OK(context, context->allocate_output(0, state_shape, &h));
    OP_REQUIRES_OK(context, context->allocate_output(1, state_shape, &c));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({steps, batch, 4 * units}), &gates));
    OP_REQUIRES_OK(context, context->allocate_output(3, TensorShape({batch, units}), &h_last));
    OP_REQUIRES_OK(context,
                   context->allocate_output(4, bfloat16_outputs_ ? state_shape : TensorShape({0}), &previous_h));
    if (steps == 0) h_last->flat<float>().setZero();
    if (steps == 0 || batch == 0 || units == 0) return;
    const Sequence sequence{steps, batch, units, mask.flat<float>().data(), kernel.flat<float>().data()};
    const bool given_bfloat16 = x_proj.dtype() == tensorflow::DT_BFLOAT16;
    const bool reads_bfloat16 = given_bfloat16 && kReadsBfloat16Inputs;
    Tensor widened;  // bfloat16 x_proj in float32, for a loop that reads float32 only
    if (given_bfloat16 && !reads_bfloat16) {
      OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, x_proj.shape(), &widened));
      WidenBfloat16(Bfloat16Data(x_proj), x_proj.NumElements(), widened.flat<float>().data());
    }
    const float* x = reads_bfloat16 ? nullptr : (given_bfloat16 ? widened : x_proj).flat<float>().data();
    // The bfloat16 products write h_{t-1} as they go; in every other case it is rounded after.
    uint16_t* kept_h = bfloat16_outputs_ && bfloat16 ? Bfloat16Data(previous_h) : nullptr;
    const Forward forward{sequence,
                          projects ? nullptr : x,
                          projects ? x : nullptr,
                          projects ? input_kernel.flat<float>().data() : nullptr,
                          projects ? x_proj.dim_size(2) : 0,
                          bias.flat<float>().data(),
                          h->flat<float>().data(),
                          c->flat<float>().data(),
                          gates->flat<float>().data(),
                          reads_bfloat16 ? Bfloat16Data(x_proj) : nullptr,
                          kept_h};
    RunForward(context->eigen_device<Device>(), forward, bfloat16);
    // A masked step carried the state, so the last step holds each row's final state.
    std::memcpy(h_last->flat<float>().data(), forward.h + (steps - 1) * sequence.StepState(),
                sequence.StepState() * sizeof(float));
    if (bfloat16_outputs_) {
      uint16_t* previous = Bfloat16Data(previous_h);
      std::fill_n(previous, sequence.StepState(), uint16_t{0});
      if (!kept_h) RoundToBfloat16(forward.h, (steps - 1) * sequence.StepState(), previous + sequence.StepState());
    }
  }

 private:
  bool bfloat16_products_, bfloat16_outputs_;
};

class LstmSequenceGradOp : public OpKernel {
 public:
  explicit LstmSequenceGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("bfloat16_products", &bfloat16_products_));
    OP_REQUIRES_OK(context, context->GetAttr("bfloat16_outputs", &bfloat16_outputs_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& kernel = context->input(0);
    const Tensor& mask = context->input(1);
    const Tensor& c = context->input(2);
    const Tensor& gates = context->input(3);
    const Tensor& grad_h = context->input(4);
    const Tensor& grad_h_last = context->input(5);
    const Tensor& x = context->input(6);
    const Tensor& h = context->input(7);
    OP_REQUIRES_OK(context, CheckShapes(gates.shape(), kernel.shape(), mask.shape()));
    const int64_t steps = gates.dim_size(0), batch = gates.dim_size(1), units = kernel.dim_size(0);
    const bool has_grad_h = grad_h.NumElements() > 0, has_grad_h_last = grad_h_last.NumElements() > 0;
    OP_REQUIRES(context, c.shape() == TensorShape({steps, batch, units}) && (!has_grad_h || grad_h.shape() == c.shape()),
                tensorflow::errors::InvalidArgument("LstmSequenceGrad: c and grad_h must be [T, B, U]"));
    OP_REQUIRES(context, !has_grad_h_last || grad_h_last.shape() == TensorShape({batch, units}),
                tensorflow::errors::InvalidArgument("LstmSequenceGrad: grad_h_last must be [B, U]"));
    const bool has_x = !IsEmptyVector(x);
    OP_REQUIRES(context, !has_x || (x.dims() == 3 && x.dim_size(0) == steps && x.dim_size(1) == batch),
                tensorflow::errors::InvalidArgument("LstmSequenceGrad: x must be [T, B, F] or [0]"));
    const int64_t features = has_x ? x.dim_size(2) : 0;
    const bool has_h = !IsEmptyVector(h);
    OP_REQUIRES(context, !has_h || h.shape() == c.shape(),
                tensorflow::errors::InvalidArgument("LstmSequenceGrad: h must be [T, B, U] or [0]"));

    Tensor *grad_x_proj = nullptr, *grad_bias = nullptr, *grad_kernel = nullptr, *grad_recurrent_kernel = nullptr,
           *grad_x_proj_bfloat16 = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({4 * units}), &grad_bias));
    OP_REQUIRES_OK(context, context->allocate_output(0, bfloat16_outputs_ ? TensorShape({0}) : gates.shape(),
                                                     &grad_x_proj));
    OP_REQUIRES_OK(context, context->allocate_output(4, bfloat16_outputs_ ? gates.shape() : TensorShape({0}),
                                                     &grad_x_proj_bfloat16));
    OP_REQUIRES_OK(context, context->allocate_output(
                                2, has_x ? TensorShape({features, 4 * units}) : TensorShape({0}), &grad_kernel));
    OP_REQUIRES_OK(context, context->allocate_output(3, has_h ? TensorShape({units, 4 * units}) : TensorShape({0}),
                                                     &grad_recurrent_kernel));
    if (steps == 0 || batch == 0 || units == 0) {
      grad_bias->flat<float>().setZero();
      grad_kernel->flat<float>().setZero();
      grad_recurrent_kernel->flat<float>().setZero();
      return;
    }
    const Device& device = context->eigen_device<Device>();
    const int64_t blocks = RowBlocks(device, batch), sums_width = SumsWidth(4 * units);
    const int64_t recurrent_rows = has_h ? units : 0;
    Tensor carried_h, carried_c, block_bias, kernel_sums, recurrent_sums;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({blocks, features, sums_width}),
                                                   &kernel_sums));
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT,
                                                   TensorShape({blocks, recurrent_rows, sums_width}), &recurrent_sums));
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({batch, units}), &carried_h));
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({batch, units}), &carried_c));
    OP_REQUIRES_OK(context,
                   context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({blocks, 1, 4 * units}), &block_bias));
    // What reaches h_last reaches the last step's h.
    if (has_grad_h_last) {
      carried_h.flat<float>() = grad_h_last.flat<float>();
    } else {
      carried_h.flat<float>().setZero();
    }
    carried_c.flat<float>().setZero();
    // The bfloat16 products write the rounded gate gradients as they go. Float32 ones are
    // still written where the loop sums a kernel's gradient from them, or where the op
    // rounds them afterwards.
    const bool bfloat16 = UseBfloat16Products(bfloat16_products_, units);
    const bool rounds_as_it_goes = bfloat16_outputs_ && bfloat16;
    Tensor float32_gradient;  // the float32 gate gradients of an op that outputs bfloat16 ones
    float* grad_x_proj_data = bfloat16_outputs_ ? nullptr : grad_x_proj->flat<float>().data();
    if (bfloat16_outputs_ && (!rounds_as_it_goes || has_x || has_h)) {
      OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, gates.shape(), &float32_gradient));
      grad_x_proj_data = float32_gradient.flat<float>().data();
    }
    const Sequence sequence{steps, batch, units, mask.flat<float>().data(), kernel.flat<float>().data()};
    const Backward backward{sequence, c.flat<float>().data(), gates.flat<float>().data(),
                            has_grad_h ? grad_h.flat<float>().data() : nullptr, grad_x_proj_data,
                            rounds_as_it_goes ? Bfloat16Data(grad_x_proj_bfloat16) : nullptr,
                            carried_h.flat<float>().data(), carried_c.flat<float>().data(),
                            block_bias.flat<float>().data(), has_x ? x.flat<float>().data() : nullptr, features,
                            kernel_sums.flat<float>().data(), has_h ? h.flat<float>().data() : nullptr,
                            recurrent_sums.flat<float>().data(), sums_width};
    RunBackward(device, backward, bfloat16);
    if (bfloat16_outputs_ && !rounds_as_it_goes)
      RoundToBfloat16(grad_x_proj_data, gates.NumElements(), Bfloat16Data(grad_x_proj_bfloat16));
    SumBlocks(block_bias, 4 * units, grad_bias->flat<float>().data());
    SumBlocks(kernel_sums, 4 * units, grad_kernel->flat<float>().data());
    SumBlocks(recurrent_sums, 4 * units, grad_recurrent_kernel->flat<float>().data());
  }

 private:
  bool bfloat16_products_, bfloat16_outputs_;
};

REGISTER_KERNEL_BUILDER(Name("LstmSequence").Device(DEVICE_CPU), LstmSequenceOp);
REGISTER_KERNEL_BUILDER(Name("LstmSequenceGrad").Device(DEVICE_CPU), LstmSequenceGradOp);

}  // namespace
}  // namespace estimator_models
