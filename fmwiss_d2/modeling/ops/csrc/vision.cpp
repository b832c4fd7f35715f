// Python bindings of fmwiss_d2._C: argument checks shared by every device, then dispatch on the device
// of `value` (CPU kernel always; CUDA kernel when built WITH_CUDA); plus the build's provenance (torch and
// CUDA versions, CUDA architectures), which the Python loader compares with the running torch and GPU.
#include <torch/extension.h>

#include "ms_deform_attn.h"

// Written by setup.py into the build folder: FMWISS_BUILD_TORCH_VERSION, FMWISS_BUILD_TORCH_CUDA_VERSION
// (torch.version.cuda of the torch built against, "" for a CPU torch) and FMWISS_BUILD_CUDA_ARCH_LIST (the
// TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for, "" without CUDA).
#if __has_include("fmwiss_d2_build_info.h")
#include "fmwiss_d2_build_info.h"
#endif
#ifndef FMWISS_BUILD_TORCH_VERSION
#define FMWISS_BUILD_TORCH_VERSION ""
#endif
#ifndef FMWISS_BUILD_TORCH_CUDA_VERSION
#define FMWISS_BUILD_TORCH_CUDA_VERSION ""
#endif
#ifndef FMWISS_BUILD_CUDA_ARCH_LIST
#define FMWISS_BUILD_CUDA_ARCH_LIST ""
#endif

// The same facts as one marker string kept in the binary, so that the loader can name the build's versions
// even when the library cannot be imported (e.g. "undefined symbol" after a torch upgrade).
extern "C" __attribute__((used, visibility("default"))) const char fmwiss_d2_build_info[] =
    "FMWISS_D2_BUILD_INFO{torch=" FMWISS_BUILD_TORCH_VERSION ";torch_cuda=" FMWISS_BUILD_TORCH_CUDA_VERSION
    ";archs=" FMWISS_BUILD_CUDA_ARCH_LIST
#ifdef WITH_CUDA
    ";with_cuda=1}";
#else
    ";with_cuda=0}";
#endif

namespace fmwiss_d2 {
namespace {

void check_same(const at::Tensor& t, const char* name, const at::Tensor& value) {
  TORCH_CHECK(t.device() == value.device(), "ms_deform_attn: ", name, " is on ", t.device(),
              " but value is on ", value.device(), "; all arguments must be on the same device");
  TORCH_CHECK(t.scalar_type() == value.scalar_type(), "ms_deform_attn: ", name, " has dtype ",
              t.scalar_type(), " but value has dtype ", value.scalar_type(), "; they must match");
}

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must have shape (N, S, n_heads, C), got ",
              value.sizes());
  TORCH_CHECK(at::isFloatingType(value.scalar_type()),
              "ms_deform_attn: value must be a floating-point tensor, got ", value.scalar_type());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must have shape (n_levels, 2), got ", spatial_shapes.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes must be int64, got ", spatial_shapes.scalar_type());
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L,
              "ms_deform_attn: level_start_index must have shape (n_levels,) = (", L, ",), got ",
              level_start_index.sizes());
  TORCH_CHECK(level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: level_start_index must be int64, got ", level_start_index.scalar_type());
  TORCH_CHECK(spatial_shapes.device() == value.device() && level_start_index.device() == value.device(),
              "ms_deform_attn: spatial_shapes (", spatial_shapes.device(), ") and level_start_index (",
              level_start_index.device(), ") must be on the device of value (", value.device(), ")");
  const int64_t N = value.size(0), H = value.size(2);
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == N &&
                  sampling_locations.size(2) == H && sampling_locations.size(3) == L &&
                  sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must have shape (N, Lq, n_heads, n_levels, n_points, 2) "
              "with N=", N, ", n_heads=", H, ", n_levels=", L, ", got ", sampling_locations.sizes());
  const int64_t Lq = sampling_locations.size(1), P = sampling_locations.size(4);
  TORCH_CHECK(attention_weights.dim() == 5 && attention_weights.size(0) == N && attention_weights.size(1) == Lq &&
                  attention_weights.size(2) == H && attention_weights.size(3) == L &&
                  attention_weights.size(4) == P,
              "ms_deform_attn: attention_weights must have shape (N, Lq, n_heads, n_levels, n_points) = (", N,
              ", ", Lq, ", ", H, ", ", L, ", ", P, "), got ", attention_weights.sizes());
  TORCH_CHECK(sampling_locations.device() == value.device() && attention_weights.device() == value.device(),
              "ms_deform_attn: sampling_locations (", sampling_locations.device(), ") and attention_weights (",
              attention_weights.device(), ") must be on the device of value (", value.device(), ")");
  // Mixed precision: float16/bfloat16 values may come with float32 locations and weights.
  const auto vt = value.scalar_type(), lt = sampling_locations.scalar_type();
  const bool half_value = vt == at::kHalf || vt == at::kBFloat16;
  TORCH_CHECK(lt == vt || (half_value && lt == at::kFloat), "ms_deform_attn: sampling_locations has dtype ", lt,
              " but value has dtype ", vt, "; they must match (or be float32 with a float16/bfloat16 value)");
  TORCH_CHECK(attention_weights.scalar_type() == lt, "ms_deform_attn: attention_weights has dtype ",
              attention_weights.scalar_type(), " but sampling_locations has dtype ", lt, "; they must match");
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const auto v = value.contiguous();
  const auto ss = spatial_shapes.contiguous();
  const auto lsi = level_start_index.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_forward_cuda(v, ss, lsi, loc, attn);
#else
    TORCH_CHECK(false, "ms_deform_attn: value is on ", value.device(),
                " but fmwiss_d2._C was built without CUDA; rebuild with FORCE_CUDA=1 "
                "pip install --no-build-isolation -e .");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "ms_deform_attn: unsupported device ", value.device(), " for value");
  return ms_deform_attn_forward_cpu(v, ss, lsi, loc, attn);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights, const at::Tensor& grad_output,
    bool deterministic) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const int64_t N = value.size(0), H = value.size(2), C = value.size(3), Lq = sampling_locations.size(1);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == N && grad_output.size(1) == Lq &&
                  grad_output.size(2) == H * C,
              "ms_deform_attn: grad_output must have shape (N, Lq, n_heads * C) = (", N, ", ", Lq, ", ", H * C,
              "), got ", grad_output.sizes());
  check_same(grad_output, "grad_output", value);
  const auto v = value.contiguous();
  const auto ss = spatial_shapes.contiguous();
  const auto lsi = level_start_index.contiguous();
  const auto loc = sampling_locations.contiguous();
  const auto attn = attention_weights.contiguous();
  const auto go = grad_output.contiguous();
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_backward_cuda(v, ss, lsi, loc, attn, go, deterministic);
#else
    TORCH_CHECK(false, "ms_deform_attn: value is on ", value.device(),
                " but fmwiss_d2._C was built without CUDA; rebuild with FORCE_CUDA=1 "
                "pip install --no-build-isolation -e .");
#endif
  }
  TORCH_CHECK(value.is_cpu(), "ms_deform_attn: unsupported device ", value.device(), " for value");
  return ms_deform_attn_backward_cpu(v, ss, lsi, loc, attn, go);  // always deterministic
}

}  // namespace
}  // namespace fmwiss_d2

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fmwiss_d2 compiled ops: multi-scale deformable attention (CPU"
#ifdef WITH_CUDA
            " and CUDA"
#endif
            " kernels)";
  m.attr("with_cuda") =
#ifdef WITH_CUDA
      true;
#else
      false;
#endif
  m.attr("torch_version") = FMWISS_BUILD_TORCH_VERSION;
  m.attr("torch_cuda_version") = FMWISS_BUILD_TORCH_CUDA_VERSION;
  m.attr("cuda_arch_list") = FMWISS_BUILD_CUDA_ARCH_LIST;
  m.attr("build_info") = fmwiss_d2_build_info;
#ifdef WITH_CUDA
  m.attr("cuda_toolkit_version") = fmwiss_d2::cuda_toolkit_version();
  m.attr("cuda_compiled_arch_list") = fmwiss_d2::cuda_compiled_arch_list();
#else
  m.attr("cuda_toolkit_version") = 0;
  m.attr("cuda_compiled_arch_list") = "";
#endif
  m.def("ms_deform_attn_forward", &fmwiss_d2::forward, "multi-scale deformable attention forward",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"));
  m.def("ms_deform_attn_backward", &fmwiss_d2::backward,
        "multi-scale deformable attention backward: (grad_value, grad_sampling_locations, grad_attention_weights); "
        "deterministic=True makes the CUDA kernel accumulate grad_value without atomics (the CPU kernel is "
        "always deterministic)",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("grad_output"), py::arg("deterministic") = false);
}
