"""PTM ablation of a trained WSA agent: what each PTM's contribution is worth to the policy.

`python -m wsa_lab.evaluate <runs> ablate=true` plays, on each condition of the suite, the agent as trained and,
for each PTM in turn, two ablated agents (:meth:`~wsa_lab.models.ActorCritic.ablated`):

- ``removed``: the PTM's attention weight set to 0 and the others renormalised (the fusion without it);
- ``mean_feature``: its adapted feature replaced by its mean over the condition's held-out states (what it says
  about *this* state is gone; its scale, and so the fused feature's, stays).

Each variant is played deterministically on the held-out episodes (as training's `eval/` metrics); its return and
headline metric (e.g. `greedy_ratio`) are reported beside the PTM's mean attention weight over those states, and
the **contribution** = the agent's headline metric minus the ablated agent's (> 0: the policy needs the PTM).
"""

from __future__ import annotations

import math
from typing import Any

from wsa_lab.models import ActorCritic, Ablation
from wsa_lab.rl.attention_probe import held_out_means
from wsa_lab.suites import PreparedCondition

#: variant name in the JSON -> Ablation mode
VARIANTS = {"removed": "remove", "mean_feature": "mean"}


def _scores(agent: ActorCritic, prepared: PreparedCondition, key: str) -> dict[str, float]:
    out = prepared.evaluator.evaluate(agent)  # eval/return, eval/return_std, eval/<ref>_ratio
    scores = {"return": out["eval/return"]}
    scores[key] = out["eval/" + key]
    return scores


def ablate_condition(agent: ActorCritic, prepared: PreparedCondition, key: str) -> dict[str, Any]:
    """The agent and its ablated variants on one prepared condition; `key` is the headline metric's JSON key
    (`greedy_ratio`, `return`, ...).

    Keys: `states` (held-out states averaged), `full` ({`return`, key}), and per PTM name: `mean_weight`, and per
    variant ({`return`, key}) with `<variant>_contribution` (full minus ablated headline metric).
    """
    means = held_out_means(agent, prepared.env, prepared.evaluator.seed)
    full = _scores(agent, prepared, key)
    ptms: dict[str, Any] = {}
    for i, name in enumerate(agent.ptm_names):
        entry: dict[str, Any] = {"mean_weight": float(means.weights[i])}
        for variant, mode in VARIANTS.items():
            ablation = Ablation(i, mode, means.features[i] if mode == "mean" else None)
            with agent.ablated(ablation):
                entry[variant] = _scores(agent, prepared, key)
            entry[f"{variant}_contribution"] = full[key] - entry[variant][key]
        ptms[name] = entry
    return {"states": means.states, "full": full, "ptms": ptms}


def _fmt(x: float, sign: str = "") -> str:
    # + 0.0 turns a rounded -0.0 into 0.0: "+0.000", not "-0.000", for a contribution of -1e-9
    return "n/a" if x is None or not math.isfinite(x) else f"{round(x, 3) + 0.0:{sign}.3f}"


def format_ablation_table(suite: str, results: list[dict[str, Any]]) -> str:
    """Markdown: per run, condition and PTM, its mean attention weight and the headline metric of each variant with
    the contribution (agent minus ablated) in brackets."""
    lines = [
        f"# PTM ablation on suite `{suite}`",
        "",
        "Deterministic agent on the held-out episodes. removed = the PTM's attention weight set to 0, the others "
        "renormalised; mean feature = its feature replaced by its mean over the held-out states. In brackets: the "
        "contribution = the agent's metric minus the ablated agent's (> 0: the policy needs the PTM).",
        "",
    ]
    for result in results:
        key = result["metric"].removeprefix("eval/")
        run = result["run"]
        lines += [
            f"## {run['name']} seed {run['seed']} (`{run['path']}`)", "",
            f"| condition | PTM | mean attention weight | {key} | return | removed: {key} (contribution) | removed: return | "
            f"mean feature: {key} (contribution) | mean feature: return |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, cell in result["conditions"].items():
            full = cell["full"]
            for ptm, e in cell["ptms"].items():
                lines.append(
                    f"| {name} | {ptm} | {_fmt(e['mean_weight'])} | {_fmt(full[key])} | {_fmt(full['return'])} | "
                    f"{_fmt(e['removed'][key])} ({_fmt(e['removed_contribution'], '+')}) | {_fmt(e['removed']['return'])} | "
                    f"{_fmt(e['mean_feature'][key])} ({_fmt(e['mean_feature_contribution'], '+')}) | "
                    f"{_fmt(e['mean_feature']['return'])} |"
                )
        lines.append("")
    return "\n".join(lines)
