"""What CPU this process runs on: vendor, model name and the instruction-set flags that decide speed and
correctness of int8 and bf16 kernels.

Why the flags matter:

* ``avx512_vnni`` / ``avx_vnni`` / ``amx``: u8 x s8 dot products accumulate straight into int32
  (``vpdpbusd``). Without them, x86 int8 kernels (ONNX Runtime's MLAS on AVX2) multiply u8 x s8 pairs with
  ``vpmaddubsw``, which adds two adjacent products in *saturating int16*: ``255*127 + 255*127`` overflows.
  See :mod:`slimtorch.quant.export.targets`.
* ``amx`` / ``avx512_bf16``: bfloat16 matmuls run natively; elsewhere bf16 autocast is emulated and slow.

On x86-64 the flags are read with the ``CPUID`` instruction itself (a 30-byte function placed in
executable memory through ``ctypes``), so they describe the CPU the process really runs on, including an
emulated one (qemu, ``../shared/tools/as-cpu``), where ``/proc/cpuinfo`` still shows the host. When that is
not possible (another architecture, no executable memory), ``/proc/cpuinfo`` is parsed instead.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import re
from dataclasses import dataclass, field
from typing import Any

#: Flags reported by :func:`cpu_info`, in this order.
FLAG_NAMES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx", "avx512_bf16", "neon_dotprod")

# CPUID(leaf, subleaf) -> (eax, ebx, ecx, edx), System V ABI: rdi=leaf, rsi=subleaf, rdx=uint32_t out[4].
_CPUID_CODE = bytes([
    0x53,                    # push rbx (callee-saved, cpuid clobbers it)
    0x89, 0xF8,              # mov eax, edi
    0x89, 0xF1,              # mov ecx, esi
    0x49, 0x89, 0xD0,        # mov r8, rdx
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov [r8+12], edx
    0x5B,                    # pop rbx
    0xC3,                    # ret
])


@dataclass(frozen=True)
class CpuInfo:
    """The CPU this process runs on.

    Attributes:
        arch: ``platform.machine()`` (``x86_64``, ``aarch64``, ...).
        vendor: ``GenuineIntel``, ``AuthenticAMD``, ... (empty when unknown).
        model: the marketing name (``AMD EPYC 9R14``, ``Intel Core Processor (Haswell)``, ...).
        flags: :data:`FLAG_NAMES` -> present. ``amx`` means AMX-INT8 tiles.
        source: ``"cpuid"`` or ``"/proc/cpuinfo"`` (or ``"platform"`` when neither was readable).
    """

    arch: str
    vendor: str
    model: str
    flags: dict[str, bool] = field(default_factory=dict)
    source: str = "platform"

    @property
    def int8_dot_product(self) -> bool:
        """u8 x s8 products accumulate in int32 without an int16 step (VNNI, AMX, or Arm dot product)."""
        return any(self.flags.get(k, False) for k in ("avx512_vnni", "avx_vnni", "amx", "neon_dotprod"))

    @property
    def fast_bf16(self) -> bool:
        """bfloat16 matmuls run natively (AMX or AVX-512-BF16)."""
        return bool(self.flags.get("amx") or self.flags.get("avx512_bf16"))

    @property
    def kind(self) -> str:
        """A short label for result tables: ``x86-vnni``, ``x86-avx2``, ``x86``, ``arm64``, or the arch."""
        if self.arch in ("x86_64", "AMD64", "i686", "x86"):
            if self.int8_dot_product:
                return "x86-vnni"
            return "x86-avx2" if self.flags.get("avx2") else "x86"
        if self.arch in ("aarch64", "arm64"):
            return "arm64"
        return self.arch or "unknown"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as every benchmark JSON and report records it."""
        return {"arch": self.arch, "vendor": self.vendor, "model": self.model, "kind": self.kind,
                "flags": dict(self.flags), "source": self.source}

    def __str__(self) -> str:
        on = [k for k in FLAG_NAMES if self.flags.get(k)]
        return f"{self.model or self.arch} ({self.kind}; {', '.join(on) or 'no SIMD flags of interest'})"


def _cpuid_function() -> Any:
    """A callable ``cpuid(leaf, subleaf, out)`` in executable memory, or None where that is impossible."""
    if platform.machine() not in ("x86_64", "AMD64") or not hasattr(mmap, "PROT_EXEC"):
        return None
    try:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):  # W^X policies (SELinux execmem) refuse it: fall back to /proc
        return None
    buf.write(_CPUID_CODE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(addr)
    fn._buffer = buf  # keep the page alive as long as the function
    return fn


def _bit(value: int, bit: int) -> bool:
    return bool((value >> bit) & 1)


def _from_cpuid() -> CpuInfo | None:
    fn = _cpuid_function()
    if fn is None:
        return None
    out = (ctypes.c_uint32 * 4)()

    def cpuid(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        fn(leaf, sub, out)
        return out[0], out[1], out[2], out[3]

    max_leaf, b, c, d = cpuid(0)
    vendor = b"".join(x.to_bytes(4, "little") for x in (b, d, c)).decode("ascii", "replace")
    model = ""
    if cpuid(0x80000000)[0] >= 0x80000004:
        raw = b"".join(x.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004)
                       for x in cpuid(leaf))
        model = raw.split(b"\0")[0].decode("ascii", "replace").strip()
    flags = dict.fromkeys(FLAG_NAMES, False)
    if max_leaf >= 7:
        _, b7, c7, d7 = cpuid(7, 0)
        a71 = cpuid(7, 1)[0]
        flags["avx2"] = _bit(b7, 5)
        flags["avx512f"] = _bit(b7, 16)
        flags["avx512_vnni"] = _bit(c7, 11)
        flags["amx"] = _bit(d7, 24) and _bit(d7, 25)  # AMX-TILE and AMX-INT8
        flags["avx_vnni"] = _bit(a71, 4)
        flags["avx512_bf16"] = _bit(a71, 5)
    return CpuInfo(platform.machine(), vendor.strip("\0"), re.sub(r"\s+", " ", model), flags, "cpuid")


def parse_proc_cpuinfo(text: str, arch: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (its first processor block)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    words = set((fields.get("flags") or fields.get("features") or "").split())
    flags = {
        "avx2": "avx2" in words,
        "avx512f": "avx512f" in words,
        "avx512_vnni": "avx512_vnni" in words,
        "avx_vnni": "avx_vnni" in words,
        "amx": "amx_int8" in words and "amx_tile" in words,
        "avx512_bf16": "avx512_bf16" in words,
        "neon_dotprod": "asimddp" in words,
    }
    vendor = fields.get("vendor_id") or fields.get("cpu implementer", "")
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware", "")
    return CpuInfo(arch, vendor, model, flags, "/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The CPU this process runs on (cached: it does not change while the process runs).

    >>> from slimtorch.metrics import cpu_info
    >>> info = cpu_info()
    >>> info.kind, info.flags["avx512_vnni"]
    ('x86-vnni', True)
    """
    arch = platform.machine()
    info = _from_cpuid()
    if info is not None:
        return info
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return parse_proc_cpuinfo(f.read(), arch)
    except OSError:
        return CpuInfo(arch, "", platform.processor(), dict.fromkeys(FLAG_NAMES, False), "platform")
