// Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021, eq. 3).
//
//   out[n, q, h*C + c] = sum_{l, p} A[n, q, h, l, p] * bilinear(V_l[n, :, :, h, c], loc[n, q, h, l, p])
//
// Layouts (all tensors contiguous):
//   value               (N, S, H, C)        S = sum_l H_l * W_l, levels flattened row-major and stacked
//   spatial_shapes      (L, 2) int64        (H_l, W_l)
//   level_start_index   (L,)   int64        offset of level l in S
//   sampling_locations  (N, Lq, H, L, P, 2) normalized (x, y); pixel coordinate = x * W_l - 0.5
//   attention_weights   (N, Lq, H, L, P)
//   output              (N, Lq, H * C)
// dtypes: value and grad_output share one dtype; sampling_locations and attention_weights share the value's
// dtype, or are float32 when value is float16/bfloat16 (mixed precision: half-precision features, float32
// geometry). The gradients have the dtypes of their inputs.
// Bilinear sampling is exact with zero padding outside the map, i.e. the semantics of
// grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fmwiss_d2 {

at::Tensor ms_deform_attn_forward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

// Returns (grad_value, grad_sampling_locations, grad_attention_weights).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

// deterministic = false: grad_value accumulated with atomicAdd (fast, order-dependent last bits);
// deterministic = true: gather-style accumulation over sorted sampling corners (bitwise reproducible).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output,
    bool deterministic);

// CUDART_VERSION of the toolkit that compiled the kernels (e.g. 13000 for CUDA 13.0).
int64_t cuda_toolkit_version();
// nvcc's __CUDA_ARCH_LIST__ (the virtual architectures compiled, e.g. "750,800,900"), "" when unknown.
const char* cuda_compiled_arch_list();
#endif

}  // namespace fmwiss_d2
