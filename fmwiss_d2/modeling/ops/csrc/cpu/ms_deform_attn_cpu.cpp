// CPU kernels of multi-scale deformable attention (see ../ms_deform_attn.h for the layouts).
//
// Sampling of one level at normalized (x, y): pixel coordinates px = x * W - 0.5, py = y * H - 0.5,
// x0 = floor(px), y0 = floor(py), lx = px - x0, ly = py - y0, hx = 1 - lx, hy = 1 - ly and
//   s = hy*hx*V[y0, x0] + hy*lx*V[y0, x0+1] + ly*hx*V[y0+1, x0] + ly*lx*V[y0+1, x0+1],
// a corner outside [0, H) x [0, W) contributing zero. Derivatives used by the backward pass:
//   ds/dpx = -hy*V00 + hy*V01 - ly*V10 + ly*V11,   ds/dpy = -hx*V00 - lx*V01 + hx*V10 + lx*V11,
//   dpx/dx = W, dpy/dy = H.
//
// Parallelism: the forward pass splits the (batch, query) pairs over threads. The backward pass splits
// (batch, head, level) triples: every triple owns a disjoint slice of grad_value (one level of one head of
// one sample) and disjoint entries of the location / weight gradients, so no two threads write the same
// element and the summation order does not depend on the number of threads (deterministic results).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "ms_deform_attn.h"

namespace fmwiss_d2 {
namespace {

struct Level {
  int64_t height;
  int64_t width;
  int64_t start;
};

// Reads the (tiny) level tables and checks that they describe `value` exactly.
std::vector<Level> read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  const auto shapes = spatial_shapes.accessor<int64_t, 2>();
  const auto starts = level_start_index.accessor<int64_t, 1>();
  std::vector<Level> levels(spatial_shapes.size(0));
  int64_t offset = 0;
  for (size_t l = 0; l < levels.size(); ++l) {
    const int64_t h = shapes[l][0], w = shapes[l][1];
    TORCH_CHECK(h > 0 && w > 0, "ms_deform_attn: spatial_shapes[", l, "] = (", h, ", ", w,
                ") must be positive");
    TORCH_CHECK(starts[l] == offset, "ms_deform_attn: level_start_index[", l, "] = ", starts[l],
                " but the levels before it hold ", offset, " positions (expected the cumulative sum of H*W)");
    levels[l] = {h, w, offset};
    offset += h * w;
  }
  TORCH_CHECK(offset == S, "ms_deform_attn: value has S = ", S,
              " positions but spatial_shapes sums to sum(H*W) = ", offset);
  return levels;
}

void check_cpu_dtype(const at::Tensor& value) {
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn (CPU kernel): value must be float32 or float64, got ", value.scalar_type());
}

// The channel loops below get a compile-time trip count kC for the common head sizes (the compiler then
// unrolls them into SIMD code and keeps the forward accumulator in registers); kC = 0 means "runtime C".
template <typename F>
void dispatch_channels(int64_t C, const F& f) {
  switch (C) {
    case 16: f(std::integral_constant<int64_t, 16>{}); break;
    case 32: f(std::integral_constant<int64_t, 32>{}); break;
    case 64: f(std::integral_constant<int64_t, 64>{}); break;
    default: f(std::integral_constant<int64_t, 0>{});
  }
}

template <typename T>
inline void axpy(T* __restrict__ y, const T* __restrict__ x, T a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// grad_v += a * g; returns dot(g, v). The dot product runs in kLanes independent partial sums so that it
// vectorizes without -ffast-math; the summation order is fixed, hence deterministic.
template <typename T>
inline T axpy_dot(T* __restrict__ grad_v, const T* __restrict__ v, const T* __restrict__ g, T a, int64_t n) {
  constexpr int64_t kLanes = 8;
  T part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      part[j] += g[i + j] * v[i + j];
      grad_v[i + j] += a * g[i + j];
    }
  }
  T dot = 0;
  for (; i < n; ++i) {
    dot += g[i] * v[i];
    grad_v[i] += a * g[i];
  }
  for (int64_t j = 0; j < kLanes; ++j) dot += part[j];
  return dot;
}

template <typename T, int64_t kC>
void forward_kernel(const T* value, const std::vector<Level>& levels, const T* loc, const T* attn, T* out,
                    int64_t N, int64_t S, int64_t H, int64_t C_runtime, int64_t Lq, int64_t P) {
  const int64_t C = kC > 0 ? kC : C_runtime;
  const int64_t L = static_cast<int64_t>(levels.size());
  const int64_t pos_stride = H * C;  // distance between two spatial positions in value
  const int64_t work_per_item = std::max<int64_t>(1, H * L * P * C * 4);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / work_per_item);
  at::parallel_for(0, N * Lq, grain, [&](int64_t begin, int64_t end) {
    T local[kC > 0 ? kC : 1];
    for (int64_t nq = begin; nq < end; ++nq) {
      const T* value_n = value + (nq / Lq) * S * pos_stride;
      for (int64_t h = 0; h < H; ++h) {
        T* o = out + (nq * H + h) * C;
        T* acc = kC > 0 ? local : o;
        std::fill(acc, acc + C, T(0));
        for (int64_t l = 0; l < L; ++l) {
          const Level& lv = levels[l];
          const T* v = value_n + lv.start * pos_stride + h * C;
          const int64_t base = ((nq * H + h) * L + l) * P;
          for (int64_t p = 0; p < P; ++p) {
            const T a = attn[base + p];
            const T px = loc[2 * (base + p)] * static_cast<T>(lv.width) - T(0.5);
            const T py = loc[2 * (base + p) + 1] * static_cast<T>(lv.height) - T(0.5);
            // All four corners are outside the map (this also skips NaN coordinates).
            if (!(px > T(-1) && py > T(-1) && px < lv.width && py < lv.height)) continue;
            const int64_t x0 = static_cast<int64_t>(std::floor(px)), y0 = static_cast<int64_t>(std::floor(py));
            const T lx = px - x0, ly = py - y0, hx = 1 - lx, hy = 1 - ly;
            const bool x0_in = x0 >= 0, x1_in = x0 + 1 < lv.width, y0_in = y0 >= 0, y1_in = y0 + 1 < lv.height;
            const int64_t o00 = (y0 * lv.width + x0) * pos_stride;  // may be negative: used only when inside
            if (y0_in && x0_in) axpy(acc, v + o00, a * hy * hx, C);
            if (y0_in && x1_in) axpy(acc, v + o00 + pos_stride, a * hy * lx, C);
            if (y1_in && x0_in) axpy(acc, v + o00 + lv.width * pos_stride, a * ly * hx, C);
            if (y1_in && x1_in) axpy(acc, v + o00 + (lv.width + 1) * pos_stride, a * ly * lx, C);
          }
        }
        if (kC > 0) std::copy(acc, acc + C, o);
      }
    }
  });
}

template <typename T, int64_t kC>
void backward_kernel(const T* value, const std::vector<Level>& levels, const T* loc, const T* attn,
                     const T* grad_out, T* grad_value, T* grad_loc, T* grad_attn, int64_t N, int64_t S, int64_t H,
                     int64_t C_runtime, int64_t Lq, int64_t P) {
  const int64_t C = kC > 0 ? kC : C_runtime;
  const int64_t L = static_cast<int64_t>(levels.size());
  const int64_t pos_stride = H * C;
  at::parallel_for(0, N * H * L, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (H * L), h = (task / L) % H, l = task % L;
      const Level& lv = levels[l];
      const int64_t offset = (n * S + lv.start) * pos_stride + h * C;
      const T* v = value + offset;
      T* gv = grad_value + offset;
      const T W = static_cast<T>(lv.width), Hl = static_cast<T>(lv.height);
      for (int64_t q = 0; q < Lq; ++q) {
        const T* g = grad_out + ((n * Lq + q) * H + h) * C;
        const int64_t base = (((n * Lq + q) * H + h) * L + l) * P;
        for (int64_t p = 0; p < P; ++p) {
          const int64_t i = base + p;
          const T a = attn[i];
          const T px = loc[2 * i] * W - T(0.5), py = loc[2 * i + 1] * Hl - T(0.5);
          T g_attn = 0, g_px = 0, g_py = 0;
          if (px > T(-1) && py > T(-1) && px < W && py < Hl) {
            const int64_t x0 = static_cast<int64_t>(std::floor(px)), y0 = static_cast<int64_t>(std::floor(py));
            const T lx = px - x0, ly = py - y0, hx = 1 - lx, hy = 1 - ly;
            const bool x0_in = x0 >= 0, x1_in = x0 + 1 < lv.width, y0_in = y0 >= 0, y1_in = y0 + 1 < lv.height;
            const int64_t o00 = (y0 * lv.width + x0) * pos_stride;
            if (y0_in && x0_in) {
              const T d = axpy_dot(gv + o00, v + o00, g, a * hy * hx, C);
              g_attn += hy * hx * d, g_px -= hy * d, g_py -= hx * d;
            }
            if (y0_in && x1_in) {
              const int64_t o = o00 + pos_stride;
              const T d = axpy_dot(gv + o, v + o, g, a * hy * lx, C);
              g_attn += hy * lx * d, g_px += hy * d, g_py -= lx * d;
            }
            if (y1_in && x0_in) {
              const int64_t o = o00 + lv.width * pos_stride;
              const T d = axpy_dot(gv + o, v + o, g, a * ly * hx, C);
              g_attn += ly * hx * d, g_px -= ly * d, g_py += hx * d;
            }
            if (y1_in && x1_in) {
              const int64_t o = o00 + (lv.width + 1) * pos_stride;
              const T d = axpy_dot(gv + o, v + o, g, a * ly * lx, C);
              g_attn += ly * lx * d, g_px += ly * d, g_py += lx * d;
            }
          }
          grad_attn[i] = g_attn;
          grad_loc[2 * i] = a * W * g_px;
          grad_loc[2 * i + 1] = a * Hl * g_py;
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  check_cpu_dtype(value);
  const int64_t N = value.size(0), S = value.size(1), H = value.size(2), C = value.size(3);
  const int64_t Lq = sampling_locations.size(1), P = sampling_locations.size(4);
  const auto levels = read_levels(spatial_shapes, level_start_index, S);
  auto output = at::empty({N, Lq, H * C}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    dispatch_channels(C, [&](auto kC) {
      forward_kernel<scalar_t, decltype(kC)::value>(
          value.const_data_ptr<scalar_t>(), levels, sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), N, S, H, C, Lq, P);
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_cpu_dtype(value);
  const int64_t N = value.size(0), S = value.size(1), H = value.size(2), C = value.size(3);
  const int64_t Lq = sampling_locations.size(1), P = sampling_locations.size(4);
  const auto levels = read_levels(spatial_shapes, level_start_index, S);
  auto grad_value = at::zeros_like(value);
  auto grad_loc = at::empty_like(sampling_locations);
  auto grad_attn = at::empty_like(attention_weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    dispatch_channels(C, [&](auto kC) {
      backward_kernel<scalar_t, decltype(kC)::value>(
          value.const_data_ptr<scalar_t>(), levels, sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
          grad_value.mutable_data_ptr<scalar_t>(), grad_loc.mutable_data_ptr<scalar_t>(),
          grad_attn.mutable_data_ptr<scalar_t>(), N, S, H, C, Lq, P);
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace fmwiss_d2
