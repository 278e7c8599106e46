"""The one home of device-name resolution: ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` -> ``torch.device``.

Config ``__post_init__`` methods call :func:`resolve_device` so that ``--device cuda`` on a machine without CUDA is
rejected when the options are parsed, before a model is loaded or a harvest starts.
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device = "auto", option: str = "device") -> torch.device:
    """``"auto"`` -> cuda if available, else mps if available, else cpu; other names are checked to exist here.

    ``option`` names the setting in error messages (``--device``, ``--model-device``, ...).
    """
    if isinstance(name, torch.device):
        return name
    text = str(name).strip().lower()
    flag = f"--{option.replace('_', '-')}"
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag}: unknown device {str(name)!r}; use {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{flag} {name}: CUDA is not available on this machine (torch {torch.__version__}, "
                f"{'CPU-only build' if torch.version.cuda is None else 'no GPU visible'}); "
                "use --" + option.replace("_", "-") + " cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(f"{flag} {name}: MPS is not available on this machine; use {flag} cpu or auto")
        return device
    raise ValueError(f"{flag}: unsupported device {str(name)!r}; use {DEVICE_CHOICES}")


MODEL_DTYPE_POLICIES = ("auto", "fast")
"""``--model-dtype`` values resolved per device by :func:`resolve_model_dtype` (any other value is a dtype name)."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: CUDA with bf16 support, or an x86 CPU with
    AVX512-BF16 or AMX (there bf16 matmuls ran 2.4x float32's rate on the project's 2-core AMD EPYC, 399 vs 169
    GFLOP/s at [4096, 576] x [576, 1536]). Elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu probes; absent: False
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_model_dtype(name: str, device: torch.device) -> str:
    """The model dtype for ``--model-dtype name`` on ``device``.

    ``auto``: bfloat16 on CUDA, float32 elsewhere (CPU results stay float32-exact). ``fast``: bfloat16 wherever
    :func:`native_bf16` (CUDA; CPUs with AVX512-BF16 or AMX), float32 elsewhere. Any other value is returned as is.
    """
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name == "fast":
        return "bfloat16" if native_bf16(device) else "float32"
    return name


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls and convolutions on CUDA (process-wide flags; set by whoever starts a run, not by the trainer)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
