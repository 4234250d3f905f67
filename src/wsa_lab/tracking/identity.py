"""A run's identity for naming and grouping it in W&B and TensorBoard: arm, seed, phase, PTMs, sweep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig


@dataclass
class RunIdentity:
    """What a run is, for naming and grouping it in W&B/TensorBoard: arm, seed, phase, PTMs, sweep."""

    arm: str
    seed: int
    phase: Optional[str]
    ptm_names: list[str]
    fusion: Optional[str]
    wsa_enabled: bool
    sweep: Optional[str] = None  # sweep-<date>_<time> inside a Hydra multirun

    @property
    def default_group(self) -> str:
        return self.sweep or self.phase or self.arm

    @property
    def default_name(self) -> str:
        return f"{self.arm}_seed{self.seed}"

    @property
    def tags(self) -> list[str]:
        return [t for t in (self.phase, *self.ptm_names) if t]

    def flat_fields(self) -> dict[str, Any]:
        """Fields added at the top of the W&B config so dashboards can group by them."""
        return {
            "arm": self.arm,
            "phase": self.phase,
            "ptm_names": list(self.ptm_names),
            "ptm_count": len(self.ptm_names),
            "fusion": self.fusion,
            "wsa_enabled": self.wsa_enabled,
        }


def _sweep_name() -> Optional[str]:
    """`sweep-<date>_<time>` from Hydra's sweep folder when this process runs a multirun job, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    parts = Path(str(hc.sweep.dir)).parts[-2:]
    return "sweep-" + "_".join(parts)


def run_identity(cfg: DictConfig) -> RunIdentity:
    """The run's identity from its composed config (the same PTM names, in order, as `summary.json`)."""
    wsa = cfg.actor_critic.get("wsa") or {}
    enabled = bool(wsa.get("enabled", True))
    names: list[str] = []
    if enabled:
        for i, ptm in enumerate(wsa.get("pretrained_models") or []):
            names.append(str(ptm.get("name") or ptm.get("model_type") or f"ptm{i}"))
    return RunIdentity(
        arm=str(cfg.name),
        seed=int(cfg.seed),
        phase=None if cfg.get("phase") is None else str(cfg.phase),
        ptm_names=names,
        fusion=str(wsa.get("fusion", "wsa")) if enabled else None,
        wsa_enabled=enabled,
        sweep=_sweep_name(),
    )


@dataclass(frozen=True)
class Continuation:
    """Where a resumed run picks up, for the backends that keep their own history (TensorBoard, W&B).

    `step`: the checkpoint's global_step, from which training continues. `logged_until`: the last step an earlier
    attempt logged; metrics.jsonl drops what came after the checkpoint, but event files and W&B runs already hold it.
    """

    step: int
    logged_until: int
