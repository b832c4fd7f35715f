// CUDA kernels of multi-scale deformable attention (see ../ms_deform_attn.h for the layouts and
// ../cpu/ms_deform_attn_cpu.cpp for the sampling formulas, which are the same here).
//
// dtypes: float16, bfloat16, float32, float64; all arithmetic is done in at::opmath_type<scalar_t>
// (float for the 16-bit types, the type itself otherwise).
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
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

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

template <typename scalar_t>
__global__ void ms_deform_attn_forward_kernel(const scalar_t* __restrict__ value,
                                              const int64_t* __restrict__ spatial_shapes,
                                              const int64_t* __restrict__ level_start_index,
                                              const scalar_t* __restrict__ sampling_locations,
                                              const scalar_t* __restrict__ attention_weights,
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

template <typename scalar_t>
__global__ void ms_deform_attn_backward_kernel(const scalar_t* __restrict__ value,
                                               const int64_t* __restrict__ spatial_shapes,
                                               const int64_t* __restrict__ level_start_index,
                                               const scalar_t* __restrict__ sampling_locations,
                                               const scalar_t* __restrict__ attention_weights,
                                               const scalar_t* __restrict__ grad_output,
                                               at::opmath_type<scalar_t>* __restrict__ grad_value,
                                               scalar_t* __restrict__ grad_sampling_locations,
                                               scalar_t* __restrict__ grad_attention_weights, int64_t items,
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
              atomicAdd(grad_value + j, a * corners.weight[k] * go);
            }
          }
        }
        g_attn = warp_sum(g_attn);
        g_px = warp_sum(g_px);
        g_py = warp_sum(g_py);
        if (lane == 0) {
          grad_attention_weights[i] = static_cast<scalar_t>(g_attn);
          grad_sampling_locations[2 * i] = static_cast<scalar_t>(a * fw * g_px);
          grad_sampling_locations[2 * i + 1] = static_cast<scalar_t>(a * fh * g_py);
        }
      }
    }
  }
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    ms_deform_attn_forward_kernel<scalar_t><<<num_blocks(total), kThreadsPerBlock, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), total, S, H, C, Lq, L, P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_cuda_inputs(value);
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), H = value.size(2), C = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3), P = sampling_locations.size(4);
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(at::toOpMathType(value.scalar_type())));
  auto grad_loc = at::zeros_like(sampling_locations);
  auto grad_attn = at::zeros_like(attention_weights);
  const int64_t items = N * Lq * H;
  if (items > 0 && C > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      ms_deform_attn_backward_kernel<scalar_t><<<num_blocks(items * kWarpSize), kThreadsPerBlock, 0, stream>>>(
          value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
          grad_value_acc.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<scalar_t>(),
          grad_attn.mutable_data_ptr<scalar_t>(), items, S, H, C, Lq, L, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_value_acc.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace fmwiss_d2
