"""Torch devices: which names this machine accepts."""
from __future__ import annotations


def check_device(name: str) -> None:
    """Refuse a torch device name that is malformed or absent on this machine, before any work."""
    import torch

    accepted = "accepted: cpu, cuda, cuda:N, mps"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; {accepted}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: not supported; {accepted}")
