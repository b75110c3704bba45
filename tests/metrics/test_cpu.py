"""CPU detection: /proc/cpuinfo parsing (x86 and Arm), the labels derived from the flags, this process's CPU."""

from __future__ import annotations

import pytest

from slimtorch.metrics import CpuInfo, cpu_info
from slimtorch.metrics.cpu import FLAG_NAMES, parse_proc_cpuinfo

# First processor block of a Sapphire Rapids Xeon (abridged), then the second block, which must be ignored.
X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: Some Other CPU
flags\t\t: fpu sse sse2
"""

# A Neoverse-N1 (Graviton 2) block: no model name, an implementer code and the Arm feature words.
ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0c
"""


def test_x86_flags_line_is_parsed_from_the_first_processor_only():
    info = parse_proc_cpuinfo(X86_CPUINFO, "x86_64")
    assert info.flags == {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": False, "amx": True,
                          "avx512_bf16": True, "neon_dotprod": False}
    assert (info.vendor, info.model, info.source) == ("GenuineIntel", "Intel(R) Xeon(R) Platinum 8488C",
                                                      "/proc/cpuinfo")
    assert info.kind == "x86-vnni"
    assert info.int8_dot_product and info.fast_bf16


def test_aarch64_features_line_is_parsed():
    info = parse_proc_cpuinfo(ARM_CPUINFO, "aarch64")
    assert info.flags == {"avx2": False, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "amx": False,
                          "avx512_bf16": False, "neon_dotprod": True}
    assert info.vendor == "0x41"
    assert info.kind == "arm64"
    assert info.int8_dot_product and not info.fast_bf16


def test_amx_needs_both_tile_and_int8_words():
    info = parse_proc_cpuinfo("flags\t: avx2 amx_tile\n", "x86_64")
    assert not info.flags["amx"] and not info.fast_bf16
    assert info.kind == "x86-avx2"


@pytest.mark.parametrize(
    "flags, kind, fast_bf16",
    [({"avx2": True}, "x86-avx2", False), ({}, "x86", False), ({"avx_vnni": True}, "x86-vnni", False),
     ({"avx2": True, "avx512_bf16": True}, "x86-avx2", True), ({"amx": True}, "x86-vnni", True)],
)
def test_kind_and_fast_bf16_follow_the_flags(flags, kind, fast_bf16):
    info = CpuInfo("x86_64", "GenuineIntel", "test", {**dict.fromkeys(FLAG_NAMES, False), **flags})
    assert (info.kind, info.fast_bf16) == (kind, fast_bf16)


def test_cpu_info_describes_this_process_cpu():
    info = cpu_info()
    assert isinstance(info, CpuInfo)
    assert cpu_info() is info  # cached
    d = info.to_dict()
    assert {"arch", "vendor", "model", "kind", "flags"} <= set(d)
    assert set(d["flags"]) == set(FLAG_NAMES)
    assert all(isinstance(v, bool) for v in d["flags"].values())
    assert d["kind"] == info.kind and d["arch"] == info.arch
