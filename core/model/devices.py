"""Which number format and device a model runs in: the allowed dtypes and devices, and whether this CPU runs
bf16 natively.

Apart from `core.model.loading` because the choice is made before, and independently of, any model: the app's
sidebar offers bf16 only where `cpu_bf16` says it pays, the study grid checks a spec's device before it plans,
and `core.model.loaded.wrap_model` names a built model's dtype from `DTYPES`. `core.model.loading` imports all
of it, so each name is still imported from there too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "bf16": "Arm BF16"}
"""/proc/cpuinfo flags of native bf16 matrix instructions, and their names."""


def cpu_bf16(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 matrices natively, and why (or why not), in words.

    Read from the ``flags`` (x86) or ``Features`` (Arm) lines of /proc/cpuinfo (``cpuinfo`` replaces the
    file, for tests). Without such an instruction set, torch emulates bf16 and it runs slower than fp32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False, "this system does not say which instructions its CPU has (no /proc/cpuinfo)"
    flags = {f for line in cpuinfo.splitlines() if line.split(":", 1)[0].strip() in ("flags", "Features")
             for f in line.split(":", 1)[-1].split()}
    found = [name for flag, name in BF16_FLAGS.items() if flag in flags]
    if found:
        return True, f"this CPU has {' and '.join(found)}: bf16 runs natively, about twice as fast as fp32"
    return False, ("this CPU has no bf16 matrix instructions (AVX512-BF16, AMX or Arm BF16), so bf16 would be "
                   "emulated and slower than fp32")


def _check_dtype_device(dtype: str, device: str, here: bool = True) -> None:
    """A known dtype and device; with ``here``, a CUDA device must also exist on this machine."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if device not in {"cpu", "cuda", "auto"} and not device.startswith("cuda:"):
        raise UserError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto (spread over every GPU)")
    if here and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for, but no CUDA GPU is available here; use cpu")

