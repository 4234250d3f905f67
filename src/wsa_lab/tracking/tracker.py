"""`Tracker`: the one object training talks to for logging; backends plug in behind it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from wsa_lab.tracking.health import STATE_STD_KEY, TOP_SWITCH_KEY, AttentionHealth, FeatureHealth
from wsa_lab.tracking.metrics import MetricsWriter, read_metrics, write_json_atomic
from wsa_lab.config.validate import logger_settings
from wsa_lab.tracking.identity import Continuation, run_identity

log = logging.getLogger("wsa_lab")

_INDEXED = re.compile(r"^wsa/(attention_weights|feature_norms)_(\d+)$")
_BY_NAME = {"attention_weights": "wsa/attention/", "feature_norms": "wsa/feature_norms/"}


def unique_names(names: Sequence[str]) -> list[str]:
    """PTM names as metric suffixes: a name used twice gets `_<i>` appended (its position)."""
    return [f"{n}_{i}" if list(names).count(n) > 1 else n for i, n in enumerate(names)]


class Tracker:
    """Fans metrics out to `metrics.jsonl` (always) and to optional backends; owns `summary.json`.

    Backends are objects with `log(metrics, step)`, `log_attention(weights, names, step)` and
    `finish(summary)`; they are closed in `finish` also when training raised. On top of the metrics it is
    given, the tracker adds the per-name copies of the indexed WSA metrics
    (`wsa/attention/<ptm name>`, `wsa/feature_norms/<ptm name>`, so runs with different PTM orders compare)
    and the attention health (`wsa/health/*`, see `health.py`).
    """

    def __init__(
        self,
        run_dir: str | Path,
        backends: Optional[list[Any]] = None,
        *,
        ptm_names: Sequence[str] = (),
        health: Optional[AttentionHealth] = None,
        feature_health: Optional[FeatureHealth] = None,
        log_attention: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.writer = MetricsWriter(self.run_dir)
        self.backends = list(backends or [])
        self.ptm_names = unique_names(ptm_names)
        self.health = health
        self.feature_health = feature_health
        self.log_attention_enabled = log_attention
        self.finished = False

    # ------------------------------------------------------------------ logging
    def log(self, metrics: Mapping[str, float], step: int) -> None:
        record = dict(metrics)
        record.update(self._by_name(metrics))
        weights = self._attention_vector(metrics)
        if self.health is not None and weights is not None:
            record.update(self.health.update(weights, step, self._spread(metrics)))
        if self.feature_health is not None:
            self.feature_health.update(record, step)
        self.writer.log(record, step)
        self._each_backend("log", record, step)

    def log_attention(self, weights: torch.Tensor, names: list[str], step: int) -> None:
        """Per-state attention weights of one rollout, (states, P): histograms (their spread over states is a metric
        of the rollout, `wsa/attention_state_std`, logged with the means)."""
        if not self.log_attention_enabled or weights is None or weights.numel() == 0:
            return
        names = unique_names(names) if names else self.ptm_names
        self._each_backend("log_attention", weights.detach().float().cpu(), names, step)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(summary, self.run_dir / "summary.json")

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Write the final summary (with the attention-health verdict) and close every backend.

        Safe to call after an error and more than once (later calls only rewrite summary.json); a backend
        that fails to close is reported and does not stop the others.
        """
        final = {**summary}
        if self.health is not None:
            final.update(self.health.summary())
        if self.feature_health is not None:
            final.update(self.feature_health.summary())
        self.write_summary(final)
        if self.finished:
            return
        self.finished = True
        self.writer.close()
        for backend in self.backends:
            try:
                backend.finish(final)
            except Exception as exc:  # noqa: BLE001 - closing must go on for the other backends
                log.warning("logger backend %s failed to finish: %s: %s", type(backend).__name__, type(exc).__name__, exc)

    # ------------------------------------------------------------------ helpers
    def _by_name(self, metrics: Mapping[str, float]) -> dict[str, float]:
        out = {}
        for key, value in metrics.items():
            m = _INDEXED.match(key)
            if m and int(m.group(2)) < len(self.ptm_names):
                out[_BY_NAME[m.group(1)] + self.ptm_names[int(m.group(2))]] = value
        return out

    def _attention_vector(self, metrics: Mapping[str, float]) -> Optional[list[float]]:
        p = len(self.ptm_names)
        keys = [f"wsa/attention_weights_{i}" for i in range(p)]
        if p < 2 or not all(metrics.get(k) is not None for k in keys):
            return None
        return [float(metrics[k]) for k in keys]

    @staticmethod
    def _spread(metrics: Mapping[str, float]) -> Optional[tuple[float, float]]:
        """(state_std, top_switch) of the rollout, when logged."""
        std, switch = metrics.get(STATE_STD_KEY), metrics.get(TOP_SWITCH_KEY)
        return None if std is None or switch is None else (float(std), float(switch))

    def _each_backend(self, method: str, *args: Any) -> None:
        """Call `method` on every backend; one that raises is reported once and dropped (training goes on)."""
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:  # noqa: BLE001
                log.warning(
                    "logger backend %s failed (%s: %s); it is switched off for the rest of this run",
                    type(backend).__name__, type(exc).__name__, exc,
                )
                self.backends.remove(backend)


def build_tracker(cfg: DictConfig, run_dir: str | Path, continuation: Optional[Continuation] = None) -> Tracker:
    """The run's tracker: metrics.jsonl plus one backend per entry of `cfg.logger` that has one.

    `continuation`: set when the run resumes from a checkpoint; None is a fresh start (a new W&B run, also in a
    folder that held an earlier run).

    Validates `cfg.logger` first (one-line ConfigError on unknown keys or wrong types). The attention
    health monitor runs for WSA runs with learned attention (`fusion: wsa`) over at least two PTMs, unless
    attention logging is switched off (`actor_critic.wsa.logging.log_attention_weights=false`).
    """
    settings = logger_settings(cfg)
    identity = run_identity(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    wsa_logging = cfg.actor_critic.wsa.logging
    log_attention = bool(wsa_logging.log_attention_weights) and identity.wsa_enabled
    names = unique_names(identity.ptm_names)
    learned = identity.fusion == "wsa"  # `mean` reports constant 1/P weights: nothing to judge
    health = AttentionHealth(settings.health, names) if log_attention and learned and len(names) >= 2 else None
    config = OmegaConf.to_container(cfg, resolve=True)
    backends: list[Any] = []
    try:
        if settings.tensorboard is not None:
            from wsa_lab.tracking.tensorboard_backend import TensorBoardBackend

            backends.append(TensorBoardBackend(settings.tensorboard, run_dir, identity, config, continuation))
        if settings.wandb is not None and settings.wandb.resolved_mode() != "disabled":
            from wsa_lab.tracking.wandb_backend import WandbBackend

            backends.append(WandbBackend(settings.wandb, run_dir, identity, config, continuation))
    except BaseException:
        for backend in backends:  # don't leave a half-built set of backends open
            backend.finish({"status": "failed"})
        raise
    log_features = bool(wsa_logging.log_features) and identity.wsa_enabled
    features = FeatureHealth(settings.health) if log_features and len(names) >= 2 else None
    tracker = Tracker(run_dir, backends, ptm_names=names, health=health, feature_health=features, log_attention=log_attention)
    if features is not None and (run_dir / "metrics.jsonl").is_file():  # a resumed run: what was already reported
        features.replay([(int(r["global_step"]), r) for r in read_metrics(run_dir)])
    if health is not None and (run_dir / "metrics.jsonl").is_file():  # a resumed run: restore the window
        health.replay([
            (int(r["global_step"]), w, tracker._spread(r))
            for r in read_metrics(run_dir) if (w := tracker._attention_vector(r)) is not None
        ])
    return tracker
