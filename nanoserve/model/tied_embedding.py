"""A tied model's token embedding read from its lm_head's packed weight: one copy of the matrix, not two.

With tie_word_embeddings the checkpoint holds one [vocab, hidden] matrix for the token embedding and the
lm_head. On the CPU the lm_head packs it for the native kernel (cpu_linear.pack_weight / _f32), and the
embedding kept the plain tensor: two copies, 272 MB more on Qwen2.5-0.5B in bf16 (a fifth of what the
engine held). Once the lm_head is packed, `share_tied_embedding` makes the embedding a gather from the
packed layout (the same values, exactly: a copy, not a computation) and the plain tensor is released.
The fused decode step reads the same packed rows (csrc/fused_decode.cpp, `gather_packed_rows`).
"""

from __future__ import annotations

import torch
from torch import nn

from nanoserve.model.cpu_linear import FastLinear, packed_rows


class PackedEmbedding(nn.Module):
    """nn.Embedding over the lm_head's packed weight (the tied matrix's only copy)."""

    def __init__(self, lm_head: FastLinear, num_embeddings: int) -> None:
        super().__init__()
        if lm_head._packed is None:
            raise ValueError("the lm_head holds no packed weight")
        self.lm_head = [lm_head]  # a list: not a submodule (the model has it already)
        self.num_embeddings, self.embedding_dim = num_embeddings, lm_head.in_features

    @property
    def packed(self) -> torch.Tensor:
        return self.lm_head[0]._packed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        # ids past the vocabulary would read the padding rows, negative ones wrap: refuse as nn.Embedding
        lo, hi = torch.aminmax(flat) if flat.numel() else (0, 0)
        if not (0 <= int(lo) and int(hi) < self.num_embeddings):
            raise IndexError(f"token id out of range [0, {self.num_embeddings})")
        return packed_rows(self.packed, flat, self.embedding_dim).reshape(*input_ids.shape, -1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, the lm_head's packed weight"


def share_tied_embedding(model: nn.Module) -> bool:
    """If `model`'s lm_head is tied to its embedding and packed, read the embedding from the packed copy and
    drop the plain one. Returns whether it did."""
    decoder, head = model.model, model.lm_head
    emb = decoder.embed_tokens
    if not getattr(model.spec, "tie_word_embeddings", False) or type(emb) is not nn.Embedding:
        return False
    if not isinstance(head, FastLinear) or head._packed is None:
        return False  # not packed (the reference path keeps F.linear over the shared tensor)
    decoder.embed_tokens = PackedEmbedding(head, emb.num_embeddings)
    return True


def embedding_table(emb: nn.Module) -> torch.Tensor:
    """The table an embedding reads: its [vocab, hidden] weight, or the packed weight (3-D or 4-D)."""
    return emb.packed if isinstance(emb, PackedEmbedding) else emb.weight.detach()
