"""The model's linear layer and its faster CPU paths for bf16 weights (the decode step's skinny matmuls).

At decode time a linear layer multiplies a few rows of activations by a large weight matrix, so its
speed is the speed at which the weight streams from memory, and plain `F.linear` in bf16 streams it
well below the machine's bandwidth (REFERENCES.md, "CPU speed facts"). Two better paths exist:

- ``"mkldnn"``: oneDNN with the weight reordered once into its blocked layout
  (`torch.ops.mkldnn._reorder_linear_weight`), then `_linear_pointwise` per call. Needs a second copy of
  the weight in the packed layout, so the plain weight is dropped when only this path is used.
- ``"avx512"``: a small native kernel (csrc/cpu_linear.cpp: AVX-512 ``vdpbf16ps``, fp32 accumulation)
  over a weight packed once at load into blocks of 64 output rows with K interleaved in pairs
  (`pack_weight`): one 512-bit load holds 16 outputs × 2 k values, so a broadcast activation pair
  accumulates 16 outputs per instruction with no horizontal sums, and a tile of up to 6 activation
  rows × 64 outputs lives in 24 registers. Threaded with ATen's own pool over the 64-row blocks (each
  weight byte is read once per call). It serves every batch size: with row tiles over an L2-resident
  block it also beats `F.linear` and oneDNN at prefill sizes (benchmarks/RESULTS.md), so no plain copy
  is kept for a large-batch fallback. The packed copy replaces the plain weight (same bytes plus
  padding of N to 64 and K to even); a tied lm_head still has the plain embedding beside it, as on the
  mkldnn path.

`FastLinear` is the one linear module of the model: the loader fills its weight, then `prepare(backend)`
picks the best available path once ("auto") and always falls back to `F.linear`, which is correct
everywhere (any dtype, any device). Results agree with `F.linear` within bf16 rounding: every path
accumulates in fp32 and rounds once.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from nanoserve.config import CPU_LINEAR_BACKENDS as BACKENDS
from nanoserve.model.native_build import load_extension

log = logging.getLogger(__name__)

# "hybrid": the avx512 kernel up to this many activation rows, oneDNN above (twice the weight memory).
# `nanoserve bench linear` finds the two within a few percent from 16 rows up and the kernel well ahead
# below (benchmarks/RESULTS.md), so "auto" is the kernel alone (one copy).
HYBRID_AVX512_MAX_ROWS = 32
PACK_BLOCK_N = 64  # output rows per packed block; must equal BLOCK_N in csrc/cpu_linear.cpp

_ext: ModuleType | None = None
_ext_error: str | None = None
_ext_lock = threading.Lock()


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    """The file's text; "" where unreadable (not Linux, a sandbox)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_has_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists `flag` (e.g. "avx512_bf16", "avx512_vnni"); False where unreadable."""
    return flag in _read_cpuinfo().split()


def cpu_vendor_family(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, int] | None:
    """(vendor_id, cpu family) of the first CPU in /proc/cpuinfo, e.g. ("AuthenticAMD", 26); None where
    unreadable. Zen 4 is AMD family 25 (0x19), Zen 5 family 26 (0x1a)."""
    first_cpu = _read_cpuinfo(cpuinfo).split("\n\n", 1)[0]
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first_cpu.splitlines())}
    try:
        return fields["vendor_id"], int(fields["cpu family"])
    except (KeyError, ValueError):
        return None


def cpu_has_avx512_bf16() -> bool:
    return cpu_has_flag("avx512_bf16")


def load_avx512_kernel() -> ModuleType | None:
    """Build (first call only, cached on disk after) and return the native kernel, or None.

    Returns None, with the reason in `avx512_unavailable_reason()`, when the CPU lacks AVX-512 bf16,
    no compiler is found, the build fails, or NANOSERVE_DISABLE_NATIVE_LINEAR=1.
    """
    global _ext, _ext_error
    with _ext_lock:
        if _ext is not None or _ext_error is not None:
            return _ext
        if os.environ.get("NANOSERVE_DISABLE_NATIVE_LINEAR") == "1":
            _ext_error = "disabled by NANOSERVE_DISABLE_NATIVE_LINEAR=1"
        elif not cpu_has_avx512_bf16():
            _ext_error = "CPU has no avx512_bf16"
        else:
            try:
                flags = ["-march=native", "-mavx512f", "-mavx512bf16", "-mavx512bw"]
                _ext = load_extension("nanoserve_cpu_linear", ["cpu_linear.cpp"], flags)
            except Exception as e:  # no compiler, old gcc, sandbox without headers...
                _ext_error = f"native kernel build failed: {type(e).__name__}: {str(e)[:300]}"
        if _ext_error:
            log.info("cpu_linear: avx512 path unavailable (%s)", _ext_error)
        return _ext


def avx512_unavailable_reason() -> str | None:
    return _ext_error


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] bf16 -> [ceil(N/64), ceil(K/2), 64, 2], zero-padded: the avx512 kernel's weight layout."""
    n, k = weight.shape
    n_pad, k_pad = -(-n // PACK_BLOCK_N) * PACK_BLOCK_N, k + k % 2
    if (n_pad, k_pad) != (n, k):
        weight = F.pad(weight, (0, k_pad - k, 0, n_pad - n))  # [n_pad, k_pad]
    blocks = weight.reshape(n_pad // PACK_BLOCK_N, PACK_BLOCK_N, k_pad // 2, 2)
    return blocks.permute(0, 2, 1, 3).contiguous()


def pack_weight_f32(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] fp32 -> [ceil(N/64), K, 64], zero-padded in N: the fp32 kernel's weight layout."""
    n, k = weight.shape
    n_pad = -(-n // PACK_BLOCK_N) * PACK_BLOCK_N
    if n_pad != n:
        weight = F.pad(weight, (0, 0, 0, n_pad - n))  # [n_pad, k]
    return weight.reshape(n_pad // PACK_BLOCK_N, PACK_BLOCK_N, k).transpose(1, 2).contiguous()


def unpack_weight(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of `pack_weight` / `pack_weight_f32`: the plain [N, K] weight (a copy) for the rare
    F.linear fallback."""
    if packed.dim() == 3:  # fp32 layout [nb, K, 64]
        nb, k, block = packed.shape
        return packed.transpose(1, 2).reshape(nb * block, k)[:out_features, :in_features].contiguous()
    nb, k2, block, _ = packed.shape
    return packed.permute(0, 2, 1, 3).reshape(nb * block, 2 * k2)[:out_features, :in_features].contiguous()


def packed_rows(packed: torch.Tensor, ids: torch.Tensor, in_features: int) -> torch.Tensor:
    """Rows `ids` [T] of the weight that `pack_weight` / `pack_weight_f32` packed -> [T, in_features]
    (a copy of just those rows: the tied embedding's lookup, model/tied_embedding.py)."""
    block, lane = ids // PACK_BLOCK_N, ids % PACK_BLOCK_N
    if packed.dim() == 3:  # fp32 layout [nb, K, 64]
        return packed[block, :, lane]  # [T, K]
    return packed[block, :, lane, :].reshape(ids.shape[0], -1)[:, :in_features]  # [T, K2, 2] -> [T, K]


def mkldnn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FastLinear(nn.Module):
    """`y = x @ weight.T + bias`, callable on any leading shape, through the CPU path `prepare` chose.

    output_sizes: the widths of the projections of one input stacked in its rows (q/k/v, gate/up), so
    one call streams all their rows in one parallel pass; split the output with
    `y.split(output_sizes, dim=-1)`. The loader copies each checkpoint tensor into its rows (`shard`).

    Until `prepare`, it is `F.linear` over its parameters. prepare(backend): "torch" (F.linear),
    "mkldnn" (prepacked oneDNN), "avx512" (native kernel on a packed weight, any number of rows),
    "hybrid" (both packed copies: avx512 for up to HYBRID_AVX512_MAX_ROWS rows, oneDNN for more; twice
    the weight memory), or "auto" (avx512, else mkldnn, else torch). A backend that cannot serve this
    weight (not bf16, not on CPU, not built) falls back to "torch"; `self.backend` says which path was
    taken. The packed paths keep only their copy: `weight` is None after them.
    """

    def __init__(self, in_features: int, output_sizes: int | list[int], bias: bool = False) -> None:
        super().__init__()
        self.output_sizes = [output_sizes] if isinstance(output_sizes, int) else list(output_sizes)
        self.in_features, self.out_features = in_features, sum(self.output_sizes)
        self.weight = nn.Parameter(torch.empty(self.out_features, in_features), requires_grad=False)  # [N, K]
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features), requires_grad=False)  # [N]
        else:
            self.register_parameter("bias", None)
        self.backend = "torch"
        self._ext: ModuleType | None = None
        self._packed: torch.Tensor | None = None  # the avx512 kernel's layout of the weight
        self._mkldnn: torch.Tensor | None = None  # oneDNN's layout of the weight
        self._bias_f32: torch.Tensor | None = None

    def shard(self, name: str, index: int | None) -> torch.Tensor:
        """The rows of parameter `name` ("weight" or "bias") that projection `index` owns (None: all)."""
        param = getattr(self, name)
        if index is None:
            return param
        return param.narrow(0, sum(self.output_sizes[:index]), self.output_sizes[index])

    def prepare(self, backend: str = "auto") -> None:
        """After the weights are loaded: build the chosen path's layout of the weight, once."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")
        if self.weight is None:
            raise RuntimeError(f"{self!r} is prepared already")
        weight = self.weight.detach()
        on_cpu = weight.device.type == "cpu"
        eligible = on_cpu and weight.dtype == torch.bfloat16
        # fp32 weights take the kernel's fp32 tiles (the small demo models: MKL's sgemm spends 10-40 us
        # on a 1-row call the kernel does in a few); oneDNN's fp32 path is not used.
        native_ok = on_cpu and weight.dtype in (torch.bfloat16, torch.float32)
        self._ext = load_avx512_kernel() if native_ok and backend in ("auto", "avx512", "hybrid") else None
        # oneDNN serves hybrid's wider inputs, and stands in when the kernel did not build.
        no_kernel = backend in ("auto", "avx512") and self._ext is None
        wants_onednn = backend in ("hybrid", "mkldnn") or no_kernel
        if eligible and wants_onednn and mkldnn_available():
            try:
                self._mkldnn = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
            except RuntimeError as e:
                log.info("cpu_linear: mkldnn reorder failed (%s)", e)
        if self._ext is not None:
            # bf16 [ceil(N/64), ceil(K/2), 64, 2]; fp32 [ceil(N/64), K, 64]
            self._packed = pack_weight(weight) if eligible else pack_weight_f32(weight)
            if self.bias is not None:
                n_pad = self._packed.shape[0] * PACK_BLOCK_N
                self._bias_f32 = F.pad(self.bias.detach().float(), (0, n_pad - self.out_features))  # [n_pad]
        if self._packed is not None or self._mkldnn is not None:
            self.weight = None
        self.backend = {(True, True): "hybrid", (True, False): "avx512", (False, True): "mkldnn",
                        (False, False): "torch"}[self._packed is not None, self._mkldnn is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mkldnn is not None and (
            self._packed is None or x.numel() > HYBRID_AVX512_MAX_ROWS * self.in_features
        ):
            return torch.ops.mkldnn._linear_pointwise(x, self._mkldnn, self.bias, "none", [], "")
        if self._packed is not None:
            lead = x.shape[:-1]
            x2 = x.reshape(-1, self.in_features)
            if x2.dtype == self._packed.dtype and not x2.requires_grad:
                gemm = self._ext.gemm_bf16_packed if x2.dtype == torch.bfloat16 else self._ext.gemm_f32_packed
                y = gemm(x2.contiguous(), self._packed, self.out_features, self._bias_f32)
                return y.reshape(*lead, self.out_features)  # y: [M, N]
            # other dtypes or autograd: rebuild the plain weight for this call (never on the serving path)
            return F.linear(x, unpack_weight(self._packed, self.out_features, self.in_features), self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}→{self.output_sizes}, bias={self.bias is not None}, backend={self.backend}"


def prepare_linear(
    weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"
) -> FastLinear:
    """A prepared FastLinear computing `F.linear(x, weight, bias)` by the fastest available path."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")
    with torch.device("meta"):  # no storage: the given tensors become its parameters
        linear = FastLinear(weight.shape[1], weight.shape[0], bias is not None)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    linear.prepare(backend)
    return linear


def prepare_linears(model: nn.Module, backend: str) -> None:
    """Prepare every FastLinear of a loaded model (backend "torch" = plain F.linear, the reference)."""
    for module in model.modules():
        if isinstance(module, FastLinear):
            module.prepare(backend)
