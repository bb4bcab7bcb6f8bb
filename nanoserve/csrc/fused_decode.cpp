// A whole decode step of a Llama-family decoder in one native call (see nanoserve/model/fused_decode.py).
//
// The layer loop of DecoderModel.forward, op for op, calling the kernels of native_kernels, cpu_linear
// and quant_linear through their exported tables (kernel_table.h): the same machine code as the per-op
// path, without ~10 Python calls and their dispatch per layer. Only decode steps (one query per
// sequence) of bf16 or fp32 models whose linears are all packed for the avx512 kernel (bf16 or fp32
// tiles, as the weight) or quantized on the native quantized kernels come here; fused_decode.py decides.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <vector>

#include "kernel_table.h"
#include "threads_probe.h"

namespace {

// One linear as the per-op path calls it: its kernel, its packed weight and the arguments the Python
// wrapper (cpu_linear.FastLinear.forward, quant_kernels._run) passes.
struct Linear {
  enum Kind { PACKED, A16, W8A8 } kind;
  torch::Tensor w;                     // packed: cpu_linear.pack_weight(_f32); a16 / w8a8: PackedWeight.qweight
  int64_t N;                           // output features
  c10::optional<torch::Tensor> bias;   // fp32, or none
  int64_t bits = 0, group_size = 0;    // a16
  torch::Tensor scales;                // a16: [nb, G, 64]; w8a8: [N_pad]
  c10::optional<torch::Tensor> offsets;  // a16: scale * zero' [nb, G, 64]; w8a8: zero points or none
  torch::Tensor wsum;                  // w8a8: [N_pad] int32
  int64_t min_rows = 0;                // a16: SCRATCH_MIN_ROWS; w8a8: W8A8_HYBRID_MIN_ROWS
};

Linear packed_linear(torch::Tensor packed, int64_t N, c10::optional<torch::Tensor> bias) {
  return Linear{Linear::PACKED, packed, N, bias};
}

Linear a16_linear(torch::Tensor wq, int64_t bits, int64_t N, int64_t group_size, torch::Tensor scales,
                  torch::Tensor offsets, c10::optional<torch::Tensor> bias, int64_t scratch_min_rows) {
  return Linear{Linear::A16, wq, N, bias, bits, group_size, scales, offsets, {}, scratch_min_rows};
}

Linear w8a8_linear(torch::Tensor wq, int64_t N, torch::Tensor wsum, torch::Tensor wscale,
                   c10::optional<torch::Tensor> wzero, c10::optional<torch::Tensor> bias, int64_t hybrid_min_rows) {
  return Linear{Linear::W8A8, wq, N, bias, 8, 0, wscale, wzero, wsum, hybrid_min_rows};
}

struct Layer {
  torch::Tensor in_norm, post_norm;   // [hidden] RMSNorm weights
  Linear qkv, o, gate_up, down;
  torch::Tensor k_cache, v_cache;     // [KVH, num_blocks, block_size, D]
};

class FusedDecoder {
 public:
  // linear_table, quant_table: None where no linear of that kind is in the model (its module not loaded).
  FusedDecoder(pybind11::handle native_table, pybind11::handle linear_table, pybind11::handle quant_table,
               torch::Tensor embed, torch::Tensor cos, torch::Tensor sin_signed, torch::Tensor final_norm,
               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps, double scale)
      : nk_(kernel_table_from<NativeKernelTable>(native_table, NANOSERVE_NATIVE_TABLE)),
        lk_(linear_table.is_none() ? nullptr
                                   : kernel_table_from<LinearKernelTable>(linear_table, NANOSERVE_LINEAR_TABLE)),
        qk_(quant_table.is_none() ? nullptr
                                  : kernel_table_from<QuantLinearKernelTable>(quant_table, NANOSERVE_QUANT_TABLE)),
        embed_(embed), cos_(cos), sin_(sin_signed), final_norm_(final_norm), H_(num_heads),
        KVH_(num_kv_heads), D_(head_dim), eps_(eps), scale_(scale) {}

  void add_layer(torch::Tensor in_norm, torch::Tensor post_norm, const Linear& qkv, const Linear& o,
                 const Linear& gate_up, const Linear& down, torch::Tensor k_cache, torch::Tensor v_cache) {
    for (const Linear* l : {&qkv, &o, &gate_up, &down}) {
      TORCH_CHECK(l->kind == Linear::PACKED ? lk_ != nullptr : qk_ != nullptr, "no kernel table for a linear");
    }
    layers_.push_back({in_norm, post_norm, qkv, o, gate_up, down, k_cache, v_cache});
  }

  // ids, positions, slots [B] int64; tables [B, nb] int64; ctx_lens [B] int64 -> hidden [B, hidden]
  // after the final norm, as DecoderModel.forward returns it.
  torch::Tensor forward(torch::Tensor ids, torch::Tensor positions, torch::Tensor slots, torch::Tensor tables,
                        torch::Tensor ctx_lens) const {
    const int64_t T = ids.size(0);
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
      torch::Tensor qkv = linear(h, L.qkv);  // [T, (H + 2 KVH) D]
      torch::Tensor q = nk_->rope_cache(qkv, cos, sin, slots, L.k_cache, L.v_cache, H_, KVH_);  // [T, H, D]
      torch::Tensor attn = nk_->decode_attention(q, L.k_cache, L.v_cache, tables, ctx_lens, scale_);
      torch::Tensor a = linear(attn.view({T, H_ * D_}), L.o);
      h = nk_->add_rms_norm(residual, a, L.post_norm, eps_);  // residual += a
      torch::Tensor gu = linear(h, L.gate_up);  // [T, 2I]
      x = linear(nk_->silu_mul(gu), L.down);  // [T, hidden]
    }
    return nk_->add_rms_norm(residual, x, final_norm_, eps_);
  }

  // Greedy decoding of up to `steps` tokens per sequence (the draft model's proposal loop, without a
  // return to Python per token). The first forward runs every row given: each sequence's tokens the
  // model has not seen yet, as decode rows (ids, positions, slots, ctx_lens [T] int64, tables [T, nb]
  // int64, as forward takes them); last_rows [B] int64 names each sequence's last row, whose lm_head
  // argmax is its first token. Each further step feeds the B tokens just chosen back, one row per
  // sequence. The loop ends early once every sequence has chosen a token that finishes it: one of its
  // stop_ids [B, S] int64 (padded with -1) at a step >= its stop_from [B] int64. Every position
  // written must have its block in the sequence's table. Returns [B, steps run] int64.
  torch::Tensor greedy_steps(torch::Tensor ids, torch::Tensor positions, torch::Tensor slots,
                             torch::Tensor tables, torch::Tensor ctx_lens, torch::Tensor last_rows,
                             torch::Tensor stop_ids, torch::Tensor stop_from, int64_t block_size,
                             int64_t steps, const Linear& lm_head) const {
    const int64_t B = last_rows.size(0);
    torch::Tensor out = torch::empty({B, steps}, ids.options());
    auto stops = stop_ids.accessor<int64_t, 2>();
    auto from = stop_from.accessor<int64_t, 1>();
    std::vector<char> done(B, 0);
    int64_t num_done = 0;
    torch::Tensor h = forward(ids, positions, slots, tables, ctx_lens).index_select(0, last_rows);
    torch::Tensor seq_tables = tables.index_select(0, last_rows).contiguous();  // [B, nb]
    // The fed-back rows' positions, slots and context lengths, written in place each step: a handful of
    // ATen ops per step (gather, divide, ...) cost more than the draft model's layers at batch 1.
    torch::Tensor pos = positions.index_select(0, last_rows).contiguous();  // [B] last position so far
    torch::Tensor slot = torch::empty_like(pos), ctx = torch::empty_like(pos);
    int64_t* pos_p = pos.data_ptr<int64_t>();
    int64_t* slot_p = slot.data_ptr<int64_t>();
    int64_t* ctx_p = ctx.data_ptr<int64_t>();
    const int64_t* table_p = seq_tables.data_ptr<int64_t>();
    const int64_t nb = seq_tables.size(1);
    torch::Tensor cur;
    for (int64_t s = 0; s < steps; ++s) {
      if (s > 0) {  // feed back the tokens just chosen
        for (int64_t b = 0; b < B; ++b) {
          const int64_t p = ++pos_p[b];
          TORCH_CHECK(p / block_size < nb, "greedy_steps: position ", p, " past the block table");
          slot_p[b] = table_p[b * nb + p / block_size] * block_size + p % block_size;
          ctx_p[b] = p + 1;
        }
        h = forward(cur, pos, slot, seq_tables, ctx);  // [B, hidden]
      }
      cur = linear(h, lm_head).argmax(-1);  // [B]
      out.select(1, s).copy_(cur);
      const int64_t* tok = cur.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b) {
        if (done[b] || s < from[b]) continue;
        for (int64_t j = 0; j < stops.size(1) && stops[b][j] >= 0; ++j) {
          if (stops[b][j] == tok[b]) { done[b] = 1; ++num_done; break; }
        }
      }
      if (num_done == B) return out.narrow(1, 0, s + 1);
    }
    return out;
  }

  int64_t num_layers() const { return int64_t(layers_.size()); }

 private:
  // x [T, K] contiguous, the model dtype -> [T, N]: the call the per-op layer makes, with the same arguments.
  torch::Tensor linear(const torch::Tensor& x, const Linear& l) const {
    switch (l.kind) {
      case Linear::PACKED:  // a packed FastLinear: bf16 or fp32 tiles, as its weight
        if (l.w.scalar_type() == at::kFloat) return lk_->gemm_f32_packed(x, l.w, l.N, l.bias);
        return lk_->gemm_bf16_packed(x, l.w, l.N, l.bias);
      case Linear::A16:
        return qk_->linear_a16(x, l.w, l.bits, l.N, l.group_size, l.scales, *l.offsets, l.bias, l.min_rows);
      case Linear::W8A8: return qk_->linear_w8a8(x, l.w, l.N, l.wsum, l.scales, l.offsets, l.bias, l.min_rows);
    }
    TORCH_CHECK(false, "unknown linear kind");
  }

  const NativeKernelTable* nk_;
  const LinearKernelTable* lk_;        // null: no bf16 linear in the model
  const QuantLinearKernelTable* qk_;   // null: no quantized linear
  torch::Tensor embed_, cos_, sin_, final_norm_;
  int64_t H_, KVH_, D_;
  double eps_, scale_;
  std::vector<Layer> layers_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  py::class_<Linear>(m, "Linear");
  m.def("packed_linear", &packed_linear, "a FastLinear packed for the avx512 kernel, bf16 or fp32: (packed, N, fp32 bias)");
  m.def("a16_linear", &a16_linear, "a w8a16 / w4a16 PackedWeight: (codes, bits, N, group_size, scales, "
        "offsets, fp32 bias, scratch_min_rows)");
  m.def("w8a8_linear", &w8a8_linear, "a w8a8 PackedWeight: (codes, N, wsum, scales, zeros, fp32 bias, "
        "hybrid_min_rows)");
  py::class_<FusedDecoder>(m, "FusedDecoder")
      .def(py::init<py::handle, py::handle, py::handle, torch::Tensor, torch::Tensor, torch::Tensor,
                    torch::Tensor, int64_t, int64_t, int64_t, double, double>())
      .def("add_layer", &FusedDecoder::add_layer)
      // No Python object is touched inside: the engine thread lets the server's threads run meanwhile.
      .def("forward", &FusedDecoder::forward, py::call_guard<py::gil_scoped_release>())
      .def("greedy_steps", &FusedDecoder::greedy_steps, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_layers", &FusedDecoder::num_layers);
  m.def("parallel_threads_used", &parallel_threads_used, "threads at::parallel_for used for n items");
}
