"""A tied model's token embedding read from its lm_head's packed weight: one copy of the matrix, not two.

With tie_word_embeddings the checkpoint holds one [vocab, hidden] matrix for the token embedding and the
lm_head. On the CPU the lm_head packs it for the native kernel (cpu_linear.pack_weight / _f32), and the
embedding kept the plain tensor: two copies, 272 MB more on Qwen2.5-0.5B in bf16 (a fifth of what the
engine held). Once the lm_head is packed, `share_tied_embedding` makes the embedding a gather from the
packed layout (the same values, exactly: a copy, not a computation) and the plain tensor is released.
The fused decode step reads the same packed rows (csrc/fused_decode.cpp, `embed_layout`).
"""

from __future__ import annotations

import torch
from torch import nn

from nanoserve.model.cpu_linear import PACK_BLOCK_N, FastLinear

# How an embedding table is laid out, as the fused decode step is told (csrc/fused_decode.cpp).
PLAIN, PACKED_BF16, PACKED_F32 = 0, 1, 2


def packed_rows(packed: torch.Tensor, ids: torch.Tensor, hidden: int) -> torch.Tensor:
    """Rows `ids` [T] of the [N, hidden] matrix that `packed` holds in the kernel's layout -> [T, hidden]."""
    block, lane = ids // PACK_BLOCK_N, ids % PACK_BLOCK_N
    if packed.dim() == 3:  # fp32 [nb, K, 64]
        return packed[block, :, lane]  # [T, K]
    return packed[block, :, lane, :].reshape(ids.shape[0], -1)[:, :hidden]  # bf16 [nb, K2, 64, 2] -> [T, K]


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

    @property
    def layout(self) -> int:
        return PACKED_F32 if self.packed.dim() == 3 else PACKED_BF16

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
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
    if not isinstance(head, FastLinear) or head._packed is None or head.weight is not None:
        return False  # not packed (the reference path keeps F.linear over the shared tensor)
    if head._packed.shape[0] * PACK_BLOCK_N < emb.num_embeddings:
        return False
    decoder.embed_tokens = PackedEmbedding(head, emb.num_embeddings)
    return True


def embedding_table(emb: nn.Module) -> tuple[torch.Tensor, int]:
    """(table, layout) of an embedding: its weight (PLAIN) or the packed weight it reads."""
    if isinstance(emb, PackedEmbedding):
        return emb.packed, emb.layout
    return emb.weight.detach(), PLAIN
