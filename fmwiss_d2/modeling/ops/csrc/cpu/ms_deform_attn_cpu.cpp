// CPU kernels of multi-scale deformable attention (see ../ms_deform_attn.h for the layouts).
//
// Sampling of one level at normalized (x, y): pixel coordinates px = x * W - 0.5, py = y * H - 0.5,
// x0 = floor(px), y0 = floor(py), lx = px - x0, ly = py - y0, hx = 1 - lx, hy = 1 - ly and
//   s = hy*hx*V[y0, x0] + hy*lx*V[y0, x0+1] + ly*hx*V[y0+1, x0] + ly*lx*V[y0+1, x0+1],
// a corner outside [0, H) x [0, W) contributing zero. Derivatives used by the backward pass:
//   ds/dpx = -hy*V00 + hy*V01 - ly*V10 + ly*V11,   ds/dpy = -hx*V00 - lx*V01 + hx*V10 + lx*V11,
//   dpx/dx = W, dpy/dy = H.
//
// dtypes (value / grad_output as T, sampling locations and attention weights as TL):
//   float32 / float32, float64 / float64, bfloat16 / bfloat16 and bfloat16 / float32 (what the op receives
//   under CPU autocast). All arithmetic runs in acc_t = at::opmath_type<T> (float for bfloat16): samples,
//   dot products and the gradient of value are accumulated in float and rounded once at the end.
//
// Parallelism: the forward pass splits the (batch, query) pairs over threads. The backward pass splits
// (batch, head, level) triples: every triple owns a disjoint slice of grad_value (one level of one head of
// one sample) and disjoint entries of the location / weight gradients, so no two threads write the same
// element and the summation order does not depend on the number of threads (deterministic results, always:
// the backward's `deterministic` flag has nothing to change here).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
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

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>, TypeTag<TL>) for the supported (value, location) dtype pairs.
template <typename F>
void dispatch_cpu_types(const at::Tensor& value, const at::Tensor& sampling_locations, const F& f) {
  const auto vt = value.scalar_type(), lt = sampling_locations.scalar_type();
  TORCH_CHECK(vt == at::kFloat || vt == at::kDouble || vt == at::kBFloat16,
              "ms_deform_attn (CPU kernel): value must be float32 or float64 (or bfloat16, computed in float32), "
              "got ", vt);
  if (vt == at::kFloat && lt == at::kFloat) {
    f(TypeTag<float>{}, TypeTag<float>{});
  } else if (vt == at::kDouble && lt == at::kDouble) {
    f(TypeTag<double>{}, TypeTag<double>{});
  } else if (vt == at::kBFloat16 && lt == at::kBFloat16) {
    f(TypeTag<c10::BFloat16>{}, TypeTag<c10::BFloat16>{});
  } else if (vt == at::kBFloat16 && lt == at::kFloat) {
    f(TypeTag<c10::BFloat16>{}, TypeTag<float>{});
  } else {
    TORCH_CHECK(false, "ms_deform_attn (CPU kernel): sampling_locations / attention_weights of dtype ", lt,
                " are not supported with a value of dtype ", vt,
                " (supported: the value's dtype, or float32 with a bfloat16 value)");
  }
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

template <typename A, typename T>
inline void axpy(A* __restrict__ y, const T* __restrict__ x, A a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * static_cast<A>(x[i]);
}

// grad_v += a * g; returns dot(g, v). The dot product runs in kLanes independent partial sums so that it
// vectorizes without -ffast-math; the summation order is fixed, hence deterministic.
template <typename A, typename T>
inline A axpy_dot(A* __restrict__ grad_v, const T* __restrict__ v, const A* __restrict__ g, A a, int64_t n) {
  constexpr int64_t kLanes = 8;
  A part[kLanes] = {};
  const int64_t n_main = n - n % kLanes;
  int64_t i = 0;
  for (; i < n_main; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      part[j] += g[i + j] * static_cast<A>(v[i + j]);
      grad_v[i + j] += a * g[i + j];
    }
  }
  A dot = 0;
  for (; i < n; ++i) {
    dot += g[i] * static_cast<A>(v[i]);
    grad_v[i] += a * g[i];
  }
  for (int64_t j = 0; j < kLanes; ++j) dot += part[j];
  return dot;
}

template <typename T, typename TL, int64_t kC>
void forward_kernel(const T* value, const std::vector<Level>& levels, const TL* loc, const TL* attn, T* out,
                    int64_t N, int64_t S, int64_t H, int64_t C_runtime, int64_t Lq, int64_t P) {
  using A = at::opmath_type<T>;
  const int64_t C = kC > 0 ? kC : C_runtime;
  const int64_t L = static_cast<int64_t>(levels.size());
  const int64_t pos_stride = H * C;  // distance between two spatial positions in value
  const int64_t work_per_item = std::max<int64_t>(1, H * L * P * C * 4);
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / work_per_item);
  at::parallel_for(0, N * Lq, grain, [&](int64_t begin, int64_t end) {
    A local[kC > 0 ? kC : 1];
    std::vector<A> heap(kC > 0 ? 0 : C);  // the accumulator for a runtime channel count
    A* acc = kC > 0 ? local : heap.data();
    for (int64_t nq = begin; nq < end; ++nq) {
      const T* value_n = value + (nq / Lq) * S * pos_stride;
      for (int64_t h = 0; h < H; ++h) {
        std::fill(acc, acc + C, A(0));
        for (int64_t l = 0; l < L; ++l) {
          const Level& lv = levels[l];
          const T* v = value_n + lv.start * pos_stride + h * C;
          const int64_t base = ((nq * H + h) * L + l) * P;
          const A W = static_cast<A>(lv.width), Hl = static_cast<A>(lv.height);
          for (int64_t p = 0; p < P; ++p) {
            const A a = static_cast<A>(attn[base + p]);
            const A px = static_cast<A>(loc[2 * (base + p)]) * W - A(0.5);
            const A py = static_cast<A>(loc[2 * (base + p) + 1]) * Hl - A(0.5);
            // All four corners are outside the map (this also skips NaN coordinates).
            if (!(px > A(-1) && py > A(-1) && px < W && py < Hl)) continue;
            const int64_t x0 = static_cast<int64_t>(std::floor(px)), y0 = static_cast<int64_t>(std::floor(py));
            const A lx = px - x0, ly = py - y0, hx = 1 - lx, hy = 1 - ly;
            const bool x0_in = x0 >= 0, x1_in = x0 + 1 < lv.width, y0_in = y0 >= 0, y1_in = y0 + 1 < lv.height;
            const int64_t o00 = (y0 * lv.width + x0) * pos_stride;  // may be negative: used only when inside
            if (y0_in && x0_in) axpy(acc, v + o00, a * hy * hx, C);
            if (y0_in && x1_in) axpy(acc, v + o00 + pos_stride, a * hy * lx, C);
            if (y1_in && x0_in) axpy(acc, v + o00 + lv.width * pos_stride, a * ly * hx, C);
            if (y1_in && x1_in) axpy(acc, v + o00 + (lv.width + 1) * pos_stride, a * ly * lx, C);
          }
        }
        T* o = out + (nq * H + h) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = static_cast<T>(acc[c]);
      }
    }
  });
}

// grad_value is accumulated in A (a float buffer for bfloat16 values, the output itself otherwise).
template <typename T, typename TL, int64_t kC>
void backward_kernel(const T* value, const std::vector<Level>& levels, const TL* loc, const TL* attn,
                     const T* grad_out, at::opmath_type<T>* grad_value, TL* grad_loc, TL* grad_attn, int64_t N,
                     int64_t S, int64_t H, int64_t C_runtime, int64_t Lq, int64_t P) {
  using A = at::opmath_type<T>;
  constexpr bool kConvertGrad = !std::is_same_v<T, A>;
  const int64_t C = kC > 0 ? kC : C_runtime;
  const int64_t L = static_cast<int64_t>(levels.size());
  const int64_t pos_stride = H * C;
  at::parallel_for(0, N * H * L, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> g_buffer(kConvertGrad ? C : 0);  // grad_output of one (query, head) in A
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (H * L), h = (task / L) % H, l = task % L;
      const Level& lv = levels[l];
      const int64_t offset = (n * S + lv.start) * pos_stride + h * C;
      const T* v = value + offset;
      A* gv = grad_value + offset;
      const A W = static_cast<A>(lv.width), Hl = static_cast<A>(lv.height);
      for (int64_t q = 0; q < Lq; ++q) {
        const T* g_raw = grad_out + ((n * Lq + q) * H + h) * C;
        const A* g;
        if constexpr (kConvertGrad) {
          for (int64_t c = 0; c < C; ++c) g_buffer[c] = static_cast<A>(g_raw[c]);
          g = g_buffer.data();
        } else {
          g = g_raw;
        }
        const int64_t base = (((n * Lq + q) * H + h) * L + l) * P;
        for (int64_t p = 0; p < P; ++p) {
          const int64_t i = base + p;
          const A a = static_cast<A>(attn[i]);
          const A px = static_cast<A>(loc[2 * i]) * W - A(0.5), py = static_cast<A>(loc[2 * i + 1]) * Hl - A(0.5);
          A g_attn = 0, g_px = 0, g_py = 0;
          if (px > A(-1) && py > A(-1) && px < W && py < Hl) {
            const int64_t x0 = static_cast<int64_t>(std::floor(px)), y0 = static_cast<int64_t>(std::floor(py));
            const A lx = px - x0, ly = py - y0, hx = 1 - lx, hy = 1 - ly;
            const bool x0_in = x0 >= 0, x1_in = x0 + 1 < lv.width, y0_in = y0 >= 0, y1_in = y0 + 1 < lv.height;
            const int64_t o00 = (y0 * lv.width + x0) * pos_stride;
            if (y0_in && x0_in) {
              const A d = axpy_dot(gv + o00, v + o00, g, a * hy * hx, C);
              g_attn += hy * hx * d, g_px -= hy * d, g_py -= hx * d;
            }
            if (y0_in && x1_in) {
              const int64_t o = o00 + pos_stride;
              const A d = axpy_dot(gv + o, v + o, g, a * hy * lx, C);
              g_attn += hy * lx * d, g_px += hy * d, g_py -= lx * d;
            }
            if (y1_in && x0_in) {
              const int64_t o = o00 + lv.width * pos_stride;
              const A d = axpy_dot(gv + o, v + o, g, a * ly * hx, C);
              g_attn += ly * hx * d, g_px -= ly * d, g_py += hx * d;
            }
            if (y1_in && x1_in) {
              const int64_t o = o00 + (lv.width + 1) * pos_stride;
              const A d = axpy_dot(gv + o, v + o, g, a * ly * lx, C);
              g_attn += ly * lx * d, g_px += ly * d, g_py += lx * d;
            }
          }
          grad_attn[i] = static_cast<TL>(g_attn);
          grad_loc[2 * i] = static_cast<TL>(a * W * g_px);
          grad_loc[2 * i + 1] = static_cast<TL>(a * Hl * g_py);
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  const int64_t N = value.size(0), S = value.size(1), H = value.size(2), C = value.size(3);
  const int64_t Lq = sampling_locations.size(1), P = sampling_locations.size(4);
  auto output = at::empty({N, Lq, H * C}, value.options());
  dispatch_cpu_types(value, sampling_locations, [&](auto value_tag, auto loc_tag) {
    using T = typename decltype(value_tag)::type;
    using TL = typename decltype(loc_tag)::type;
    const auto levels = read_levels(spatial_shapes, level_start_index, S);
    dispatch_channels(C, [&](auto kC) {
      forward_kernel<T, TL, decltype(kC)::value>(
          value.const_data_ptr<T>(), levels, sampling_locations.const_data_ptr<TL>(),
          attention_weights.const_data_ptr<TL>(), output.mutable_data_ptr<T>(), N, S, H, C, Lq, P);
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  const int64_t N = value.size(0), S = value.size(1), H = value.size(2), C = value.size(3);
  const int64_t Lq = sampling_locations.size(1), P = sampling_locations.size(4);
  const auto acc_type = at::toOpMathType(value.scalar_type());
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(acc_type));
  auto grad_loc = at::empty_like(sampling_locations);
  auto grad_attn = at::empty_like(attention_weights);
  dispatch_cpu_types(value, sampling_locations, [&](auto value_tag, auto loc_tag) {
    using T = typename decltype(value_tag)::type;
    using TL = typename decltype(loc_tag)::type;
    using A = at::opmath_type<T>;
    const auto levels = read_levels(spatial_shapes, level_start_index, S);
    dispatch_channels(C, [&](auto kC) {
      backward_kernel<T, TL, decltype(kC)::value>(
          value.const_data_ptr<T>(), levels, sampling_locations.const_data_ptr<TL>(),
          attention_weights.const_data_ptr<TL>(), grad_output.const_data_ptr<T>(), grad_value.mutable_data_ptr<A>(),
          grad_loc.mutable_data_ptr<TL>(), grad_attn.mutable_data_ptr<TL>(), N, S, H, C, Lq, P);
    });
  });
  if (grad_value.scalar_type() != value.scalar_type()) grad_value = grad_value.to(value.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace fmwiss_d2
