"""`init_from=<run folder>`: start a run from another run's trained agent, with another PTM list (grow or shrink
the pool).

    source = read_source(cfg.init_from)     # before anything is built or written: a refusal leaves no run folder
    carried = carry_over(agent, source)     # the freshly built agent takes every tensor whose name and shape match
    log.info(carried.line())                # what was loaded, what is new, what was dropped

Tensors are matched by name, where a PTM's tensors are named by the PTM (``actor.extractor.ptms.<i>.`` becomes
the PTM's name), so a PTM keeps its weights when the list is reordered, and one that is new (or renamed) starts
fresh: its backbone as its config builds it, its adapter newly initialised. The shared attention, the state encoder,
the heads and the critic carry over whole. A tensor of the same name and another shape (another `feature_dim`,
attention size or env) cannot carry over: a one-line error, as for a folder without a checkpoint or a source that is
not a WSA agent.

The source folder is data (README "Run folders are data"): its checkpoint loads with `weights_only=True`, nothing in
it is written (not even a stale temp file removed), and of its config only the PTM names and `wsa.enabled` are read;
nothing it names is called.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import Tensor, nn

from wsa_lab.errors import ConfigError
from wsa_lab.run.checkpoint import CheckpointError, load_latest
from wsa_lab.run.reader import CHECKPOINTS

#: a PTM's tensors: `actor.extractor.ptms.<index>.<rest>` (`MultiPTMFeatureExtractor.ptms`)
_PTM_KEY = re.compile(r"^actor\.extractor\.ptms\.(\d+)\.(.+)$")
Name = tuple[Optional[str], str]  # (PTM name, rest of the key) for a PTM's tensors, (None, key) for the others


class InitFromError(ConfigError):
    """`init_from` names something a run cannot start from."""


@dataclass
class Source:
    """The trained agent `init_from` names: its folder, checkpoint file, step, PTM names and state dict."""

    folder: Path
    checkpoint: Path
    global_step: int
    ptm_names: list[str]
    agent: dict[str, Tensor]


@dataclass
class Carried:
    """What `carry_over` did: how many tensors were loaded, and the target's new and the source's dropped tensors
    by part (``ptm 2 (gin) adapter``: count)."""

    source: Source
    loaded: int
    new: dict[str, int]
    dropped: dict[str, int]

    def line(self) -> str:
        """The one line a run prints: ``init_from <folder>: loaded 42 tensors ...; new: ...; dropped: ...``."""

        def parts(groups: dict[str, int]) -> str:
            return ", ".join(f"{part} ({n} tensor{'s' * (n != 1)})" for part, n in groups.items()) or "none"

        return (
            f"init_from {self.source.folder}: loaded {self.loaded} tensors from {self.source.checkpoint.name} "
            f"(global_step {self.source.global_step}, PTMs {self.source.ptm_names}); new: {parts(self.new)}; "
            f"dropped: {parts(self.dropped)}"
        )

    def record(self) -> dict[str, Any]:
        """For summary.json's `init_from` (plain JSON)."""
        return {
            "folder": str(self.source.folder), "checkpoint": str(self.source.checkpoint),
            "global_step": self.source.global_step, "ptm_names": list(self.source.ptm_names),
            "loaded": self.loaded, "new": dict(self.new), "dropped": dict(self.dropped),
        }


def _refuse(folder: Any, why: str) -> InitFromError:
    return InitFromError(f"init_from={folder}: {why}")


def read_source(folder: str | Path) -> Source:
    """The newest usable checkpoint of the run folder `folder` (`checkpoints/last.pt`, else `prev.pt`) and its
    PTM names; a one-line InitFromError when there is none or it is not a WSA agent's."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise _refuse(folder, "no such run folder")
    try:
        found = load_latest(
            path / CHECKPOINTS, required=("agent", "config"), tidy=False,
            hint="init_from needs a run folder with a usable checkpoint",
        )
    except CheckpointError as exc:
        raise _refuse(folder, str(exc)) from exc
    if found is None:
        raise _refuse(folder, f"no checkpoint in {path / CHECKPOINTS} (a run writes checkpoints/last.pt as it trains); "
                              "give the folder of a run that has trained")
    state, checkpoint = found
    wsa = _select(state["config"], "actor_critic", "wsa")
    if not isinstance(wsa, dict) or not wsa.get("enabled"):
        raise _refuse(folder, "not a WSA agent (its actor_critic.wsa.enabled is false: a Standard Actor has no PTM "
                              "pool to grow); start from a WSA run")
    names = [str(p.get("name")) for p in wsa.get("pretrained_models") or [] if isinstance(p, dict)]
    indices = {int(m.group(1)) for key in state["agent"] if (m := _PTM_KEY.match(key))}
    if not names or indices != set(range(len(names))):
        raise _refuse(folder, f"its checkpoint holds {len(indices)} PTMs but its config names {names}: not a WSA "
                              "agent wsa_lab wrote")
    return Source(path.absolute(), checkpoint, int(state.get("global_step", 0)), names, state["agent"])


def _select(node: Any, *keys: str) -> Any:
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _named(keys: list[str], ptm_names: list[str]) -> dict[Name, str]:
    """{(PTM name, rest) or (None, key): key} for a state dict's keys."""
    named: dict[Name, str] = {}
    for key in keys:
        m = _PTM_KEY.match(key)
        named[(ptm_names[int(m.group(1))], m.group(2)) if m else (None, key)] = key
    return named


def _part(name: Name, ptm_names: list[str]) -> str:
    """The part a tensor belongs to, for the summary line: ``ptm 2 (gin) adapter``, ``actor.extractor.attention``."""
    ptm, rest = name
    if ptm is not None:
        return f"ptm {ptm_names.index(ptm)} ({ptm}) {rest.split('.', 1)[0]}"
    return ".".join(rest.split(".")[:-1][:3]) or rest


def carry_over(agent: nn.Module, source: Source) -> Carried:
    """Load into `agent` (a freshly built WSA actor-critic) every tensor of `source` whose name and shape match;
    leave the others as built. In place: an optimiser made for `agent` keeps its parameters."""
    if not getattr(agent, "uses_wsa", False):
        raise _refuse(source.folder, "this run is not a WSA agent (actor_critic.wsa.enabled=false); init_from grows or "
                                     "shrinks a WSA agent's PTM pool")
    names: list[str] = list(agent.ptm_names)
    target = agent.state_dict()
    ours, theirs = _named(list(target), names), _named(list(source.agent), source.ptm_names)
    merged, new = dict(target), Counter()
    for name, key in ours.items():
        if name not in theirs:
            new[_part(name, names)] += 1
            continue
        tensor = source.agent[theirs[name]]
        if tensor.shape != target[key].shape:
            raise _refuse(source.folder, f"{theirs[name]} has shape {tuple(tensor.shape)} there and "
                                         f"{tuple(target[key].shape)} here; only tensors of the same name and shape "
                                         "carry over (keep the env, actor_critic sizes and attention of that run)")
        merged[key] = tensor
    dropped = Counter(_part(name, source.ptm_names) for name in theirs if name not in ours)
    agent.load_state_dict(merged)  # every key is there: strict
    return Carried(source, len(ours) - sum(new.values()), dict(new), dict(dropped))
