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

The design's third healthy pattern, "Meaningful: different states -> different attention distributions", is a
second verdict on its own axis (an attention can be balanced on average and still give every state the same
weights). Its input is the rollout's `wsa/attention_state_std` (mean over PTMs of each weight's std across the
rollout's states) and `wsa/attention_top_switch` (share of states whose top PTM is not the rollout's top PTM):

    meaningful   mean state_std over the window >= meaningful_state_std
    state-blind  below it: one fixed mix of PTMs serves every state (the `mean` fusion with other weights)

Logged as `wsa/health/meaningful` (1 or 0); the top-switch share is reported beside it, not judged: near-uniform
weights with tiny jitter switch their argmax at random, so only the size of the differences decides.

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
STATE_DEPENDENCE = ("state-blind", "meaningful")
"""Logged as `wsa/health/meaningful` = the index in this tuple."""
STATE_STD_KEY, TOP_SWITCH_KEY = "wsa/attention_state_std", "wsa/attention_top_switch"


@dataclass
class StateDependenceReading:
    """The state-dependence verdict of a window of (state_std, top_switch) pairs."""

    verdict: str  # one of STATE_DEPENDENCE, or UNKNOWN
    points: int
    state_std: float = float("nan")  # window mean
    top_switch: float = float("nan")  # window mean

    def metrics(self) -> dict[str, float]:
        return {} if self.verdict == UNKNOWN else {"wsa/health/meaningful": float(STATE_DEPENDENCE.index(self.verdict))}


def classify_state_dependence(
    window: np.ndarray | Sequence[Sequence[float]], cfg: HealthConfig
) -> StateDependenceReading:
    """Classify a (n, 2) window of per-iteration (state_std, top_switch), oldest first (see the module docstring)."""
    w = np.asarray(window, dtype=float).reshape(-1, 2)
    n = w.shape[0]
    if n < cfg.min_points:
        return StateDependenceReading(UNKNOWN, n)
    std, switch = (float(v) for v in w.mean(0))
    verdict = "meaningful" if std >= cfg.meaningful_state_std else "state-blind"
    return StateDependenceReading(verdict, n, std, switch)


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
        self.spread: deque[tuple[float, float]] = deque(maxlen=cfg.window)  # (state_std, top_switch) per iteration
        self.dependence: Optional[StateDependenceReading] = None

    @property
    def state(self) -> str:
        return self.reading.state if self.reading else UNKNOWN

    def update(
        self, weights: Sequence[float], step: int, spread: Optional[tuple[float, float]] = None
    ) -> dict[str, float]:
        """Add one iteration's mean weights (P,) and, when given, its state dependence (state_std, top_switch);
        returns the metrics to log at `step`."""
        self.window.append(np.asarray(weights, dtype=float))
        previous = self.state
        self.reading = classify(np.stack(self.window), self.cfg)
        if self.reading.state not in (previous, UNKNOWN):
            self.transitions.append({"step": int(step), "state": self.reading.state})
            if self.cfg.warn:
                self._announce(previous, step)
        out = self.reading.metrics()
        if spread is not None:
            self.spread.append((float(spread[0]), float(spread[1])))
            before = self.dependence.verdict if self.dependence else UNKNOWN
            self.dependence = classify_state_dependence(list(self.spread), self.cfg)
            if self.dependence.verdict not in (before, UNKNOWN) and self.cfg.warn:
                log.info("attention at step %d: %s (was %s): %s", step, self.dependence.verdict, before,
                         self.describe_dependence())
            out.update(self.dependence.metrics())
        return out

    def replay(self, series: Sequence[tuple[Any, ...]]) -> None:
        """Feed (step, weights) or (step, weights, spread) already logged by an earlier attempt of this run, silently:
        a resumed run ends up in the same state, with the same transitions, as one that never stopped."""
        warn, self.cfg.warn = self.cfg.warn, False
        try:
            for step, weights, *spread in series:
                self.update(weights, step, *spread)
        finally:
            self.cfg.warn = warn

    def describe_dependence(self) -> str:
        """One sentence on the state dependence, with the numbers that decided it."""
        r, cfg = self.dependence, self.cfg
        if r is None or r.verdict == UNKNOWN:
            return f"not enough iterations yet ({len(self.spread)} of {cfg.min_points})"
        relation = ">=" if r.verdict == "meaningful" else "<"
        return (
            f"a PTM's weight differs between states by {r.state_std:.3f} on average (std over states, mean over PTMs; "
            f"{relation} meaningful_state_std {cfg.meaningful_state_std}); the top PTM differs from the rollout's in "
            f"{r.top_switch:.0%} of states; mean over the last {r.points} iterations"
        )

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
        d = self.dependence
        if d is not None:
            out["wsa/health/state_dependence"] = d.verdict
            out["wsa/health/state_dependence_explanation"] = self.describe_dependence()
            if d.verdict != UNKNOWN:
                out.update({"wsa/health/state_std": d.state_std, "wsa/health/top_switch": d.top_switch})
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
