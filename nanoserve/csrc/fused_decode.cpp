// A whole decode step of a Llama-family decoder in one native call (see nanoserve/model/fused_decode.py).
//
// The layer loop of DecoderModel.forward, op for op, calling the kernels of native_kernels, cpu_linear
// and quant_linear through their exported tables (kernel_table.h): the same machine code as the per-op
// path, without ~10 Python calls and their dispatch per layer. Only decode steps (one query per
// sequence) of bf16 or fp32 models whose linears are all packed for the avx512 kernel (bf16 or fp32
// tiles, as the weight) or quantized on the native quantized kernels come here; fused_decode.py decides.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <pybind11/stl.h>
#include <algorithm>
#include <cmath>
#include <cstring>
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
               torch::Tensor embed, int64_t vocab_size, torch::Tensor cos,
               torch::Tensor sin_signed, torch::Tensor final_norm, int64_t num_heads, int64_t num_kv_heads,
               int64_t head_dim, double eps, double scale, int64_t mlp_chunk_bytes)
      : nk_(kernel_table_from<NativeKernelTable>(native_table, NANOSERVE_NATIVE_TABLE)),
        lk_(linear_table.is_none() ? nullptr
                                   : kernel_table_from<LinearKernelTable>(linear_table, NANOSERVE_LINEAR_TABLE)),
        qk_(quant_table.is_none() ? nullptr
                                  : kernel_table_from<QuantLinearKernelTable>(quant_table, NANOSERVE_QUANT_TABLE)),
        embed_(embed), vocab_(vocab_size), cos_(cos), sin_(sin_signed), final_norm_(final_norm), H_(num_heads),
        KVH_(num_kv_heads), D_(head_dim), eps_(eps), scale_(scale), mlp_chunk_bytes_(mlp_chunk_bytes) {}

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
    TORCH_CHECK(ids.is_contiguous() && positions.is_contiguous(), "ids and positions must be contiguous");
    torch::Tensor x = embed_.dim() == 2 ? gather_rows(embed_, ids.data_ptr<int64_t>(), T, "token id")
                                        : gather_packed_rows(ids.data_ptr<int64_t>(), T);  // [T, hidden]
    // RotaryEmbedding.gather's values: the fp32 tables at the positions, rounded to the model dtype.
    torch::Tensor cos = gather_rows(cos_, positions.data_ptr<int64_t>(), T, "position");  // [T, D]
    torch::Tensor sin = gather_rows(sin_, positions.data_ptr<int64_t>(), T, "position");
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
      x = mlp(h, L);  // [T, hidden]
    }
    return nk_->add_rms_norm(residual, x, final_norm_, eps_);
  }

  // Greedy decoding of up to `steps` tokens per sequence (the draft model's proposal loop, without a
  // return to Python per token). Sequence b brings counts[b] tokens the model has not seen yet (ids,
  // concatenated), the first at position starts[b], and its block table tables[b]. The first forward
  // runs all of them as decode rows; each sequence's last row's lm_head argmax is its first token.
  // Each further step feeds the B tokens just chosen back, one row per sequence. The loop ends early
  // once every sequence has chosen a token that finishes it: one of its stop_ids[b] at a step >=
  // stop_from[b]. Every position written must have its block in the sequence's table. Plain lists in
  // and out: building the argument tensors in Python cost more than a draft forward at batch 1.
  // Returns the tokens chosen, [B][steps run].
  std::vector<std::vector<int64_t>> greedy_steps(
      const std::vector<int64_t>& ids, const std::vector<int64_t>& counts, const std::vector<int64_t>& starts,
      const std::vector<std::vector<int64_t>>& tables, const std::vector<std::vector<int64_t>>& stop_ids,
      const std::vector<int64_t>& stop_from, int64_t block_size, int64_t steps, const Linear& lm_head) const {
    const int64_t B = int64_t(counts.size()), T = int64_t(ids.size());
    TORCH_CHECK(B > 0 && int64_t(starts.size()) == B && int64_t(tables.size()) == B &&
                int64_t(stop_ids.size()) == B && int64_t(stop_from.size()) == B, "greedy_steps: per-sequence lists differ in length");
    int64_t nb = 1;
    for (const auto& t : tables) nb = std::max<int64_t>(nb, int64_t(t.size()));
    const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    // The first forward's rows (ids, positions, slots, ctx_lens [T]; tables [T, nb], padded with block 0)
    // and the fed-back rows' (pos, slot, ctx [B]; seq_tables [B, nb]), rewritten in place each step.
    torch::Tensor rows = torch::empty({4, T}, i64), row_tables = torch::zeros({T, nb}, i64);
    torch::Tensor fed = torch::empty({4, B}, i64), seq_tables = torch::zeros({B, nb}, i64);
    int64_t* r = rows.data_ptr<int64_t>();
    int64_t* rt = row_tables.data_ptr<int64_t>();
    int64_t* f = fed.data_ptr<int64_t>();  // rows: token, position, slot, ctx_len
    int64_t* st = seq_tables.data_ptr<int64_t>();
    std::vector<int64_t> last_rows(B);
    auto slot_of = [&](const std::vector<int64_t>& table, int64_t p) {
      TORCH_CHECK(p >= 0 && p / block_size < int64_t(table.size()), "greedy_steps: position ", p, " past the block table");
      return table[p / block_size] * block_size + p % block_size;
    };
    int64_t t = 0;
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(counts[b] > 0 && t + counts[b] <= T, "greedy_steps: counts do not cover ids");
      std::copy(tables[b].begin(), tables[b].end(), st + b * nb);
      for (int64_t j = 0; j < counts[b]; ++j, ++t) {
        const int64_t p = starts[b] + j;
        r[t] = ids[t];
        r[T + t] = p;
        r[2 * T + t] = slot_of(tables[b], p);
        r[3 * T + t] = p + 1;  // each token attends to itself and everything before it
        std::copy(tables[b].begin(), tables[b].end(), rt + t * nb);
      }
      last_rows[b] = t - 1;
      f[B + b] = starts[b] + counts[b] - 1;  // the last position so far
    }
    TORCH_CHECK(t == T, "greedy_steps: counts do not cover ids");
    torch::Tensor h = forward(rows[0], rows[1], rows[2], row_tables, rows[3]);  // [T, hidden]
    if (T != B) h = h.index_select(0, torch::tensor(last_rows, i64));  // [B, hidden]
    std::vector<std::vector<int64_t>> out(B);
    std::vector<char> done(B, 0);
    int64_t num_done = 0;
    for (int64_t s = 0; s < steps; ++s) {
      if (s > 0) {  // feed back the tokens just chosen
        for (int64_t b = 0; b < B; ++b) {
          const int64_t p = ++f[B + b];
          f[2 * B + b] = slot_of(tables[b], p);
          f[3 * B + b] = p + 1;
        }
        h = forward(fed[0], fed[1], fed[2], seq_tables, fed[3]);  // [B, hidden]
      }
      argmax_rows(linear(h, lm_head), f);  // fed[0] = the tokens chosen
      for (int64_t b = 0; b < B; ++b) {
        out[b].push_back(f[b]);
        if (done[b] || s < stop_from[b]) continue;
        for (int64_t id : stop_ids[b]) {
          if (id == f[b]) { done[b] = 1; ++num_done; break; }
        }
      }
      if (num_done == B) break;
    }
    return out;
  }

  int64_t num_layers() const { return int64_t(layers_.size()); }
  int64_t mlp_chunk_bytes() const { return mlp_chunk_bytes_; }

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

  // down(silu(gate(h)) * up(h)) as GatedMLP.forward computes it: in row chunks whose [rows, 2I]
  // activation stays under mlp_chunk_bytes (layers.MLP_CHUNK_BYTES: the allocator's mmap threshold).
  torch::Tensor mlp(const torch::Tensor& h, const Layer& L) const {
    const int64_t T = h.size(0);
    const int64_t rows = std::max<int64_t>(1, mlp_chunk_bytes_ / (L.gate_up.N * h.element_size()));
    if (T <= rows) return linear(nk_->silu_mul(linear(h, L.gate_up)), L.down);
    std::vector<torch::Tensor> parts;
    for (int64_t r = 0; r < T; r += rows) {
      const torch::Tensor c = h.narrow(0, r, std::min(rows, T - r));  // rows of a contiguous [T, K]: contiguous
      parts.push_back(linear(nk_->silu_mul(linear(c, L.gate_up)), L.down));
    }
    return torch::cat(parts);
  }

  // table[idx[t]] for t < T, as rows of a new [T, C] tensor of the model's dtype (at::embedding and
  // index_select + to: the same values, without three ATen ops' dispatch per forward).
  torch::Tensor gather_rows(const torch::Tensor& table, const int64_t* idx, int64_t T, const char* what) const {
    TORCH_CHECK(table.is_contiguous(), "gather_rows: table not contiguous");
    const int64_t R = table.size(0), C = table.size(1);
    torch::Tensor out = torch::empty({T, C}, embed_.options());
    for (int64_t t = 0; t < T; ++t) TORCH_CHECK(idx[t] >= 0 && idx[t] < R, what, " ", idx[t], " out of range [0, ", R, ")");
    if (table.scalar_type() == out.scalar_type()) {
      const size_t row_bytes = size_t(C) * table.element_size();
      const char* src = static_cast<const char*>(table.data_ptr());
      char* dst = static_cast<char*>(out.data_ptr());
      for (int64_t t = 0; t < T; ++t) std::memcpy(dst + t * row_bytes, src + idx[t] * row_bytes, row_bytes);
    } else {  // the fp32 rotary tables into a bf16 model: round to nearest even, as .to(bf16)
      TORCH_CHECK(table.scalar_type() == at::kFloat && out.scalar_type() == at::kBFloat16, "gather_rows dtypes");
      const float* src = table.data_ptr<float>();
      at::BFloat16* dst = out.data_ptr<at::BFloat16>();
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) dst[t * C + c] = at::BFloat16(src[idx[t] * C + c]);
    }
    return out;
  }

  // Rows idx[t] of a tied embedding read from the lm_head's packed weight (model/tied_embedding.py):
  // bf16 [nb, K2, 64, 2] or fp32 [nb, K, 64] (cpu_linear.pack_weight / _f32). Row n, column k sits in
  // block n / 64 at lane n % 64: the same values as the plain table's row, copied element by element.
  torch::Tensor gather_packed_rows(const int64_t* idx, int64_t T) const {
    const int64_t C = final_norm_.size(0);
    torch::Tensor out = torch::empty({T, C}, embed_.options());
    for (int64_t t = 0; t < T; ++t)
      TORCH_CHECK(idx[t] >= 0 && idx[t] < vocab_, "token id ", idx[t], " out of range [0, ", vocab_, ")");
    if (embed_.dim() == 4) {
      const int64_t K2 = embed_.size(1);
      const uint32_t* src = static_cast<const uint32_t*>(embed_.data_ptr());  // a k pair: 2 bf16 = 4 bytes
      at::BFloat16* dst = out.data_ptr<at::BFloat16>();
      for (int64_t t = 0; t < T; ++t) {
        const uint32_t* block = src + (idx[t] / 64) * K2 * 64 + idx[t] % 64;
        for (int64_t k2 = 0; k2 < C / 2; ++k2) std::memcpy(dst + t * C + 2 * k2, block + k2 * 64, 4);
        if (C % 2) std::memcpy(dst + t * C + C - 1, block + (C / 2) * 64, 2);
      }
    } else {
      TORCH_CHECK(embed_.dim() == 3 && embed_.scalar_type() == at::kFloat, "embed: a plain or packed table");
      const int64_t K = embed_.size(1);
      const float* src = embed_.data_ptr<float>();
      float* dst = out.data_ptr<float>();
      for (int64_t t = 0; t < T; ++t) {
        const float* block = src + (idx[t] / 64) * K * 64 + idx[t] % 64;
        for (int64_t k = 0; k < C; ++k) dst[t * C + k] = block[k * 64];
      }
    }
    return out;
  }

  // tok[b] = argmax of logits row b [B, V] (the first maximum; a NaN counts as the largest, as in
  // torch.argmax).
  static void argmax_rows(const torch::Tensor& logits, int64_t* tok) {
    const torch::Tensor l = logits.scalar_type() == at::kFloat ? logits.contiguous() : logits.to(at::kFloat);
    const int64_t B = l.size(0), V = l.size(1);
    const float* p = l.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      const float* row = p + b * V;
      float best = row[0];
      int64_t arg = 0;
      for (int64_t v = 1; v < V && !std::isnan(best); ++v) {
        if (!(row[v] <= best)) { best = row[v]; arg = v; }
      }
      tok[b] = arg;
    }
  }

  const NativeKernelTable* nk_;
  const LinearKernelTable* lk_;        // null: no bf16 linear in the model
  const QuantLinearKernelTable* qk_;   // null: no quantized linear
  torch::Tensor embed_;  // the plain [vocab, hidden] table, or the tied lm_head's packed weight (3-D, 4-D)
  int64_t vocab_;
  torch::Tensor cos_, sin_, final_norm_;
  int64_t H_, KVH_, D_;
  double eps_, scale_;
  int64_t mlp_chunk_bytes_;
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
      .def(py::init<py::handle, py::handle, py::handle, torch::Tensor, int64_t, torch::Tensor,
                    torch::Tensor, torch::Tensor, int64_t, int64_t, int64_t, double, double, int64_t>())
      .def("add_layer", &FusedDecoder::add_layer)
      // No Python object is touched inside: the engine thread lets the server's threads run meanwhile.
      .def("forward", &FusedDecoder::forward, py::call_guard<py::gil_scoped_release>())
      .def("greedy_steps", &FusedDecoder::greedy_steps, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_layers", &FusedDecoder::num_layers)
      .def_property_readonly("mlp_chunk_bytes", &FusedDecoder::mlp_chunk_bytes);
  m.def("parallel_threads_used", &parallel_threads_used, "threads at::parallel_for used for n items");
}
