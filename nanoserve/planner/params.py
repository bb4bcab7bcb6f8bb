"""Exact parameter counts by component, and FLOPs per token.

The count walks the same tensors a Hugging Face checkpoint holds, so `param_count(spec).value` equals
transformers' `model.num_parameters()` for llama / mistral / qwen2 / qwen3 / mixtral / gpt2.

FLOPs convention (2 FLOPs per multiply-accumulate):
  forward  = 2·N_matmul + attention,   training = 3 × forward (backward ≈ 2 × forward)
  N_matmul = the linear weights one token multiplies on its active path, lm_head included even when
             tied (the matmul still runs); embedding / position lookups, norms and biases excluded.
  attention (per token, per layer) = 2·ctx·q_dim for QKᵀ + 2·ctx·q_dim for A·V = 4·ctx·q_dim, where
             ctx is the number of keys the token attends to. Averaged over a causal sequence of S
             tokens, ctx ≈ S/2, which gives Kaplan et al.'s 2·layers·S·d_attn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.derivation import Result, derive
from nanoserve.planner.models import ModelSpec, get_model


@dataclass(frozen=True)
class ParamBreakdown:
    """Parameters by component, summed over all layers. MoE experts are counted in `mlp`."""

    embedding: int
    position_embedding: int
    attn_q: int           # weights + bias of every layer's q_proj
    attn_k: int
    attn_v: int
    attn_o: int
    qk_norm: int
    mlp: int              # dense MLP, or all experts of an MoE
    router: int
    norms: int            # per-layer norms and the final norm
    lm_head: int          # 0 when tied to the embedding
    active_mlp: int       # MLP parameters one token uses (top-k experts)

    @property
    def attention(self) -> int:
        return self.attn_q + self.attn_k + self.attn_v + self.attn_o + self.qk_norm

    @property
    def total(self) -> int:
        return (self.embedding + self.position_embedding + self.attention + self.mlp + self.router
                + self.norms + self.lm_head)

    @property
    def active(self) -> int:
        """Parameters a single token touches (differs from total only for MoE)."""
        return self.total - self.mlp + self.active_mlp

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d.update(attention=self.attention, total=self.total, active=self.active)
        return d


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _mlp_params(m: ModelSpec) -> int:
    """One dense MLP (or one expert)."""
    h, i, b = m.hidden, m.intermediate, m.mlp_bias
    if m.mlp_kind == "swiglu":  # gate and up: h→i, down: i→h
        return 2 * _linear(h, i, b) + _linear(i, h, b)
    return _linear(h, i, b) + _linear(i, h, b)


def param_breakdown(model: ModelSpec | str) -> ParamBreakdown:
    m = get_model(model)
    L, h = m.layers, m.hidden
    norm = h * (2 if m.norm_kind == "layernorm" else 1)
    experts = max(m.num_experts, 1)
    one_mlp = _mlp_params(m)
    return ParamBreakdown(
        embedding=m.vocab * h,
        position_embedding=m.learned_positions * h,
        attn_q=L * _linear(h, m.q_dim, m.qkv_bias),
        attn_k=L * _linear(h, m.kv_dim, m.qkv_bias),
        attn_v=L * _linear(h, m.kv_dim, m.qkv_bias),
        attn_o=L * _linear(m.q_dim, h, m.o_bias),
        qk_norm=L * 2 * m.head_dim if m.qk_norm else 0,
        mlp=L * experts * one_mlp,
        router=L * h * m.num_experts,
        norms=(2 * L + 1) * norm,
        lm_head=0 if m.tied_embeddings else m.vocab * h,
        active_mlp=L * (m.experts_per_token if m.is_moe else 1) * one_mlp,
    )


def param_count(model: ModelSpec | str, active: bool = False) -> Result:
    """Exact parameter count (total, or active per token for MoE), with the per-component derivation."""
    m = get_model(model)
    b = param_breakdown(m)
    L, h, qd, kvd = m.layers, m.hidden, m.q_dim, m.kv_dim
    qb = " + q_dim" if m.qkv_bias else ""
    steps = [
        derive("embedding", b.embedding, "params", "vocab·hidden", f"{m.vocab}·{h}"),
        derive("attention", b.attention, "params",
               f"layers·(hidden·q_dim + 2·hidden·kv_dim + q_dim·hidden{qb and ' + biases'}"
               f"{' + 2·head_dim' if m.qk_norm else ''})",
               f"{L}·({h}·{qd} + 2·{h}·{kvd} + {qd}·{h}{' + biases' if m.qkv_bias or m.o_bias else ''}"
               f"{f' + 2·{m.head_dim}' if m.qk_norm else ''})",
               {"q_dim": qd, "kv_dim": kvd, "qkv_bias": m.qkv_bias, "o_bias": m.o_bias}),
    ]
    n_mat = 3 if m.mlp_kind == "swiglu" else 2
    if m.is_moe:
        k = m.experts_per_token if active else m.num_experts
        steps.append(derive("mlp (experts)", L * k * _mlp_params(m), "params",
                            f"layers·{'top_k' if active else 'experts'}·{n_mat}·hidden·intermediate",
                            f"{L}·{k}·{n_mat}·{h}·{m.intermediate}"))
        steps.append(derive("router", b.router, "params", "layers·hidden·experts",
                            f"{L}·{h}·{m.num_experts}"))
    else:
        steps.append(derive("mlp", b.mlp, "params", f"layers·{n_mat}·hidden·intermediate"
                            f"{' + biases' if m.mlp_bias else ''}",
                            f"{L}·{n_mat}·{h}·{m.intermediate}{' + biases' if m.mlp_bias else ''}"))
    nk = "2·hidden (weight+bias)" if m.norm_kind == "layernorm" else "hidden"
    norm_w = f"2·{h}" if m.norm_kind == "layernorm" else f"{h}"
    steps.append(derive("norms", b.norms, "params", f"(2·layers + 1)·{nk}", f"{2 * L + 1}·{norm_w}"))
    if b.position_embedding:
        steps.append(derive("position embedding", b.position_embedding, "params", "positions·hidden",
                            f"{m.learned_positions}·{h}"))
    steps.append(derive("lm_head", b.lm_head, "params", "0 (tied)" if m.tied_embeddings else "vocab·hidden",
                        "0" if m.tied_embeddings else f"{m.vocab}·{h}"))
    value = b.active if active else b.total
    return derive(
        f"{'active' if active else 'total'} parameters of {m.name}", value, "params",
        " + ".join(s.name for s in steps), " + ".join(f"{int(s.value):,}" for s in steps),
        {"model": m.name}, steps,
        note="exact: equals transformers' num_parameters() (tied weights counted once)",
    )


def dense_layer_params(hidden: int, ffn_mult: float = 4.0) -> Result:
    """Textbook layer: 4·d² attention (q, k, v, o) + 2·ffn_mult·d² MLP (no biases, MHA) = 12·d² at 4×."""
    if hidden <= 0 or ffn_mult <= 0:
        raise InvalidRequestError("hidden and ffn_mult must be > 0", "hidden")
    mlp = 2 * ffn_mult * hidden * hidden
    value = 4 * hidden * hidden + mlp
    return derive("parameters per layer", value, "params", "4·d² + 2·ffn_mult·d²",
                  f"4·{hidden}² + 2·{ffn_mult:g}·{hidden}²", {"hidden": hidden, "ffn_mult": ffn_mult})


def matmul_params(model: ModelSpec | str) -> int:
    """Linear weights on one token's active path, lm_head included (see module docstring)."""
    m = get_model(model)
    L, h = m.layers, m.hidden
    attn = h * m.q_dim + 2 * h * m.kv_dim + m.q_dim * h
    n_mat = 3 if m.mlp_kind == "swiglu" else 2
    experts = m.experts_per_token if m.is_moe else 1
    mlp = experts * n_mat * h * m.intermediate + h * m.num_experts
    return L * (attn + mlp) + m.vocab * h


def flops_per_token(
    model: ModelSpec | str | float,
    context_len: int = 0,
    training: bool = False,
    causal_average: bool = False,
) -> Result:
    """FLOPs to process one token: 2·N_matmul + 4·layers·ctx·q_dim forward, ×3 for training.

    `model` may be a plain parameter count (then N = that count and the attention term is dropped).
    `context_len` is the number of keys attended; with `causal_average` it is a sequence length S and
    the mean over the sequence, (S+1)/2 keys, is used (prefill / training on S-token sequences).
    """
    if context_len < 0:
        raise InvalidRequestError("context_len must be >= 0", "context_len")
    mult = 3 if training else 1
    if isinstance(model, (int, float)):
        n = float(model)
        value = mult * 2 * n
        return derive(f"{'training' if training else 'forward'} FLOPs per token", value, "FLOP",
                      f"{'6' if training else '2'}·N", f"{2 * mult}·{n:,.0f}", {"N": n},
                      note="plain 2N/6N rule; pass a model spec to add the attention term")
    m = get_model(model)
    n = matmul_params(m)
    ctx = (context_len + 1) / 2 if causal_average else context_len
    attn = 4 * m.layers * ctx * m.q_dim
    value = mult * (2 * n + attn)
    ctx_txt = f"({context_len}+1)/2" if causal_average else f"{context_len}"
    return derive(
        f"{'training' if training else 'forward'} FLOPs per token of {m.name}", value, "FLOP",
        f"{mult}·(2·N_matmul + 4·layers·ctx·q_dim)" if training else "2·N_matmul + 4·layers·ctx·q_dim",
        f"{mult}·(2·{n:,} + 4·{m.layers}·{ctx_txt}·{m.q_dim})" if training
        else f"2·{n:,} + 4·{m.layers}·{ctx_txt}·{m.q_dim}",
        {"N_matmul": n, "context_len": context_len, "causal_average": causal_average, "training": training},
        note="N_matmul = active linear weights incl. lm_head; training = forward + 2× backward",
    )
