// CUDA kernels of multi-scale deformable attention (see ../ms_deform_attn.h for the layouts and
// ../cpu/ms_deform_attn_cpu.cpp for the sampling formulas, which are the same here).
//
// dtypes (value / grad_output as scalar_t, sampling locations and attention weights as loc_t): float16,
// bfloat16, float32, float64 with loc_t = scalar_t, and float16 / bfloat16 values with float32 locations and
// weights (what the op receives under autocast: half-precision features, float32 geometry). All arithmetic
// is done in at::opmath_type<scalar_t> (float for the 16-bit types, the type itself otherwise).
//
// Forward: one thread per output element (n, q, h, c); neighbouring threads are neighbouring channels, so
// the four corner reads of a sampling point are coalesced and the location / weight reads are broadcasts.
//
// Backward: one warp per (n, q, h); lane k handles the channels c = k, k + 32, ... For each (level, point)
// the lanes add a * w_corner * grad_out[c] into grad_value with atomicAdd (into an opmath-typed buffer, cast
// to the value dtype at the end, so 16-bit gradients are accumulated in float), and their partial
// d/d(location) and d/d(weight) are summed with warp shuffles; lane 0 writes them (no atomics: every
// (n, q, h, l, p) belongs to one warp). grad_value is therefore non-deterministic in its last bits (order of
// the atomic additions); the other two gradients are deterministic.
//
// Deterministic backward (deterministic = true; torch.use_deterministic_algorithms(True) or the op's own
// switch): the same warp kernel computes the location / weight gradients but skips the atomics, and
// grad_value is gathered instead of scattered:
//   1. one thread per sampling point writes, for each of its 4 bilinear corners, a key naming the value row
//      it touches, key = (n * S + position) * H + h (the row of grad_value viewed as (N * S * H, C); corners
//      outside the map get the sentinel N * S * H), and the coefficient a * w_corner (computed exactly as
//      the atomic path computes it);
//   2. a stable radix sort of the keys (at::sort) groups the corners by row, in increasing corner order
//      within a row; at::searchsorted gives each row's segment;
//   3. one thread per grad_value element (row, c) sums coefficient * grad_output[n, q, h, c] over its
//      segment, in that fixed order, in float (opmath), and writes the element once.
// Every step is order-independent of the thread schedule, so grad_value is bitwise reproducible; it differs
// from the atomic result only by the summation order (the same products are added).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "ms_deform_attn.h"

namespace fmwiss_d2 {
namespace {

constexpr int kThreadsPerBlock = 256;  // a multiple of the warp size
constexpr int kWarpSize = 32;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // kernels use grid-stride loops beyond this

inline unsigned int num_blocks(int64_t threads) {
  return static_cast<unsigned int>(
      std::max<int64_t>(1, std::min<int64_t>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks)));
}

__device__ __forceinline__ float floor_(float x) { return floorf(x); }
__device__ __forceinline__ double floor_(double x) { return ::floor(x); }

// The four bilinear corners of pixel coordinate (px, py) in an H x W map. Corner k = (dy, dx) with
// k = 2 * dy + dx; `offset` is the corner's position index y * W + x, valid only when `inside`.
template <typename acc_t>
struct Corners {
  int64_t offset[4];
  bool inside[4];
  acc_t weight[4];  // bilinear weight
  acc_t dwdx[4];    // d weight / d px
  acc_t dwdy[4];    // d weight / d py

  __device__ __forceinline__ Corners(acc_t px, acc_t py, int64_t height, int64_t width) {
    const acc_t fx = floor_(px), fy = floor_(py);
    const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
    const acc_t lx = px - fx, ly = py - fy, hx = acc_t(1) - lx, hy = acc_t(1) - ly;
    const bool x_in[2] = {x0 >= 0, x0 + 1 < width};
    const bool y_in[2] = {y0 >= 0, y0 + 1 < height};
    const acc_t wx[2] = {hx, lx}, wy[2] = {hy, ly};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int dy = k >> 1, dx = k & 1;
      offset[k] = (y0 + dy) * width + (x0 + dx);
      inside[k] = y_in[dy] && x_in[dx];
      weight[k] = wy[dy] * wx[dx];
      dwdx[k] = dx ? wy[dy] : -wy[dy];
      dwdy[k] = dy ? wx[dx] : -wx[dx];
    }
  }
};

template <typename scalar_t, typename loc_t>
__global__ void ms_deform_attn_forward_kernel(const scalar_t* __restrict__ value,
                                              const int64_t* __restrict__ spatial_shapes,
                                              const int64_t* __restrict__ level_start_index,
                                              const loc_t* __restrict__ sampling_locations,
                                              const loc_t* __restrict__ attention_weights,
                                              scalar_t* __restrict__ output, int64_t total, int64_t S, int64_t H,
                                              int64_t C, int64_t Lq, int64_t L, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pos_stride = H * C;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % C;
    const int64_t nqh = idx / C;  // (n * Lq + q) * H + h
    const int64_t h = nqh % H;
    const int64_t n = nqh / (H * Lq);
    const scalar_t* v_nh = value + n * S * pos_stride + h * C + c;
    acc_t acc = 0;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t height = spatial_shapes[2 * l], width = spatial_shapes[2 * l + 1];
      const scalar_t* v = v_nh + level_start_index[l] * pos_stride;
      const int64_t base = (nqh * L + l) * P;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = base + p;
        const acc_t px = static_cast<acc_t>(sampling_locations[2 * i]) * static_cast<acc_t>(width) - acc_t(0.5);
        const acc_t py = static_cast<acc_t>(sampling_locations[2 * i + 1]) * static_cast<acc_t>(height) - acc_t(0.5);
        if (!(px > acc_t(-1) && py > acc_t(-1) && px < static_cast<acc_t>(width) && py < static_cast<acc_t>(height)))
          continue;
        const Corners<acc_t> corners(px, py, height, width);
        acc_t sample = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (corners.inside[k]) sample += corners.weight[k] * static_cast<acc_t>(v[corners.offset[k] * pos_stride]);
        }
        acc += static_cast<acc_t>(attention_weights[i]) * sample;
      }
    }
    output[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// kGradValue = false: the location / weight gradients only (the deterministic path gathers grad_value).
template <typename scalar_t, typename loc_t, bool kGradValue>
__global__ void ms_deform_attn_backward_kernel(const scalar_t* __restrict__ value,
                                               const int64_t* __restrict__ spatial_shapes,
                                               const int64_t* __restrict__ level_start_index,
                                               const loc_t* __restrict__ sampling_locations,
                                               const loc_t* __restrict__ attention_weights,
                                               const scalar_t* __restrict__ grad_output,
                                               at::opmath_type<scalar_t>* __restrict__ grad_value,
                                               loc_t* __restrict__ grad_sampling_locations,
                                               loc_t* __restrict__ grad_attention_weights, int64_t items,
                                               int64_t S, int64_t H, int64_t C, int64_t Lq, int64_t L, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pos_stride = H * C;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
  // `item` is the same for all lanes of a warp, so every branch below is warp-uniform and the shuffles
  // see all 32 lanes.
  for (int64_t item = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarpSize; item < items;
       item += warps_in_grid) {
    const int64_t h = item % H;  // item = (n * Lq + q) * H + h
    const int64_t n = item / (H * Lq);
    const int64_t v_offset = n * S * pos_stride + h * C;
    const scalar_t* g = grad_output + item * C;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t height = spatial_shapes[2 * l], width = spatial_shapes[2 * l + 1];
      const int64_t level_offset = v_offset + level_start_index[l] * pos_stride;
      const int64_t base = (item * L + l) * P;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = base + p;
        const acc_t a = static_cast<acc_t>(attention_weights[i]);
        const acc_t fw = static_cast<acc_t>(width), fh = static_cast<acc_t>(height);
        const acc_t px = static_cast<acc_t>(sampling_locations[2 * i]) * fw - acc_t(0.5);
        const acc_t py = static_cast<acc_t>(sampling_locations[2 * i + 1]) * fh - acc_t(0.5);
        acc_t g_attn = 0, g_px = 0, g_py = 0;
        if (px > acc_t(-1) && py > acc_t(-1) && px < fw && py < fh) {
          const Corners<acc_t> corners(px, py, height, width);
          for (int64_t c = lane; c < C; c += kWarpSize) {
            const acc_t go = static_cast<acc_t>(g[c]);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              if (!corners.inside[k]) continue;
              const int64_t j = level_offset + corners.offset[k] * pos_stride + c;
              const acc_t d = go * static_cast<acc_t>(value[j]);
              g_attn += corners.weight[k] * d;
              g_px += corners.dwdx[k] * d;
              g_py += corners.dwdy[k] * d;
              if constexpr (kGradValue) atomicAdd(grad_value + j, a * corners.weight[k] * go);
            }
          }
        }
        g_attn = warp_sum(g_attn);
        g_px = warp_sum(g_px);
        g_py = warp_sum(g_py);
        if (lane == 0) {
          grad_attention_weights[i] = static_cast<loc_t>(g_attn);
          grad_sampling_locations[2 * i] = static_cast<loc_t>(a * fw * g_px);
          grad_sampling_locations[2 * i + 1] = static_cast<loc_t>(a * fh * g_py);
        }
      }
    }
  }
}

// Deterministic backward, step 1: one thread per sampling point i = (((n * Lq + q) * H + h) * L + l) * P + p.
// Entry e = 4 * i + k describes corner k: keys[e] = its grad_value row (or `sentinel`), coef[e] = a * w_k.
template <typename scalar_t, typename loc_t, typename key_t>
__global__ void corner_keys_kernel(const int64_t* __restrict__ spatial_shapes,
                                   const int64_t* __restrict__ level_start_index,
                                   const loc_t* __restrict__ sampling_locations,
                                   const loc_t* __restrict__ attention_weights, key_t* __restrict__ keys,
                                   at::opmath_type<scalar_t>* __restrict__ coef, int64_t points, int64_t S,
                                   int64_t H, int64_t Lq, int64_t L, int64_t P, key_t sentinel) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < points;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t l = (i / P) % L;
    const int64_t nqh = i / (L * P);
    const int64_t h = nqh % H;
    const int64_t n = nqh / (H * Lq);
    const int64_t height = spatial_shapes[2 * l], width = spatial_shapes[2 * l + 1];
    const acc_t a = static_cast<acc_t>(attention_weights[i]);
    const acc_t fw = static_cast<acc_t>(width), fh = static_cast<acc_t>(height);
    const acc_t px = static_cast<acc_t>(sampling_locations[2 * i]) * fw - acc_t(0.5);
    const acc_t py = static_cast<acc_t>(sampling_locations[2 * i + 1]) * fh - acc_t(0.5);
    key_t* key = keys + 4 * i;
    acc_t* c = coef + 4 * i;
    if (px > acc_t(-1) && py > acc_t(-1) && px < fw && py < fh) {
      const Corners<acc_t> corners(px, py, height, width);
      const int64_t row0 = n * S + level_start_index[l];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        key[k] = corners.inside[k] ? static_cast<key_t>((row0 + corners.offset[k]) * H + h) : sentinel;
        c[k] = corners.inside[k] ? a * corners.weight[k] : acc_t(0);
      }
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        key[k] = sentinel;
        c[k] = acc_t(0);
      }
    }
  }
}

// Deterministic backward, step 3: one thread per grad_value element (row, c), row = (n * S + s) * H + h.
// Entries [segment[row], segment[row + 1]) of the sorted order touch this row; they are summed in that order.
template <typename scalar_t>
__global__ void gather_grad_value_kernel(const int64_t* __restrict__ segment, const int64_t* __restrict__ order,
                                         const at::opmath_type<scalar_t>* __restrict__ coef_sorted,
                                         const scalar_t* __restrict__ grad_output, scalar_t* __restrict__ grad_value,
                                         int64_t total, int64_t C, int64_t LP) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / C, c = idx % C;
    const int64_t end = segment[row + 1];
    acc_t acc = 0;
    for (int64_t j = segment[row]; j < end; ++j) {
      const int64_t item = (order[j] >> 2) / LP;  // (n * Lq + q) * H + h of the sampling point
      acc += coef_sorted[j] * static_cast<acc_t>(grad_output[item * C + c]);
    }
    grad_value[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<scalar_t>, TypeTag<loc_t>) for the supported (value, location) dtype pairs.
template <typename F>
void dispatch_cuda_types(const at::Tensor& value, const at::Tensor& sampling_locations, const F& f) {
  const auto vt = value.scalar_type(), lt = sampling_locations.scalar_type();
  if (vt == at::kFloat && lt == at::kFloat) {
    f(TypeTag<float>{}, TypeTag<float>{});
  } else if (vt == at::kDouble && lt == at::kDouble) {
    f(TypeTag<double>{}, TypeTag<double>{});
  } else if (vt == at::kHalf && lt == at::kHalf) {
    f(TypeTag<at::Half>{}, TypeTag<at::Half>{});
  } else if (vt == at::kBFloat16 && lt == at::kBFloat16) {
    f(TypeTag<at::BFloat16>{}, TypeTag<at::BFloat16>{});
  } else if (vt == at::kHalf && lt == at::kFloat) {
    f(TypeTag<at::Half>{}, TypeTag<float>{});
  } else if (vt == at::kBFloat16 && lt == at::kFloat) {
    f(TypeTag<at::BFloat16>{}, TypeTag<float>{});
  } else {
    TORCH_CHECK(false, "ms_deform_attn (CUDA kernel): value of dtype ", vt, " with sampling_locations of dtype ",
                lt, " is not supported (value: float16, bfloat16, float32 or float64; locations and weights: the "
                "value's dtype, or float32 with a float16/bfloat16 value)");
  }
}

// Step 1-3 of the deterministic backward (see the top of the file); returns grad_value.
template <typename scalar_t, typename loc_t>
at::Tensor deterministic_grad_value(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                    const at::Tensor& attention_weights, const at::Tensor& grad_output,
                                    cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = value.size(0), S = value.size(1), H = value.size(2), C = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3), P = sampling_locations.size(4);
  const int64_t points = N * Lq * H * L * P, rows = N * S * H;
  auto grad_value = at::empty_like(value);
  if (value.numel() == 0) return grad_value;
  if (points == 0) return grad_value.zero_();
  const bool narrow = rows < std::numeric_limits<int32_t>::max();  // 32-bit keys sort faster
  auto keys = at::empty({4 * points}, value.options().dtype(narrow ? at::kInt : at::kLong));
  auto coef = at::empty({4 * points}, value.options().dtype(at::toOpMathType(value.scalar_type())));
  if (narrow) {
    corner_keys_kernel<scalar_t, loc_t, int32_t><<<num_blocks(points), kThreadsPerBlock, 0, stream>>>(
        spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
        sampling_locations.const_data_ptr<loc_t>(), attention_weights.const_data_ptr<loc_t>(),
        keys.mutable_data_ptr<int32_t>(), coef.mutable_data_ptr<acc_t>(), points, S, H, Lq, L, P,
        static_cast<int32_t>(rows));
  } else {
    corner_keys_kernel<scalar_t, loc_t, int64_t><<<num_blocks(points), kThreadsPerBlock, 0, stream>>>(
        spatial_shapes.const_data_ptr<int64_t>(), level_start_index.const_data_ptr<int64_t>(),
        sampling_locations.const_data_ptr<loc_t>(), attention_weights.const_data_ptr<loc_t>(),
        keys.mutable_data_ptr<int64_t>(), coef.mutable_data_ptr<acc_t>(), points, S, H, Lq, L, P, rows);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // A stable sort: entries of one row keep their increasing corner order (radix sort, deterministic).
  auto [sorted_keys, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto coef_sorted = coef.index_select(0, order);
  const auto segment = at::searchsorted(sorted_keys, at::arange(rows + 1, keys.options()));  // int64, rows + 1
  const int64_t total = value.numel();
  gather_grad_value_kernel<scalar_t><<<num_blocks(total), kThreadsPerBlock, 0, stream>>>(
      segment.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(), coef_sorted.const_data_ptr<acc_t>(),
      grad_output.const_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<scalar_t>(), total, C, L * P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_value;
}

void check_cuda_inputs(const at::Tensor& value) {
  TORCH_CHECK(value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16 ||
                  value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn (CUDA kernel): value must be float16, bfloat16, float32 or float64, got ",
              value.scalar_type());
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  check_cuda_inputs(value);
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), H = value.size(2), C = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3), P = sampling_locations.size(4);
  auto output = at::empty({N, Lq, H * C}, value.options());
  const int64_t total = output.numel();
  if (total == 0) return output;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_cuda_types(value, sampling_locations, [&](auto value_tag, auto loc_tag) {
    using scalar_t = typename decltype(value_tag)::type;
    using loc_t = typename decltype(loc_tag)::type;
    ms_deform_attn_forward_kernel<scalar_t, loc_t><<<num_blocks(total), kThreadsPerBlock, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<loc_t>(),
        attention_weights.const_data_ptr<loc_t>(), output.mutable_data_ptr<scalar_t>(), total, S, H, C, Lq, L, P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const at::Tensor& grad_output,
    bool deterministic) {
  check_cuda_inputs(value);
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), H = value.size(2), C = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3), P = sampling_locations.size(4);
  auto grad_loc = at::zeros_like(sampling_locations);
  auto grad_attn = at::zeros_like(attention_weights);
  at::Tensor grad_value;
  const int64_t items = N * Lq * H;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_cuda_types(value, sampling_locations, [&](auto value_tag, auto loc_tag) {
    using scalar_t = typename decltype(value_tag)::type;
    using loc_t = typename decltype(loc_tag)::type;
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor grad_value_acc;  // atomic path: accumulated in opmath, cast at the end
    if (!deterministic) {
      grad_value_acc = at::zeros(value.sizes(), value.options().dtype(at::toOpMathType(value.scalar_type())));
    }
    if (items > 0 && C > 0) {
      const auto blocks = num_blocks(items * kWarpSize);
      if (deterministic) {
        ms_deform_attn_backward_kernel<scalar_t, loc_t, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
            value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
            level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<loc_t>(),
            attention_weights.const_data_ptr<loc_t>(), grad_output.const_data_ptr<scalar_t>(), nullptr,
            grad_loc.mutable_data_ptr<loc_t>(), grad_attn.mutable_data_ptr<loc_t>(), items, S, H, C, Lq, L, P);
      } else {
        ms_deform_attn_backward_kernel<scalar_t, loc_t, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
            value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
            level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<loc_t>(),
            attention_weights.const_data_ptr<loc_t>(), grad_output.const_data_ptr<scalar_t>(),
            grad_value_acc.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<loc_t>(),
            grad_attn.mutable_data_ptr<loc_t>(), items, S, H, C, Lq, L, P);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (deterministic) {
      grad_value = deterministic_grad_value<scalar_t, loc_t>(value, spatial_shapes, level_start_index,
                                                             sampling_locations, attention_weights, grad_output,
                                                             stream);
    } else {
      grad_value = grad_value_acc.to(value.scalar_type());
    }
  });
  return {grad_value, grad_loc, grad_attn};
}

#define FMWISS_STRINGIFY_ARGS(...) #__VA_ARGS__
#define FMWISS_STRINGIFY(...) FMWISS_STRINGIFY_ARGS(__VA_ARGS__)

int64_t cuda_toolkit_version() { return CUDART_VERSION; }

const char* cuda_compiled_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return FMWISS_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

}  // namespace fmwiss_d2
