"""Mixture of experts at a batch: which weights a decode step reads, what expert parallelism sends.

One token reads its top-k experts, but a batch of B tokens reads every expert any of them routed to.
With uniform, independent routing an expert is missed by one token with probability 1 − k/E, by all
B with (1 − k/E)^B, so a layer touches E·(1 − (1 − k/E)^B) experts on average (Mixtral, E=8, k=2:
2 at B=1, 7.2 at B=8, ≈ 8 at B=64). A step's weight reads are therefore the shared weights
(attention, embeddings, router, norms) plus that many experts per layer, not the "active" count that
holds only at batch 1. Real routers are skewed, which touches slightly fewer experts: the uniform
value is the planner's upper estimate.

Expert parallelism (EP GPUs each holding E/EP experts) sends every token's hidden state to the GPUs
of its k experts and the results back: two all-to-alls per MoE layer, each moving
tokens · k · hidden · bytes · (EP − 1)/EP per GPU (the share routed off-GPU under uniform routing).
"""

from __future__ import annotations

from nanoserve.errors import InvalidRequestError
from nanoserve.planner.checks import positive, positive_int
from nanoserve.planner.derivation import Result, _fmt, derive
from nanoserve.planner.models import ModelSpec, get_model
from nanoserve.planner.params import param_breakdown


def expected_experts_touched(num_experts: int, experts_per_token: int, batch: int) -> Result:
    """Experts per layer a batch of `batch` tokens routes to: E·(1 − (1 − k/E)^B), uniform routing."""
    e = positive_int("num_experts", num_experts)
    k = positive_int("experts_per_token", experts_per_token)
    b = positive_int("batch", batch)
    if k > e:
        raise InvalidRequestError("experts_per_token cannot exceed num_experts", "experts_per_token")
    value = e * (1 - (1 - k / e) ** b)
    return derive(
        "experts touched per layer",
        value,
        "experts",
        "E · (1 − (1 − k/E)^B)",
        f"{e} × (1 − (1 − {k}/{e})^{b})",
        {"num_experts": e, "experts_per_token": k, "batch": b},
        note="uniform independent routing (an upper estimate: real routers are skewed)",
    )


def decode_weight_params(model: ModelSpec | str, batch: int = 1) -> Result:
    """Parameters one decode step of `batch` sequences reads: shared + layers · experts touched · expert.

    Dense model: every parameter. MoE: at batch 1 the active count, rising to the total as the batch
    touches every expert.
    """
    m = get_model(model)
    b = positive_int("batch", batch)
    pb = param_breakdown(m)
    if not m.is_moe:
        return derive(
            f"weights read per decode step of {m.name}",
            pb.total,
            "params",
            "all parameters (dense)",
            f"{pb.total:,}",
            {"batch": b},
        )
    touched = expected_experts_touched(m.num_experts, m.experts_per_token, b)
    shared = pb.total - pb.mlp
    per_expert = pb.mlp / (m.layers * m.num_experts)
    value = shared + m.layers * touched.value * per_expert
    return derive(
        f"weights read per decode step of {m.name}",
        value,
        "params",
        "shared + layers · experts_touched · params_per_expert",
        f"{shared:,} + {m.layers} × {_fmt(touched.value)} × {per_expert:,.0f}",
        {"batch": b, "shared": shared, "params_per_expert": per_expert, "active": pb.active,
         "total": pb.total},
        [touched],
        note=f"batch 1 reads the active {_fmt(pb.active / 1e9)}B; every expert is {_fmt(pb.total / 1e9)}B",
    )


def expert_parallel_all_to_all_bytes(
    model: ModelSpec | str, tokens: int, ep: int, bytes_per_element: float = 2.0
) -> Result:
    """Bytes each GPU sends per forward for expert parallelism over `ep` GPUs (dispatch + combine).

    Per MoE layer: 2 all-to-alls · tokens · k · hidden · bytes · (EP − 1)/EP, the off-GPU share of
    the routed copies under uniform routing; `tokens` are the tokens this GPU holds.
    """
    m = get_model(model)
    if not m.is_moe:
        raise InvalidRequestError(f"{m.name} has no experts: expert parallelism does not apply", "model")
    t = positive_int("tokens", tokens)
    p = positive_int("ep", ep)
    if p > m.num_experts:
        raise InvalidRequestError(f"ep ({p}) cannot exceed the {m.num_experts} experts", "ep")
    bpe = positive("bytes_per_element", bytes_per_element)
    k, h, L = m.experts_per_token, m.hidden, m.layers
    value = L * 2 * t * k * h * bpe * (p - 1) / p
    return derive(
        "expert-parallel all-to-all bytes per GPU",
        value,
        "bytes",
        "layers · 2 · tokens · k · hidden · bytes · (EP − 1)/EP",
        f"{L} × 2 × {t:,} × {k} × {h} × {_fmt(bpe)} × ({p} − 1)/{p}",
        {"layers": L, "tokens": t, "experts_per_token": k, "hidden": h, "ep": p, "bytes_per_element": bpe},
        note="dispatch and combine; uniform routing",
    )
