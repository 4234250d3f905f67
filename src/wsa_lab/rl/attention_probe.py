"""What a WSA agent attends to on held-out episodes, read off a deterministic play (:func:`~wsa_lab.rl.evaluation.play`).

- :func:`held_out_means`: each PTM's mean attention weight and mean adapted feature over every state of the held-out
  episodes; the PTM ablation (`python -m wsa_lab.evaluate ... ablate=true`) replaces a feature with that mean.
- :func:`attention_states`: a few held-out states (the graph: node positions, the first node feature, the mask; or
  the env's image when there are no positions) with the per-PTM weights the agent gave them. Training writes them to
  ``attention_states.json`` at its end (:func:`write_attention_states`); `python -m wsa_lab.report` draws them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from wsa_lab.contract import GraphBatch, VectorGraphEnv
from wsa_lab.models import ActorCritic, PolicyStep
from wsa_lab.models.backbones import eval_mode
from wsa_lab.rl.evaluation import play
from wsa_lab.run.atomic import write_text_atomic

ATTENTION_STATES = "attention_states.json"
#: held-out states kept per run: episode i at a step spread from its start (i = 0) to its end (i = count - 1)
DEFAULT_STATES = 6
_DIGITS = 4  # positions and values in the JSON: enough for a figure, a small file


class HeldOutMeans(NamedTuple):
    weights: Tensor  # (P,) mean attention weight over the held-out states
    features: Tensor  # (P, F) mean adapted feature over the held-out states
    states: int  # how many states were averaged


def _fusion(step: PolicyStep) -> Any:
    fusion = step.features.fusion
    if fusion is None or fusion.weights is None:
        raise ValueError("the agent has no attention weights (the Standard Actor, or `concat` fusion)")
    return fusion


def held_out_means(agent: ActorCritic, env: VectorGraphEnv, seed: int) -> HeldOutMeans:
    """Mean attention weight and adapted feature of each PTM over the states of the episodes ``env.reset(seed)``
    starts, played deterministically (the states the evaluation's deterministic agent visits)."""
    sums: dict[str, Any] = {"weights": 0.0, "features": 0.0, "states": 0}

    def add(_obs: GraphBatch, step: PolicyStep, playing: Tensor) -> None:
        fusion = _fusion(step)
        sums["weights"] = sums["weights"] + fusion.weights[playing].double().sum(0)
        sums["features"] = sums["features"] + fusion.features[playing].double().sum(0)
        sums["states"] += int(playing.sum())

    with eval_mode(agent):
        play(agent, env, seed, deterministic=True, on_step=add)
    n = sums["states"]
    return HeldOutMeans((sums["weights"] / n).float(), (sums["features"] / n).float(), n)


def _rounded(t: Tensor) -> Any:
    return torch.round(t.detach().double().cpu(), decimals=_DIGITS).tolist()


def _state_record(obs: GraphBatch, step: PolicyStep, g: int, names: list[str]) -> dict[str, Any]:
    """Graph `g` of the batch as JSON: its weights, the graph (positions, first node feature, mask), the chosen node."""
    lo, hi = int(obs.ptr[g]), int(obs.ptr[g + 1])
    record: dict[str, Any] = {
        "weights": dict(zip(names, _rounded(_fusion(step).weights[g]))),
        "nodes": hi - lo,
        "node_feature": _rounded(obs.x[lo:hi, 0]) if obs.x.shape[1] else None,
        "mask": obs.action_mask[lo:hi].to(torch.int8).tolist(),
        "chosen": int(step.action.node[g]),
        "positions": _rounded(obs.positions[lo:hi]) if obs.positions is not None else None,
    }
    if obs.positions is None and obs.image is not None:
        record["image"] = _rounded(obs.image[g].float())  # (C, H, W): drawn when there are no positions
    return record


def attention_states(
    agent: ActorCritic, env: VectorGraphEnv, seed: int, count: int = DEFAULT_STATES
) -> list[dict[str, Any]]:
    """`count` held-out states with their per-PTM weights: held-out episode i (i < count, at most the env's
    envs) at the step ``round(i / (count - 1) * (its length - 1))``, so the states run from an episode's start to
    another's end. Deterministic play, as the evaluation's."""
    count = min(count, env.num_envs)
    names = agent.ptm_names
    seen: dict[int, list[dict[str, Any]]] = {i: [] for i in range(count)}

    def keep(obs: GraphBatch, step: PolicyStep, playing: Tensor) -> None:
        for i in range(count):
            if bool(playing[i]):
                seen[i].append(_state_record(obs, step, i, names))

    with eval_mode(agent):
        play(agent, env, seed, deterministic=True, on_step=keep)
    out = []
    for i, states in seen.items():
        t = round(i / max(count - 1, 1) * (len(states) - 1))
        out.append({"episode": i, "step": t, "episode_steps": len(states), **states[t]})
    return out


def write_attention_states(
    run_dir: Path, agent: ActorCritic, env: VectorGraphEnv, seed: int, global_step: int,
    count: int = DEFAULT_STATES,
) -> Optional[Path]:
    """``<run_dir>/attention_states.json`` (atomic) for an agent with attention weights; None (no file) otherwise."""
    if not agent.uses_wsa or agent.actor.extractor.fusion == "concat":
        return None
    payload = {
        "ptm_names": agent.ptm_names,
        "global_step": int(global_step),
        "seed": int(seed),
        "node_feature": "the first node feature (x[:, 0])",
        "states": attention_states(agent, env, seed, count),
    }
    return write_text_atomic(Path(run_dir) / ATTENTION_STATES, json.dumps(payload) + "\n")
