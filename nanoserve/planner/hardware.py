"""Accelerator presets: the few numbers every capacity calculation starts from.

All FLOP/s are *dense* peaks (vendor datasheets quote fp8/int8 "with sparsity" at 2x these). Memory
sizes and bandwidths are decimal (1 GB = 1e9 bytes) as datasheets give them.

Interconnect convention: `intra_node_bytes_per_s` is the per-GPU aggregate NVLink-class bandwidth the
way vendors quote it (both directions summed: H100 SXM = 900 GB/s = 450 GB/s each way); the property
`intra_node_unidir_bytes_per_s` halves it. `inter_node_bytes_per_s` is one direction of the network
port(s) a GPU owns (H100 DGX: one 400 Gb/s NDR port per GPU = 50 GB/s). Prices are typical on-demand
cloud list prices per accelerator-hour; they vary by provider, so every calculator takes an override.
Inter-node figures of PCIe cards (L4, L40S) and TPUs (data-centre network, DCN) are typical deployment
values, not datasheet numbers; the `source` of each preset says which numbers come from where.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from nanoserve.errors import InvalidRequestError

TERA = 1e12
GIGA = 1e9


@dataclass(frozen=True)
class Hardware:
    name: str
    bf16_flops_per_s: float            # dense bf16/fp16 tensor-core peak
    fp8_flops_per_s: float | None      # dense fp8 peak; None where the chip has no fp8 units
    int8_ops_per_s: float | None       # dense int8 peak
    hbm_bytes: float                   # device memory capacity
    hbm_bytes_per_s: float             # device memory bandwidth
    intra_node_bytes_per_s: float      # NVLink / Infinity Fabric / ICI / PCIe, both directions summed
    inter_node_bytes_per_s: float      # network bandwidth per accelerator, one direction
    usd_per_hour: float                # typical on-demand price per accelerator-hour
    devices_per_node: int = 8
    intra_node_link: str = ""
    inter_node_link: str = ""
    source: str = ""

    @property
    def intra_node_unidir_bytes_per_s(self) -> float:
        return self.intra_node_bytes_per_s / 2

    @property
    def ridge_point_flops_per_byte(self) -> float:
        """bf16 FLOPs per byte of HBM traffic at which a kernel stops being memory-bound."""
        return self.bf16_flops_per_s / self.hbm_bytes_per_s

    def flops_per_s(self, dtype: str = "bf16") -> float:
        """Dense peak for the dtype the matmuls run in; int4/fp4 weights still compute in bf16/fp8/int8."""
        d = dtype.lower()
        if d in ("bf16", "fp16", "float16", "bfloat16", "int4", "w4a16", "fp32"):
            return self.bf16_flops_per_s
        if d in ("fp8", "float8", "e4m3", "e5m2"):
            if self.fp8_flops_per_s is None:
                raise InvalidRequestError(f"{self.name} has no fp8 tensor cores", "dtype")
            return self.fp8_flops_per_s
        if d in ("int8", "w8a8"):
            if self.int8_ops_per_s is None:
                raise InvalidRequestError(f"{self.name} has no int8 tensor cores", "dtype")
            return self.int8_ops_per_s
        raise InvalidRequestError(f"unknown compute dtype {dtype!r}; use bf16, fp16, fp8 or int8", "dtype")

    def with_price(self, usd_per_hour: float) -> Hardware:
        if usd_per_hour <= 0:
            raise InvalidRequestError("usd_per_hour must be > 0", "usd_per_hour")
        return replace(self, usd_per_hour=float(usd_per_hour))


_NVIDIA = "NVIDIA datasheet (dense, without sparsity)"
_PRICE = "price: typical 2025 on-demand cloud list price, override with --price"

PRESETS: dict[str, Hardware] = {
    "h100-sxm": Hardware(
        "H100 SXM", 989 * TERA, 1979 * TERA, 1979 * TERA, 80 * GIGA, 3.35 * TERA,
        900 * GIGA, 50 * GIGA, 3.50, 8, "NVLink4 900 GB/s", "InfiniBand NDR 400 Gb/s per GPU",
        f"{_NVIDIA}, H100 SXM5 80GB; {_PRICE}",
    ),
    "h100-pcie": Hardware(
        "H100 PCIe", 756 * TERA, 1513 * TERA, 1513 * TERA, 80 * GIGA, 2.0 * TERA,
        600 * GIGA, 50 * GIGA, 2.50, 8, "NVLink bridge 600 GB/s (pairs); PCIe5 x16 128 GB/s",
        "400 Gb/s NIC per GPU", f"{_NVIDIA}, H100 PCIe 80GB; {_PRICE}",
    ),
    "h200": Hardware(
        "H200 SXM", 989 * TERA, 1979 * TERA, 1979 * TERA, 141 * GIGA, 4.8 * TERA,
        900 * GIGA, 50 * GIGA, 4.50, 8, "NVLink4 900 GB/s", "InfiniBand NDR 400 Gb/s per GPU",
        f"{_NVIDIA}, H200 SXM 141GB; {_PRICE}",
    ),
    "b200": Hardware(
        "B200", 2250 * TERA, 4500 * TERA, 4500 * TERA, 180 * GIGA, 8.0 * TERA,
        1800 * GIGA, 100 * GIGA, 6.00, 8, "NVLink5 1.8 TB/s", "ConnectX-8 800 Gb/s per GPU",
        f"{_NVIDIA}, HGX B200 180GB; {_PRICE}",
    ),
    "a100-80gb": Hardware(
        "A100 80GB SXM", 312 * TERA, None, 624 * TERA, 80 * GIGA, 2.039 * TERA,
        600 * GIGA, 25 * GIGA, 2.00, 8, "NVLink3 600 GB/s", "InfiniBand HDR 200 Gb/s per GPU",
        f"{_NVIDIA}, A100 SXM4 80GB (no fp8); {_PRICE}",
    ),
    "a100-40gb": Hardware(
        "A100 40GB SXM", 312 * TERA, None, 624 * TERA, 40 * GIGA, 1.555 * TERA,
        600 * GIGA, 25 * GIGA, 1.50, 8, "NVLink3 600 GB/s", "InfiniBand HDR 200 Gb/s per GPU",
        f"{_NVIDIA}, A100 SXM4 40GB (no fp8); {_PRICE}",
    ),
    "l4": Hardware(
        "L4", 121 * TERA, 242.5 * TERA, 242.5 * TERA, 24 * GIGA, 0.300 * TERA,
        64 * GIGA, 12.5 * GIGA, 0.80, 8, "PCIe4 x16 64 GB/s (no NVLink)", "100 Gb/s Ethernet",
        f"{_NVIDIA}, L4 24GB; {_PRICE}",
    ),
    "l40s": Hardware(
        "L40S", 362 * TERA, 733 * TERA, 733 * TERA, 48 * GIGA, 0.864 * TERA,
        64 * GIGA, 25 * GIGA, 1.50, 8, "PCIe4 x16 64 GB/s (no NVLink)", "200 Gb/s Ethernet",
        f"{_NVIDIA}, L40S 48GB; {_PRICE}",
    ),
    "mi300x": Hardware(
        "MI300X", 1307 * TERA, 2615 * TERA, 2615 * TERA, 192 * GIGA, 5.3 * TERA,
        896 * GIGA, 50 * GIGA, 3.50, 8, "Infinity Fabric 896 GB/s", "400 Gb/s per GPU",
        f"AMD Instinct MI300X datasheet (dense); {_PRICE}",
    ),
    "tpu-v5e": Hardware(
        "TPU v5e", 197 * TERA, None, 393 * TERA, 16 * GIGA, 0.819 * TERA,
        400 * GIGA, 12.5 * GIGA, 1.20, 8, "ICI 400 GB/s per chip (bidirectional)", "DCN",
        "Google Cloud TPU v5e docs; inter-node DCN approximate; price: GCP on-demand per chip-hour",
    ),
    "tpu-v5p": Hardware(
        "TPU v5p", 459 * TERA, None, 918 * TERA, 95 * GIGA, 2.765 * TERA,
        1200 * GIGA, 25 * GIGA, 4.20, 4, "ICI 1,200 GB/s per chip (bidirectional)", "DCN",
        "Google Cloud TPU v5p docs; inter-node DCN approximate; price: GCP on-demand per chip-hour",
    ),
    "tpu-v6e": Hardware(
        "TPU v6e", 918 * TERA, None, 1836 * TERA, 32 * GIGA, 1.638 * TERA,
        800 * GIGA, 25 * GIGA, 2.70, 8, "ICI 800 GB/s per chip (bidirectional)", "DCN",
        "Google Cloud TPU v6e docs; inter-node DCN approximate; price: GCP on-demand per chip-hour",
    ),
}

ALIASES: dict[str, str] = {
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm", "h100-80gb": "h100-sxm", "h100-pci-e": "h100-pcie",
    "h200-sxm": "h200", "b200-sxm": "b200", "a100": "a100-80gb", "a100-80g": "a100-80gb",
    "a100-sxm": "a100-80gb", "a100-sxm4-80gb": "a100-80gb", "a100-40g": "a100-40gb",
    "a100-sxm4-40gb": "a100-40gb", "mi300": "mi300x", "v5e": "tpu-v5e", "v5p": "tpu-v5p",
    "v6e": "tpu-v6e", "trillium": "tpu-v6e", "tpu-v5-lite": "tpu-v5e", "tpu-v5litepod": "tpu-v5e",
}


def _norm(name: str) -> str:
    s = re.sub(r"[\s_/.]+", "-", name.strip().lower())
    s = re.sub(r"^(nvidia|amd|google)-", "", s)
    s = re.sub(r"-+", "-", s).strip("-")
    return s.replace("tpuv", "tpu-v")


def get_hardware(name: str | Hardware) -> Hardware:
    """Preset by forgiving name: "h100", "H100-SXM", "nvidia h100 sxm", "A100_40GB", "v5e"."""
    if isinstance(name, Hardware):
        return name
    if not isinstance(name, str):
        raise InvalidRequestError(
            f"hardware must be a preset name or a Hardware (got {type(name).__name__})", "hardware")
    key = _norm(name)
    if key in PRESETS:
        return PRESETS[key]
    if key in ALIASES:
        return PRESETS[ALIASES[key]]
    squashed = key.replace("-", "")
    for k in list(PRESETS) + list(ALIASES):
        if k.replace("-", "") == squashed:
            return PRESETS[ALIASES.get(k, k)]
    raise InvalidRequestError(
        f"unknown hardware {name!r}; presets: {', '.join(PRESETS)} (or describe one with custom_hardware)",
        "hardware",
    )


def list_hardware() -> list[Hardware]:
    return list(PRESETS.values())


_UNIT_FIELDS = {  # field → (scale applied to a friendlier key, friendlier key)
    "bf16_flops_per_s": (TERA, "bf16_tflops"),
    "fp8_flops_per_s": (TERA, "fp8_tflops"),
    "int8_ops_per_s": (TERA, "int8_tops"),
    "hbm_bytes": (GIGA, "hbm_gb"),
    "hbm_bytes_per_s": (GIGA, "hbm_gb_per_s"),
    "intra_node_bytes_per_s": (GIGA, "intra_node_gb_per_s"),
    "inter_node_bytes_per_s": (GIGA, "inter_node_gb_per_s"),
}


def custom_hardware(base: str | Hardware | None = None, **kwargs: Any) -> Hardware:
    """Hardware from keyword arguments, optionally starting from a preset.

    Accepts the dataclass fields (SI units) or friendlier units: bf16_tflops, fp8_tflops, int8_tops,
    hbm_gb, hbm_gb_per_s, intra_node_gb_per_s, inter_node_gb_per_s (decimal giga/tera).
    """
    known = {f.name for f in fields(Hardware)}
    values: dict[str, Any] = {}
    for fname, (scale, friendly) in _UNIT_FIELDS.items():
        if friendly in kwargs:
            v = kwargs.pop(friendly)
            values[fname] = None if v is None else float(v) * scale
    for k, v in kwargs.items():
        if k not in known:
            raise InvalidRequestError(f"unknown hardware field {k!r}", k)
        values[k] = v
    if base is not None:
        hw = replace(get_hardware(base), **values)
        if "name" not in values:
            hw = replace(hw, name=f"{hw.name} (custom)", source=f"{hw.source}; overridden: {sorted(values)}")
    else:
        required = ["name", "bf16_flops_per_s", "hbm_bytes", "hbm_bytes_per_s"]
        missing = [k for k in required if k not in values]
        if missing:
            raise InvalidRequestError(f"custom hardware needs {', '.join(missing)}", missing[0])
        values.setdefault("fp8_flops_per_s", None)
        values.setdefault("int8_ops_per_s", None)
        values.setdefault("intra_node_bytes_per_s", 64 * GIGA)
        values.setdefault("inter_node_bytes_per_s", 12.5 * GIGA)
        values.setdefault("usd_per_hour", 0.0)
        values.setdefault("source", "user-supplied")
        hw = Hardware(**values)
    _validate(hw)
    return hw


def hardware_from_file(path: str | Path) -> Hardware:
    """Custom hardware from a JSON or YAML file holding the same keys as `custom_hardware`."""
    p = Path(path)
    if not p.is_file():
        raise InvalidRequestError(f"hardware file not found: {p}", "hardware")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{p}: expected a mapping of hardware fields", "hardware")
    data = dict(data)
    base = data.pop("base", None)
    data.setdefault("source", f"file {p.name}")
    return custom_hardware(base, **data)


_NUMBER_FIELDS = ("bf16_flops_per_s", "fp8_flops_per_s", "int8_ops_per_s", "hbm_bytes", "hbm_bytes_per_s",
                  "intra_node_bytes_per_s", "inter_node_bytes_per_s", "usd_per_hour", "devices_per_node")


def _validate(hw: Hardware) -> None:
    for f in _NUMBER_FIELDS:
        v = getattr(hw, f)
        optional = f in ("fp8_flops_per_s", "int8_ops_per_s")
        if (v is None and optional) or (isinstance(v, int | float) and not isinstance(v, bool)):
            continue
        hint = " (YAML reads an exponent without its sign, like 24e9, as text: write 24.0e+9)" \
            if isinstance(v, str) else ""
        raise InvalidRequestError(f"hardware {f} must be a number, got {v!r}{hint}", f)
    for f in ("bf16_flops_per_s", "hbm_bytes", "hbm_bytes_per_s", "intra_node_bytes_per_s",
              "inter_node_bytes_per_s"):
        if not getattr(hw, f) > 0:
            raise InvalidRequestError(f"hardware {f} must be > 0 (got {getattr(hw, f)})", f)
    if hw.usd_per_hour < 0:
        raise InvalidRequestError("usd_per_hour must be >= 0", "usd_per_hour")
