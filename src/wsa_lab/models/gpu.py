"""GPU-only speed options of the actor-critic (`actor_critic.gpu`): bf16 autocast, channels_last, torch.compile.

Each option acts only when the model runs on a CUDA device; on the CPU they change nothing, so a config
that sets them runs unchanged on a laptop. What they do:

- ``amp: bf16``: the actor's feature extraction (GNNs, CNNs, adapters, attention) runs under
  ``torch.autocast(dtype=bfloat16)``; its outputs are cast back to float32, so the heads, the
  log-probabilities and the PPO losses stay in float32. bf16 needs no loss scaling.
- ``channels_last``: the CNN bodies' weights and the images they read use the NHWC layout (faster
  convolutions on tensor cores).
- ``compile``: the CNN bodies are compiled with ``torch.compile`` (``nn.Module.compile``, so state-dict
  keys are unchanged). The first iterations are slower while it compiles; stage-wise gradient
  checkpointing (``checkpoint_min_nodes``) calls the stages directly and bypasses the compiled body.
  Under ``compile``, ``channels_last`` is not applied: inductor chooses convolution layouts itself, and
  channels_last weights broke its backward pass (torch 2.11 on an H200: a stride assertion in
  ``convolution_backward``, see BENCHMARKS.md).
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Iterable, Optional

import torch
from torch import Tensor, nn

from wsa_lab.errors import ConfigError

#: Device types the options act on. Tests add "cpu" to run the same code paths without a GPU.
ACCELERATED_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
AMP_DTYPES = {"bf16": torch.bfloat16}
_compiled: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # bodies `prepare_cnn_bodies` compiled


@dataclass
class GPUConfig:
    """`actor_critic.gpu`; every field is ignored on the CPU."""

    amp: Optional[str]  # bf16: autocast the actor's feature extraction; null: float32
    channels_last: bool  # NHWC layout for the CNN bodies and their images
    compile: bool  # torch.compile the CNN bodies

    def __post_init__(self) -> None:
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ConfigError(f"actor_critic.gpu.amp must be null or one of {list(AMP_DTYPES)}, got {self.amp!r}")

    @property
    def nhwc(self) -> bool:
        """Whether the channels_last layout is applied (not under `compile`: see the module docstring)."""
        return self.channels_last and not self.compile


def accelerated(device: torch.device) -> bool:
    return device.type in ACCELERATED_DEVICE_TYPES


def autocast(cfg: GPUConfig, device: torch.device) -> ContextManager:
    """bf16 autocast on an accelerated device when `cfg.amp` asks for it, else a no-op context."""
    if cfg.amp is not None and accelerated(device):
        return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[cfg.amp])
    return nullcontext()


def prepare_cnn_bodies(bodies: Iterable[nn.Module], cfg: GPUConfig, device: torch.device) -> None:
    """Apply `channels_last` and `compile` to the CNN bodies once they are on `device` (idempotent)."""
    if not accelerated(device):
        return
    for body in bodies:
        if cfg.nhwc:
            body.to(memory_format=torch.channels_last)  # keeps the Parameter objects (optimisers stay valid)
        if cfg.compile and body not in _compiled:  # compiled once: a second compile() would compile again
            body.compile()
            _compiled.add(body)


def to_host(tensor: Tensor) -> Tensor:
    """Copy to the CPU; from a GPU through pinned memory without blocking (the caller syncs later)."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return out.copy_(tensor, non_blocking=True)
