// A whole decode step of a Llama-family decoder in one native call (see nanoserve/model/fused_decode.py).
//
// The layer loop of DecoderModel.forward, op for op, calling the kernels of native_kernels and
// cpu_linear through their exported tables (kernel_table.h): the same machine code as the per-op path,
// without ~10 Python calls and their dispatch per layer. Only decode steps (one query per sequence) of
// bf16 models whose linears are all packed for the avx512 kernel come here; fused_decode.py decides.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <vector>

#include "kernel_table.h"
#include "threads_probe.h"

namespace {

struct Layer {
  torch::Tensor in_norm, post_norm;          // [hidden] RMSNorm weights
  torch::Tensor qkv, o, gate_up, down;        // packed weights (cpu_linear.pack_weight)
  c10::optional<torch::Tensor> qkv_bias, o_bias, gate_up_bias, down_bias;  // fp32, zero-padded, or none
  torch::Tensor k_cache, v_cache;            // [KVH, num_blocks, block_size, D]
};

class FusedDecoder {
 public:
  FusedDecoder(pybind11::handle native_table, pybind11::handle linear_table, torch::Tensor embed,
               torch::Tensor cos, torch::Tensor sin_signed, torch::Tensor final_norm, int64_t num_heads,
               int64_t num_kv_heads, int64_t head_dim, int64_t intermediate, double eps, double scale)
      : nk_(kernel_table_from<NativeKernelTable>(native_table, NANOSERVE_NATIVE_TABLE)),
        lk_(kernel_table_from<LinearKernelTable>(linear_table, NANOSERVE_LINEAR_TABLE)),
        embed_(embed), cos_(cos), sin_(sin_signed), final_norm_(final_norm), H_(num_heads),
        KVH_(num_kv_heads), D_(head_dim), hidden_(embed.size(1)), I_(intermediate), eps_(eps),
        scale_(scale) {}

  void add_layer(torch::Tensor in_norm, torch::Tensor post_norm, torch::Tensor qkv,
                 c10::optional<torch::Tensor> qkv_bias, torch::Tensor o, c10::optional<torch::Tensor> o_bias,
                 torch::Tensor gate_up, c10::optional<torch::Tensor> gate_up_bias, torch::Tensor down,
                 c10::optional<torch::Tensor> down_bias, torch::Tensor k_cache, torch::Tensor v_cache) {
    layers_.push_back({in_norm, post_norm, qkv, o, gate_up, down, qkv_bias, o_bias, gate_up_bias,
                       down_bias, k_cache, v_cache});
  }

  // ids, positions, slots [B] int64; tables [B, nb] int64; ctx_lens [B] int64 -> hidden [B, hidden]
  // after the final norm, as DecoderModel.forward returns it.
  torch::Tensor forward(torch::Tensor ids, torch::Tensor positions, torch::Tensor slots, torch::Tensor tables,
                        torch::Tensor ctx_lens) const {
    const int64_t T = ids.size(0), qkv_n = (H_ + 2 * KVH_) * D_;
    const auto dtype = embed_.scalar_type();
    torch::Tensor x = at::embedding(embed_, ids);  // [T, hidden]
    // RotaryEmbedding.gather's values: the fp32 tables at the positions, rounded to the model dtype.
    torch::Tensor cos = cos_.index_select(0, positions).to(dtype);  // [T, D]
    torch::Tensor sin = sin_.index_select(0, positions).to(dtype);
    torch::Tensor residual;  // the residual stream; undefined before layer 0
    for (const Layer& L : layers_) {
      torch::Tensor h;
      if (!residual.defined()) {
        residual = x;
        h = nk_->add_rms_norm(x, c10::nullopt, L.in_norm, eps_);
      } else {
        h = nk_->add_rms_norm(residual, x, L.in_norm, eps_);  // residual += x
      }
      torch::Tensor qkv = lk_->gemm_bf16_packed(h, L.qkv, qkv_n, L.qkv_bias);  // [T, (H + 2 KVH) D]
      torch::Tensor q = nk_->rope_cache(qkv, cos, sin, slots, L.k_cache, L.v_cache, H_, KVH_);  // [T, H, D]
      torch::Tensor attn = nk_->decode_attention(q, L.k_cache, L.v_cache, tables, ctx_lens, scale_);
      torch::Tensor a = lk_->gemm_bf16_packed(attn.view({T, H_ * D_}), L.o, hidden_, L.o_bias);
      h = nk_->add_rms_norm(residual, a, L.post_norm, eps_);  // residual += a
      torch::Tensor gu = lk_->gemm_bf16_packed(h, L.gate_up, 2 * I_, L.gate_up_bias);  // [T, 2I]
      x = lk_->gemm_bf16_packed(nk_->silu_mul(gu), L.down, hidden_, L.down_bias);  // [T, hidden]
    }
    return nk_->add_rms_norm(residual, x, final_norm_, eps_);
  }

  int64_t num_layers() const { return int64_t(layers_.size()); }

 private:
  const NativeKernelTable* nk_;
  const LinearKernelTable* lk_;
  torch::Tensor embed_, cos_, sin_, final_norm_;
  int64_t H_, KVH_, D_, hidden_, I_;
  double eps_, scale_;
  std::vector<Layer> layers_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<FusedDecoder>(m, "FusedDecoder")
      .def(py::init<py::handle, py::handle, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, int64_t,
                    int64_t, int64_t, int64_t, double, double>())
      .def("add_layer", &FusedDecoder::add_layer)
      // No Python object is touched inside: the engine thread lets the server's threads run meanwhile.
      .def("forward", &FusedDecoder::forward, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_layers", &FusedDecoder::num_layers);
  m.def("parallel_threads_used", &parallel_threads_used, "threads at::parallel_for used for n items");
}
