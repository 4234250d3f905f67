"""One seed for python, numpy and torch; RNG state capture for checkpoints."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device). Seed 0 is a valid seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def deterministic_kernels(device: torch.device, enabled: bool) -> None:
    """Same seed -> same numbers on CUDA too (`deterministic` in conf/config.yaml); CPU kernels already are.

    On a GPU, atomics in scatter/index_add (the renderer, GNN pooling, the backward of indexing) and cuDNN's
    autotuned convolutions add run-to-run noise; torch's deterministic mode picks kernels without it, at
    some speed cost (see BENCHMARKS.md). An op with no deterministic kernel then raises instead of drifting.
    """
    if device.type != "cuda":
        return
    if enabled:
        # cuBLAS reads this when its first handle is made (the run's first matrix product, after this call)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled


def rng_state() -> dict[str, Any]:
    """Capture every global RNG so a resumed run continues the same random stream."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's state holds an ndarray; keep it as a tensor so checkpoints load with weights_only=True
        "numpy": _numpy_state_to_torch(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_torch(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
