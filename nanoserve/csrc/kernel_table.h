// Function tables the native extensions export to one another (see nanoserve/model/fused_decode.py).
//
// Each extension is its own shared object, loaded privately by Python, so one cannot link against
// another's symbols. Instead native_kernels and cpu_linear each publish a table of pointers to their
// kernel entry points as a PyCapsule (`kernel_table` on the module), and fused_decode calls the very
// same machine code the per-op Python path calls: the two paths round identically, bit for bit.
// Every extension's build name hashes this header, so the tables on both sides always agree.
#pragma once
#include <torch/extension.h>

#define NANOSERVE_NATIVE_TABLE "nanoserve.native_kernels.table"
#define NANOSERVE_LINEAR_TABLE "nanoserve.cpu_linear.table"
#define NANOSERVE_QUANT_TABLE "nanoserve.quant_linear.table"

struct NativeKernelTable {
  torch::Tensor (*add_rms_norm)(torch::Tensor x, c10::optional<torch::Tensor> residual, torch::Tensor w,
                                double eps);
  torch::Tensor (*silu_mul)(torch::Tensor gu);
  torch::Tensor (*rope_cache)(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor slots,
                              torch::Tensor k_cache, torch::Tensor v_cache, int64_t H, int64_t KVH);
  torch::Tensor (*decode_attention)(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                    torch::Tensor tables, torch::Tensor ctx_lens, double scale);
};

struct LinearKernelTable {
  torch::Tensor (*gemm_bf16_packed)(torch::Tensor x, torch::Tensor wp, int64_t N,
                                    c10::optional<torch::Tensor> bias);
  torch::Tensor (*gemm_f32_packed)(torch::Tensor x, torch::Tensor wp, int64_t N,
                                   c10::optional<torch::Tensor> bias);
};

// quant_linear's kernels (csrc/quant_linear.cpp; packed layouts in nanoserve/model/quant_kernels.py).
struct QuantLinearKernelTable {
  torch::Tensor (*linear_a16)(torch::Tensor x, torch::Tensor wq, int64_t bits, int64_t N, int64_t group_size,
                              torch::Tensor scales, torch::Tensor offsets, c10::optional<torch::Tensor> bias,
                              int64_t scratch_min_rows);
  torch::Tensor (*linear_w8a8)(torch::Tensor x, torch::Tensor wq, int64_t N, torch::Tensor wsum,
                               torch::Tensor wscale, c10::optional<torch::Tensor> wzero,
                               c10::optional<torch::Tensor> bias, int64_t hybrid_min_rows);
};

// The capsule a module publishes as `kernel_table` (the table is a static of that module: no destructor).
inline pybind11::object kernel_table_capsule(const void* table, const char* name) {
  PyObject* capsule = PyCapsule_New(const_cast<void*>(table), name, nullptr);
  if (capsule == nullptr) throw pybind11::error_already_set();
  return pybind11::reinterpret_steal<pybind11::object>(capsule);
}

// The table inside a capsule from kernel_table_capsule; raises (TypeError) on a capsule of another name.
template <typename Table>
inline const Table* kernel_table_from(pybind11::handle capsule, const char* name) {
  void* p = PyCapsule_GetPointer(capsule.ptr(), name);
  if (p == nullptr) throw pybind11::error_already_set();
  return static_cast<const Table*>(p);
}
