"""Attention health: healthy attention patterns (balanced, dynamic) and warning signs (collapse, noise), measured during training.

The input is the rollout-mean attention weight of each PTM, one vector per PPO iteration
(`wsa/attention_weights_<i>`). Over a sliding window of the last `window` vectors, `w[t, i]`:

    max_weight = max_i mean_t w[t, i]                    (share of the strongest PTM)
    change     = max_i (max_t w[t, i] - min_t w[t, i])   (how far any weight moved)
    noise      = max_i sqrt(mean_t (second difference of w[., i])^2 / 6)
                 (the std of iteration-to-iteration jitter on top of any smooth trend: a straight or slowly
                 bending trend adds ~0, white noise of std s gives s)

and the state is the first that applies:

    collapsed  max_weight > collapse_threshold            one PTM gets (almost) all the attention
    noisy      noise > noise_threshold                    unstable, not explained by a trend
    static     change < static_tolerance                  weights stopped changing
    balanced   every mean weight in [balanced_low, balanced_high] / P   (P=3: 20%-40%)
    skewed     none of the above: uneven, not a warning sign

`collapsed`, `noisy` and `static` are warning signs: one warning line is printed when the state changes.

The troubleshooting checks ("features are diverse", "feature norms are balanced") are
judged per iteration by :class:`FeatureHealth` from `wsa/feature_similarity/<a>__<b>` (mean cosine similarity of
two PTMs' adapted features over the rollout's states) and `wsa/feature_norm_imbalance` (largest / smallest mean
feature norm): one warning the first time a pair of PTMs is near-identical (similarity above
`similarity_threshold`) or the norms are imbalanced (above `norm_imbalance_threshold`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from wsa_lab.config.schema import HealthConfig

log = logging.getLogger("wsa_lab")

STATES = ("balanced", "skewed", "collapsed", "static", "noisy")
"""Logged as `wsa/health/state` = the index in this tuple."""
WARNING_STATES = ("collapsed", "static", "noisy")
UNKNOWN = "unknown"  # fewer than `min_points` iterations seen


@dataclass
class HealthReading:
    """One classification of a window of attention weights."""

    state: str
    points: int
    mean_weights: np.ndarray  # (P,)
    max_weight: float = float("nan")
    change: float = float("nan")
    noise: float = float("nan")

    def metrics(self) -> dict[str, float]:
        """`wsa/health/*` scalars for metrics.jsonl and the backends (nothing while `unknown`)."""
        if self.state == UNKNOWN:
            return {}
        return {
            "wsa/health/state": float(STATES.index(self.state)),
            "wsa/health/max_weight": self.max_weight,
            "wsa/health/change": self.change,
            "wsa/health/noise": self.noise,
        }


def _jitter_std(w: np.ndarray) -> np.ndarray:
    """Per column, the noise std estimated from second differences: for w = smooth trend + white noise of
    std s, E[(w[t+1] - 2 w[t] + w[t-1])^2] = 6 s^2 while a linear trend contributes 0."""
    d2 = np.diff(w, n=2, axis=0)
    return np.sqrt((d2**2).mean(0) / 6)


def classify(window: np.ndarray | Sequence[Sequence[float]], cfg: HealthConfig) -> HealthReading:
    """Classify a (n, P) window of attention weights, oldest first (see the module docstring)."""
    w = np.asarray(window, dtype=float)
    if w.ndim != 2 or w.shape[1] < 2:
        raise ValueError(f"attention window must be (iterations, P>=2); got shape {w.shape}")
    mean_w = w.mean(0)
    n, p = w.shape
    if n < cfg.min_points:
        return HealthReading(UNKNOWN, n, mean_w)
    max_weight = float(mean_w.max())
    change = float((w.max(0) - w.min(0)).max())
    noise = float(_jitter_std(w).max())
    if max_weight > cfg.collapse_threshold:
        state = "collapsed"
    elif noise > cfg.noise_threshold:
        state = "noisy"
    elif change < cfg.static_tolerance:
        state = "static"
    elif (mean_w >= cfg.balanced_low / p).all() and (mean_w <= cfg.balanced_high / p).all():
        state = "balanced"
    else:
        state = "skewed"
    return HealthReading(state, n, mean_w, max_weight, change, noise)


class AttentionHealth:
    """Sliding-window health monitor: feed one weight vector per iteration, get `wsa/health/*` back."""

    def __init__(self, cfg: HealthConfig, names: Sequence[str]) -> None:
        self.cfg = cfg
        self.names = list(names)
        self.window: deque[np.ndarray] = deque(maxlen=cfg.window)
        self.reading: Optional[HealthReading] = None
        self.transitions: list[dict[str, Any]] = []  # [{"step", "state"}] each time the state changed

    @property
    def state(self) -> str:
        return self.reading.state if self.reading else UNKNOWN

    def update(self, weights: Sequence[float], step: int) -> dict[str, float]:
        """Add one iteration's mean weights (P,); returns the metrics to log at `step`."""
        self.window.append(np.asarray(weights, dtype=float))
        previous = self.state
        self.reading = classify(np.stack(self.window), self.cfg)
        if self.reading.state not in (previous, UNKNOWN):
            self.transitions.append({"step": int(step), "state": self.reading.state})
            if self.cfg.warn:
                self._announce(previous, step)
        return self.reading.metrics()

    def replay(self, series: Sequence[tuple[int, Sequence[float]]]) -> None:
        """Feed (step, weights) already logged by an earlier attempt of this run, silently: a resumed run
        ends up in the same state, with the same transitions, as one that never stopped."""
        warn, self.cfg.warn = self.cfg.warn, False
        try:
            for step, weights in series:
                self.update(weights, step)
        finally:
            self.cfg.warn = warn

    def describe(self) -> str:
        """One sentence on the current state, with the numbers that decided it."""
        r, cfg = self.reading, self.cfg
        if r is None or r.state == UNKNOWN:
            return f"not enough iterations yet ({len(self.window)} of {cfg.min_points})"
        shares = ", ".join(f"{name} {w:.0%}" for name, w in zip(self.names, r.mean_weights))
        n, p = r.points, len(r.mean_weights)
        if r.state == "collapsed":
            top = self.names[int(np.argmax(r.mean_weights))] if self.names else f"PTM {int(np.argmax(r.mean_weights))}"
            why = f"{top} gets {r.max_weight:.0%} of the attention (> {cfg.collapse_threshold:.0%})"
        elif r.state == "noisy":
            why = f"weights jump around their trend (std {r.noise:.3f} > noise_threshold {cfg.noise_threshold})"
        elif r.state == "static":
            why = f"no weight moved more than {r.change:.4f} (< static_tolerance {cfg.static_tolerance})"
        elif r.state == "balanced":
            why = f"every PTM gets {cfg.balanced_low / p:.0%}-{cfg.balanced_high / p:.0%}"
        else:
            why = f"uneven but no warning sign (balanced is {cfg.balanced_low / p:.0%}-{cfg.balanced_high / p:.0%} each)"
        return f"{why}; mean over the last {n} iterations: {shares}"

    def _announce(self, previous: str, step: int) -> None:
        state = self.state
        if state in WARNING_STATES:
            log.warning("attention health at step %d: %s (was %s): %s", step, state.upper(), previous, self.describe())
        else:
            log.info("attention health at step %d: %s (was %s): %s", step, state, previous, self.describe())

    def summary(self) -> dict[str, Any]:
        """The final verdict and its numbers, for summary.json (`wsa/health/*`)."""
        out: dict[str, Any] = {"wsa/health/verdict": self.state, "wsa/health/transitions": list(self.transitions)}
        r = self.reading
        if r is not None:
            out["wsa/health/explanation"] = self.describe()
            out["wsa/health/mean_weights"] = {
                name: round(float(w), 6) for name, w in zip(self.names or map(str, range(len(r.mean_weights))), r.mean_weights)
            }
            if r.state != UNKNOWN:
                out.update({
                    "wsa/health/max_weight": r.max_weight, "wsa/health/change": r.change, "wsa/health/noise": r.noise,
                })
        warned = sorted({t["state"] for t in self.transitions if t["state"] in WARNING_STATES})
        out["wsa/health/warnings_seen"] = warned
        return out


SIMILARITY_PREFIX = "wsa/feature_similarity/"
IMBALANCE_KEY = "wsa/feature_norm_imbalance"


class FeatureHealth:
    """The "features are diverse" and "feature norms are balanced" checks, one warning per finding."""

    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        self.findings: list[dict[str, Any]] = []  # [{"step", "check", "what", "value"}], the first time each is seen
        self._seen: set[str] = set()

    def update(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if value is None:
                continue
            if key.startswith(SIMILARITY_PREFIX) and value > self.cfg.similarity_threshold:
                pair = key.removeprefix(SIMILARITY_PREFIX).replace("__", " and ")
                self._report(step, "near_identical", pair, value,
                             f"PTMs {pair} produce near-identical features (mean cosine similarity {value:.3f} > "
                             f"{self.cfg.similarity_threshold}): the attention cannot tell them apart; use more diverse "
                             "PTMs (architecture, weights)")
            elif key == IMBALANCE_KEY and value > self.cfg.norm_imbalance_threshold:
                self._report(step, "norm_imbalance", "feature norms", value,
                             f"PTM feature norms are imbalanced (largest / smallest mean norm {value:.1f} > "
                             f"{self.cfg.norm_imbalance_threshold}): the largest dominates the fused feature; try "
                             "actor_critic.wsa.adapter=layernorm")

    def replay(self, series: Sequence[tuple[int, dict[str, float]]]) -> None:
        """Feed the records an earlier attempt of this run logged, silently (a resumed run does not warn again)."""
        warn, self.cfg.warn = self.cfg.warn, False
        try:
            for step, record in series:
                self.update(record, step)
        finally:
            self.cfg.warn = warn

    def _report(self, step: int, check: str, what: str, value: float, message: str) -> None:
        tag = f"{check}:{what}"
        if tag in self._seen:
            return
        self._seen.add(tag)
        self.findings.append({"step": int(step), "check": check, "what": what, "value": float(value)})
        if self.cfg.warn:
            log.warning("feature health at step %d: %s", step, message)

    def summary(self) -> dict[str, Any]:
        return {"wsa/health/feature_findings": list(self.findings)}
