"""The PTM registry: `model_type` -> a backbone module, for four kinds of PTM.

=================  =====================================================  ===========================================
kind               model_type                                             backbone
=================  =====================================================  ===========================================
``torchvision``    any name of ``torchvision.models.list_models()``       the classification model, classifier removed
                   (resnet18, convnext_tiny, vit_b_16, ...)               (:func:`~wsa_lab.weights.load.build_torchvision`)
``pyg``            ``pyg:<GCN|GAT|GIN|GraphSAGE|EdgeCNN|PNA>``            PyG's model zoo (``torch_geometric.nn.models``,
                                                                          the BasicGNN family), pooled per graph
``graph_cnn``      ``graph_cnn``                                          wsa_lab's :class:`~wsa_lab.models.GraphCNN`
``custom``         ``custom`` + ``target: pkg.module.callable``           a researcher's callable returning an nn.Module
=================  =====================================================  ===========================================

Image backbones read ``StateInputs.image`` (G, C, H, W); graph backbones read the flat graph. Every backbone
returns one vector per graph, (G, D); `Backbone.out_dim` is D (the adapter's input width).

Call conventions of custom modules (documented in README, "Your own pre-trained models"):

- ``input: image``: ``module(image)`` with image (G, C, H, W) as the env gives it (not normalised; resized
  only if the PTM sets `image_size`), returning (G, D) (a (G, D, h, w) map is mean-pooled over h, w).
- ``input: graph``: ``module(x, edge_index, batch)`` with x (|V|, F) float32, edge_index (2, |E|), batch (|V|,);
  also ``edge_attr=`` (|E|, D_e) or None and ``num_graphs=`` G when its `forward` has parameters of those names.
  It returns per-graph (G, D) features, or per-node (|V|, D) embeddings that wsa_lab pools per graph (mean and
  max, concatenated: 2D, as GraphCNN does). Which of the two is decided once, at build time, by a test forward
  on two graphs of 3 and 2 nodes.
- The callable gets the PTM's `kwargs`, plus ``in_channels`` (image channels, or node-feature width) and, for
  graphs, ``edge_dim`` (edge-feature width, or None) when it takes parameters of those names and `kwargs` does
  not set them.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch_geometric.nn import global_max_pool, global_mean_pool

from wsa_lab.errors import ConfigError
from wsa_lab.models.encoders import GraphCNN
from wsa_lab.trust import check_module_factory
from wsa_lab.weights.files import load_module_weights, one_line
from wsa_lab.weights.load import build_torchvision, checkpoint_supplies_weights
from wsa_lab.weights.names import is_torchvision_model, torchvision_models, torchvision_weights

log = logging.getLogger(__name__)

KINDS = ("torchvision", "pyg", "graph_cnn", "custom")
PYG_PREFIX = "pyg:"
CUSTOM_INPUTS = ("image", "graph")
MIN_CNN_IMAGE = 32  # CNNs downsample 32x: below this their last stages see padding, not the image
DEFAULT_PYG_LAYERS = 3  # as graph_cnn


@functools.lru_cache(maxsize=None)
def pyg_models() -> dict[str, type]:
    """PyG's zoo models with the BasicGNN interface (``model(x, edge_index, edge_attr=..., batch=...)`` -> per node)."""
    from torch_geometric.nn import models
    from torch_geometric.nn.models.basic_gnn import BasicGNN

    return {
        name: obj for name in sorted(dir(models))
        if isinstance(obj := getattr(models, name), type) and issubclass(obj, BasicGNN) and obj is not BasicGNN
    }


def model_type_choices() -> str:
    """The valid model types, compactly (for error messages)."""
    return (
        f"any torchvision classification model (torchvision.models.list_models(): {len(torchvision_models())} names, "
        f"e.g. resnet18, convnext_tiny, mobilenet_v3_small, vit_b_16), "
        f"{PYG_PREFIX}<{'|'.join(pyg_models())}>, graph_cnn, custom"
    )


def model_kind(model_type: str, where: str = "") -> str:
    """`model_type`'s kind (one of :data:`KINDS`), or a one-line ConfigError with did-you-mean and the choices."""
    if model_type == "graph_cnn":
        return "graph_cnn"
    if model_type == "custom":
        return "custom"
    if isinstance(model_type, str) and model_type.startswith(PYG_PREFIX):
        if model_type[len(PYG_PREFIX):] in pyg_models():
            return "pyg"
    elif isinstance(model_type, str) and is_torchvision_model(model_type):
        return "torchvision"
    names = [*torchvision_models(), *(PYG_PREFIX + n for n in pyg_models()), "graph_cnn", "custom"]
    close = difflib.get_close_matches(str(model_type), names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"{where}unknown model_type {model_type!r}{hint}; choose {model_type_choices()}")


#: Architectures that need one fixed input size (their weights' crop size): the image is resized to it.
FIXED_SIZE_MODULES = (
    "torchvision.models.vision_transformer", "torchvision.models.swin_transformer", "torchvision.models.maxvit",
)


def _builder_module(model_type: str) -> str:
    from torchvision import models as tvm

    return tvm.get_model_builder(model_type).__module__


def min_image_side(kind: str, model_type: str, weights: Optional[str]) -> int:
    """The smallest image side a PTM accepts unresized (1: any, because it is resized or reads what it gets)."""
    if kind != "torchvision":
        return 1
    if _builder_module(model_type) in FIXED_SIZE_MODULES:
        return 1  # always resized to its fixed size
    from torchvision import models as tvm

    ref = torchvision_weights(model_type, weights) or tvm.get_model_weights(model_type).DEFAULT
    return 1 if ref.meta["min_size"][0] > MIN_CNN_IMAGE else MIN_CNN_IMAGE  # larger minimum: resized up to it


def torchvision_input_size(model: nn.Module, model_type: str, enum: Any, kwargs: dict[str, Any]) -> tuple[Optional[int], int]:
    """(fixed side or None, minimum side) of a built torchvision model.

    Fixed: ViT (its `image_size`: the weights' crop, 224 for most, 384/512/518 for SWAG), Swin (the weights'
    `transforms().crop_size`: 224, 256 for v2), MaxViT (its `input_size`). Minimum: the weights' `min_size`.
    """
    from torchvision import models as tvm

    ref = enum or tvm.get_model_weights(model_type).DEFAULT
    if isinstance(model, tvm.VisionTransformer):
        return int(model.image_size), 1
    if isinstance(model, tvm.SwinTransformer):
        return int(ref.transforms().crop_size[0]), 1
    if isinstance(model, tvm.MaxVit):
        size = kwargs.get("input_size") or (ref.meta["min_size"] if enum is not None else 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size), 1
    return None, int(ref.meta["min_size"][0])


@dataclass
class Backbone:
    """What the PTM wrapper needs to run a backbone."""

    module: nn.Module
    out_dim: int  # D of the (G, D) features the wrapper gets (after its pooling)
    kind: str
    reads_image: bool
    resize_to: Optional[tuple[int, int]] = None  # image PTMs: (H, W) the image is resized to (bilinear); None: as is
    normalize: bool = False  # image PTMs: ImageNet mean/std applied (torchvision models, 3 channels)
    per_node: bool = False  # graph PTMs: the module returns per-node rows, pooled (mean + max) by the wrapper
    graph_kwargs: tuple[str, ...] = field(default=())  # graph PTMs: keyword inputs passed (edge_attr, num_graphs, batch)


_resize_noted: set[tuple[str, str, tuple[int, int], tuple[int, int]]] = set()


def _note_resize(name: str, model_type: str, source: tuple[int, int], target: tuple[int, int], why: str) -> None:
    key = (name, model_type, source, target)
    if key not in _resize_noted:  # once per process, however often the agent is rebuilt
        _resize_noted.add(key)
        log.info("PTM %r (%s) %s: its %dx%d input images are resized (bilinear) to %dx%d",
                 name, model_type, why, *source, *target)


def build_backbone(
    spec: Any,
    *,
    node_feature_dim: int,
    edge_dim: int = 0,
    image_channels: int = 3,
    image_size: Optional[int] = None,
    graph_hidden_dim: int,
    weights_dir: Optional[str] = None,
) -> Backbone:
    """The backbone of a :class:`~wsa_lab.models.PTMSpec` (validated there), sized from the env's inputs."""
    side = (image_size, image_size) if image_size else None
    if spec.kind == "torchvision":
        return _torchvision(spec, image_channels, side, weights_dir)
    if spec.kind == "graph_cnn":
        body = GraphCNN(node_feature_dim, graph_hidden_dim)
        if spec.weights_path and not checkpoint_supplies_weights():
            load_module_weights(body, spec.weights_path, f"PTM {spec.name!r}", spec.made_by)
        return Backbone(body, body.out_dim, "graph_cnn", False)
    if spec.kind == "pyg":
        return _pyg(spec, node_feature_dim, edge_dim, graph_hidden_dim)
    return _custom(spec, node_feature_dim, edge_dim, image_channels, side)


def _resize_for(spec: Any, side: Optional[tuple[int, int]], fixed: Optional[int], minimum: int) -> Optional[tuple[int, int]]:
    if spec.image_size and fixed and spec.image_size != fixed:
        raise ConfigError(
            f"PTM {spec.name!r}: {spec.model_type} reads {fixed}x{fixed} images only, image_size: {spec.image_size} "
            "cannot change that; remove image_size (with weights: random a ViT takes kwargs: {image_size: N})"
        )
    if spec.image_size:
        target, why = (spec.image_size, spec.image_size), f"has image_size: {spec.image_size}"
    elif fixed:
        target, why = (fixed, fixed), f"reads {fixed}x{fixed} images only"
    elif side and min(side) < minimum:
        target, why = (max(side[0], minimum), max(side[1], minimum)), f"needs at least {minimum}x{minimum} pixels"
    else:
        return None
    if side and side != target:
        _note_resize(spec.name, spec.model_type, side, target, why)
    return target


def _torchvision(spec: Any, channels: int, side: Optional[tuple[int, int]], weights_dir: Optional[str]) -> Backbone:
    kwargs = dict(spec.kwargs or {})
    own = spec.weights == "random" and spec.weights_path  # the random-init architecture, values from your file
    body = build_torchvision(
        spec.model_type, spec.weights, None if own else spec.weights_path, weights_dir, channels, kwargs,
        override=f"ptm.{spec.name}.weights=random",
    )
    if own and not checkpoint_supplies_weights():  # e.g. a checkpoint of `python -m wsa_lab.pretrain`
        load_module_weights(body.module, spec.weights_path, f"PTM {spec.name!r}", spec.made_by)
    fixed, minimum = torchvision_input_size(body.module, spec.model_type, body.weights, kwargs)
    resize = _resize_for(spec, side, fixed, minimum)
    return Backbone(body.module, body.out_dim, "torchvision", True, resize, normalize=channels == 3)


def _tiny_graphs(node_dim: int, edge_dim: int) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """Two graphs of 3 and 2 nodes (rings, both directions) for test forwards; its own RNG (the global one untouched)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, node_dim, generator=gen)
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 0, 3, 4], [1, 0, 2, 1, 0, 2, 4, 3]])
    edge_attr = torch.rand(8, edge_dim, generator=gen) if edge_dim else None
    return x, edge_index, edge_attr, torch.tensor([0, 0, 0, 1, 1])


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode (no dropout, batch-norm statistics frozen) inside the block, its previous mode restored
    after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _probe(module: nn.Module, run: Callable[[], Tensor], who: str, what: str) -> Tensor:
    try:
        with eval_mode(module), torch.no_grad():
            out = run()
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module on a valid input is a config problem
        raise ConfigError(f"{who} failed on a test batch ({what}): {one_line(exc)}") from exc
    if not isinstance(out, Tensor):
        raise ConfigError(f"{who} returned a {type(out).__name__} on a test batch ({what}); it must return one tensor")
    return out


def _pyg(spec: Any, node_dim: int, edge_dim: int, hidden_default: int) -> Backbone:
    name = spec.model_type[len(PYG_PREFIX):]
    cls = pyg_models()[name]
    who = f"PTM {spec.name!r} ({spec.model_type})"
    kwargs = dict(spec.kwargs or {})
    if isinstance(kwargs.get("deg"), (list, tuple)):  # PNA's in-degree histogram, written as a YAML list
        kwargs["deg"] = torch.tensor(kwargs["deg"], dtype=torch.long)
    if cls.supports_edge_attr and edge_dim and "edge_dim" not in kwargs:
        kwargs["edge_dim"] = edge_dim  # GAT, PNA: the env's edge features go into attention / messages
    uses_edge_attr = kwargs.get("edge_dim") is not None
    if uses_edge_attr and not edge_dim:
        raise ConfigError(f"{who}: kwargs.edge_dim is set but the env gives no edge features; remove it")
    if uses_edge_attr and kwargs["edge_dim"] != edge_dim:
        raise ConfigError(f"{who}: kwargs.edge_dim={kwargs['edge_dim']} but the env's edge features are {edge_dim} wide")
    try:
        module = cls(
            in_channels=node_dim, hidden_channels=spec.hidden_channels or hidden_default,
            num_layers=spec.num_layers or DEFAULT_PYG_LAYERS, **kwargs,
        )
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"{who}: PyG's {name} rejected its arguments ({one_line(exc)}); see the PTM's kwargs") from exc
    if spec.weights_path and not checkpoint_supplies_weights():
        load_module_weights(module, spec.weights_path, who, spec.made_by)
    graph_kwargs = ("batch", *(("edge_attr",) if uses_edge_attr else ()))
    x, edge_index, edge_attr, batch = _tiny_graphs(node_dim, edge_dim)
    extra = {"edge_attr": edge_attr} if uses_edge_attr else {}
    out = _probe(module, lambda: module(x, edge_index, batch=batch, batch_size=2, **extra), who, "2 graphs of 3 and 2 nodes")
    return Backbone(module, 2 * out.shape[-1], "pyg", False, per_node=True, graph_kwargs=graph_kwargs)


def import_target(target: str, who: str) -> Callable[..., Any]:
    """``package.module.attr`` or ``package.module:attr`` (:func:`pkgutil.resolve_name`) -> the object, or a
    one-line ConfigError."""
    try:
        obj: Any = pkgutil.resolve_name(target)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"{who}: target {target!r} cannot be imported ({type(exc).__name__}: {exc}); is its package on "
            "PYTHONPATH (or pip-installed)?"
        ) from exc
    if not callable(obj):
        raise ConfigError(f"{who}: target {target!r} is a {type(obj).__name__}, not a callable returning an nn.Module")
    check_module_factory(obj, target, who)  # before it is ever called: a config is data (wsa_lab.trust)
    return obj


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _custom(spec: Any, node_dim: int, edge_dim: int, channels: int, side: Optional[tuple[int, int]]) -> Backbone:
    who = f"PTM {spec.name!r} (custom {spec.target})"
    fn = import_target(spec.target, who)
    kwargs = dict(spec.kwargs or {})
    graph = spec.input == "graph"
    if _takes(fn, "in_channels") and "in_channels" not in kwargs:
        kwargs["in_channels"] = node_dim if graph else channels
    if graph and _takes(fn, "edge_dim") and "edge_dim" not in kwargs:
        kwargs["edge_dim"] = edge_dim or None
    try:
        module = fn(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{who}: calling it with {sorted(kwargs)} failed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{who}: returned a {type(module).__name__}, not an nn.Module")
    if spec.weights_path and not checkpoint_supplies_weights():
        load_module_weights(module, spec.weights_path, who, spec.made_by)
    if graph:
        forward = module.forward
        graph_kwargs = tuple(k for k in ("edge_attr", "num_graphs") if _takes(forward, k))
        x, edge_index, edge_attr, batch = _tiny_graphs(node_dim, edge_dim)
        extra = {"edge_attr": edge_attr, "num_graphs": 2}
        out = _probe(module, lambda: module(x, edge_index, batch, **{k: extra[k] for k in graph_kwargs}), who,
                     "2 graphs of 3 and 2 nodes, module(x, edge_index, batch)")
        if out.dim() != 2 or out.shape[0] not in (2, 5):
            raise ConfigError(
                f"{who} returned shape {tuple(out.shape)} for 2 graphs of 3 and 2 nodes; it must return per-graph "
                "(G, D) = (2, D) or per-node (|V|, D) = (5, D) features"
            )
        per_node = out.shape[0] == 5
        _check_declared(who, spec.out_dim, out.shape[1])
        width = out.shape[1] * (2 if per_node else 1)  # per-node rows are pooled: mean and max
        return Backbone(module, width, "custom", False, per_node=per_node, graph_kwargs=graph_kwargs)
    resize = _resize_for(spec, side, None, 1)
    h, w = resize or side or (MIN_CNN_IMAGE, MIN_CNN_IMAGE)
    image = torch.rand(2, channels, h, w, generator=torch.Generator().manual_seed(0))
    out = _probe(module, lambda: module(image), who, f"module(image), image {tuple(image.shape)}")
    if out.dim() not in (2, 4) or out.shape[0] != 2:
        raise ConfigError(f"{who} returned shape {tuple(out.shape)} for 2 images; it must return (G, D) or (G, D, h, w)")
    _check_declared(who, spec.out_dim, out.shape[1])
    return Backbone(module, out.shape[1], "custom", True, resize)


def _check_declared(who: str, declared: Optional[int], found: int) -> None:
    if declared is not None and declared != found:
        raise ConfigError(f"{who}: out_dim is {declared} but the module returns {found} features; fix out_dim or remove it")


def pooled(h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Per-node rows -> (G, 2D): mean and max per graph, concatenated (as GraphCNN)."""
    return torch.cat([global_mean_pool(h, batch, num_graphs), global_max_pool(h, batch, num_graphs)], dim=-1)


def image_features(out: Tensor) -> Tensor:
    """(G, D), or a (G, D, h, w) map mean-pooled over h, w."""
    return out.mean(dim=(-2, -1)) if out.dim() == 4 else out
