"""Models: attention maths, gradient routing (frozen backbones get none), weights loading, heads."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from conftest import actor_critic_kwargs, coverage_specs
from wsa_lab.contract import GraphBatch
from wsa_lab.envs import CoverageEnv
from wsa_lab.errors import ConfigError, WeightsNotFoundError
from wsa_lab.models import (
    HybridAction,
    HybridActionHead,
    MultiPTMFeatureExtractor,
    PreTrainedModelWrapper,
    PTMSpec,
    StateInputs,
    WeightSharingAttention,
    build_actor_critic,
    rasterise_nodes,
)
from wsa_lab.models.heads import gather_rows
from wsa_lab.weights.files import weights_file_name
from wsa_lab.weights.load import load_resnet

SEED_PTMS = [  # the WSA design summary's recommended configuration, written as in its YAML
    {"name": "resnet18_imagenet", "model_type": "resnet18", "weights": "imagenet", "freeze_backbone": True},
    {"name": "graph_cnn", "model_type": "graph_cnn", "weights": None, "freeze_backbone": False},
    {"name": "resnet18_random", "model_type": "resnet18", "weights": "random", "freeze_backbone": False},
]


@pytest.fixture(scope="module")
def obs():
    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, image_size=32, seed=0)
    return env.reset()


def wsa_agent(fusion: str = "wsa", ptms=SEED_PTMS, **kwargs):
    torch.manual_seed(0)
    wsa = {"enabled": True, "fusion": fusion, "pretrained_models": ptms, "attention": {"hidden_dim": 32, "dropout": 0.1}}
    return build_actor_critic(*coverage_specs(), **actor_critic_kwargs(wsa=wsa, **kwargs))


def test_attention_weights_sum_to_one_and_fuse_features():
    torch.manual_seed(0)
    attn = WeightSharingAttention(context_dim=5, feature_dim=7, hidden_dim=16, dropout=0.0, temperature=1.0, uniform_init=False)
    context, features = torch.randn(3, 5), torch.randn(3, 4, 7)
    fused, weights = attn(context, features)
    assert weights.shape == (3, 4) and fused.shape == (3, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    assert (weights > 0).all()
    torch.testing.assert_close(fused, (weights.unsqueeze(-1) * features).sum(1))
    # weight sharing: the same MLP scores every PTM, so permuting PTMs permutes the weights
    perm = torch.tensor([2, 0, 3, 1])
    _, permuted = attn(context, features[:, perm])
    torch.testing.assert_close(permuted, weights[:, perm])
    # ...and the state context changes the weighting
    _, other = attn(torch.randn(3, 5), features)
    assert not torch.allclose(other, weights)


def test_wsa_gradients_reach_trainable_parts_only(obs):
    agent = wsa_agent()
    out = agent.get_action_and_value(obs)
    (out.log_prob.sum() + out.value.sum() + out.features.global_feat.sum()).backward()
    frozen, graph, random_ = agent.actor.extractor.ptms
    assert all(p.grad is None and not p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.grad is not None for p in frozen.adapter.parameters())  # adapters always train
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in graph.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in random_.backbone.parameters())
    assert all(p.grad is not None for p in agent.actor.extractor.attention.parameters())
    assert agent.head.log_std.grad is not None


def test_frozen_backbone_keeps_batchnorm_in_eval_mode(obs):
    agent = wsa_agent()
    agent.train()
    frozen, _, random_ = agent.actor.extractor.ptms
    assert not frozen.backbone.training and frozen.backbone.bn1.training is False
    assert random_.backbone.training
    stats = frozen.backbone.bn1.running_mean.clone()
    agent.get_action_and_value(obs)
    torch.testing.assert_close(frozen.backbone.bn1.running_mean, stats)


@pytest.mark.parametrize("fusion,expected_dim", [("wsa", 16), ("mean", 16), ("concat", 48)])
def test_fusion_modes(obs, fusion, expected_dim):
    agent = wsa_agent(fusion=fusion, feature_dim=16)
    agent.eval()
    fused = agent.actor.extractor(StateInputs.from_batch(obs), torch.zeros(obs.num_graphs, 64))
    assert fused.fused.shape == (obs.num_graphs, expected_dim)
    assert fused.features.shape == (obs.num_graphs, 3, 16)
    if fusion == "concat":
        assert fused.weights is None
    else:
        torch.testing.assert_close(fused.weights.sum(-1), torch.ones(obs.num_graphs))
    if fusion == "mean":
        torch.testing.assert_close(fused.fused, fused.features.mean(1))


def test_standard_actor_gradients_reach_gnn_through_frozen_cnn(obs):
    torch.manual_seed(0)
    agent = build_actor_critic(*coverage_specs(), **actor_critic_kwargs(
        wsa={"enabled": False}, standard={"model_type": "resnet18", "weights": "imagenet", "freeze_backbone": True},
    ))
    out = agent.get_action_and_value(obs)
    (out.log_prob.sum() + out.value.sum()).backward()
    assert all(p.grad is None for p in agent.actor.cnn.parameters())
    assert agent.actor.encoder.gnn.input.weight.grad.abs().sum() > 0
    assert agent.actor.to_rgb.weight.grad.abs().sum() > 0  # only reachable through the CNN
    assert not agent.uses_wsa and agent.ptm_names == []


def test_rasterise_nodes_averages_by_cell():
    values = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    positions = torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.9, 0.6], [0.5, 0.5]])  # first two share cell (0, 0) at 4x4
    batch = torch.tensor([0, 0, 0, 1])  # graph 0 has 3 nodes, graph 1 one node
    grid = rasterise_nodes(values, positions, batch, 2, 4)
    assert grid.shape == (2, 1, 4, 4)
    assert grid[0, 0, 0, 0] == 2.0  # mean of 1 and 3
    assert grid[0, 0, 2, 3] == 5.0  # row from y=0.6, column from x=0.9
    assert grid[0].sum() == 7.0 and grid[1].sum() == 7.0 and grid[1, 0, 2, 2] == 7.0


def test_hybrid_head_per_graph_softmax_masks_and_joint_log_prob():
    """Graphs of 2, 5 and 3 nodes in one flat batch; a 2-d continuous part; log-probs by hand."""
    torch.manual_seed(0)
    head = HybridActionHead(node_dim=4, global_dim=3, hidden_dim=8, init_log_std=-1.0, continuous_dim=2)
    sizes = [2, 5, 3]
    ptr = torch.tensor([0, 2, 7, 10])
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    node_emb, glob = torch.randn(10, 4), torch.randn(3, 3)
    mask = torch.ones(10, dtype=torch.bool)
    mask[[2, 3, 4]] = False  # graph 1 may only choose its local nodes 3 and 4
    for _ in range(20):
        out = head(node_emb, glob, mask, batch, ptr)
        assert out.action.node[1].item() in (3, 4)  # masked nodes are never chosen
        assert (out.action.node < torch.tensor(sizes)).all()  # nor nodes of another graph
    again = head(node_emb, glob, mask, batch, ptr, action=out.action)
    torch.testing.assert_close(again.log_prob, out.log_prob)
    # by hand, graph by graph: softmax over the graph's own nodes + diagonal Gaussian of the chosen node
    std = head.log_std.exp()
    for g, (lo, hi) in enumerate(zip(ptr[:-1].tolist(), ptr[1:].tolist())):
        pairs = torch.cat([node_emb[lo:hi], glob[g].expand(hi - lo, -1)], -1)
        logits = head.node_logits(pairs).squeeze(-1).masked_fill(~mask[lo:hi], -1e8)
        n, c = out.action.node[g], out.action.continuous[g]
        mean = torch.sigmoid(head.continuous_mean(pairs[n]))
        gauss = (-0.5 * ((c - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum()
        torch.testing.assert_close(out.log_prob[g], torch.log_softmax(logits, -1)[n] + gauss)
        p = torch.softmax(logits, -1)
        expected_entropy = -(p * torch.log_softmax(logits, -1)).sum() + (0.5 + 0.5 * math.log(2 * math.pi) + std.log()).sum()
        torch.testing.assert_close(out.entropy[g], expected_entropy)
        det = head(node_emb, glob, mask, batch, ptr, deterministic=True)
        assert det.action.node[g] == logits.argmax()
        torch.testing.assert_close(det.action.continuous[g], torch.sigmoid(head.continuous_mean(pairs[logits.argmax()])))


def test_hybrid_head_without_continuous_part():
    head = HybridActionHead(node_dim=4, global_dim=3, hidden_dim=8, init_log_std=-1.0, continuous_dim=0)
    ptr, batch = torch.tensor([0, 3, 4]), torch.tensor([0, 0, 0, 1])
    out = head(torch.randn(4, 4), torch.randn(2, 3), torch.ones(4, dtype=torch.bool), batch, ptr)
    assert out.action.continuous.shape == (2, 0) and out.action.node[1] == 0  # a one-node graph
    assert torch.isclose(out.log_prob[1], torch.tensor(0.0)) and torch.isclose(out.entropy[1], torch.tensor(0.0))
    assert not any(n.startswith("continuous") or n == "log_std" for n, _ in head.named_parameters())


def test_sampled_nodes_follow_the_per_graph_softmax():
    """Gumbel-max sampling per graph: empirical frequencies match the softmax of the graph's own nodes."""
    torch.manual_seed(0)
    head = HybridActionHead(node_dim=2, global_dim=1, hidden_dim=4, init_log_std=-1.0, continuous_dim=0)
    ptr, batch = torch.tensor([0, 3, 5]), torch.tensor([0, 0, 0, 1, 1])
    emb, glob, mask = torch.randn(5, 2) * 3, torch.zeros(2, 1), torch.ones(5, dtype=torch.bool)
    with torch.no_grad():
        probs = torch.softmax(head.node_logits(torch.cat([emb, glob[batch]], -1)).squeeze(-1)[:3], -1)
        counts = torch.zeros(3)
        for _ in range(4000):
            counts[head(emb, glob, mask, batch, ptr).action.node[0]] += 1
    torch.testing.assert_close(counts / 4000, probs, atol=0.03, rtol=0)


def test_gather_rows_is_indexing_with_a_deterministic_backward_for_mixed_graph_sizes():
    """Each node's row of a per-graph tensor. `src[batch]` has the same values, but its CPU backward adds with
    atomics across threads (PyTorch lists it as nondeterministic): with mixed graph sizes the threads' split falls
    inside a graph and runs of the same seed differed in the last digits. `gather_rows` sums in index order."""
    torch.manual_seed(0)
    counts = torch.randint(1, 13, (300,))
    batch = torch.repeat_interleave(torch.arange(300), counts)
    src = torch.randn(300, 48, requires_grad=True)
    grad = torch.randn(batch.numel(), 64)[:, 16:]  # strided, like the gradient of a torch.cat slice
    out = gather_rows(src, batch)
    assert torch.equal(out, src.detach()[batch])
    expected = torch.zeros(300, 48, dtype=torch.float64).index_add_(0, batch, grad.double())  # sums per graph
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        grads = []
        for _ in range(5):
            src.grad = None
            gather_rows(src, batch).backward(grad)
            grads.append(src.grad.clone())
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(g, grads[0]) for g in grads), "backward differs between calls (2 threads)"
    torch.testing.assert_close(grads[0].double(), expected, rtol=1e-6, atol=1e-5)
    # and uniform sizes (the coverage env): bit for bit what indexing gives
    uniform = torch.arange(16).repeat_interleave(50)
    a, b = torch.randn(16, 8, requires_grad=True), torch.randn(800, 8)
    a[uniform].backward(b)
    by_indexing = a.grad.clone()
    a.grad = None
    gather_rows(a, uniform).backward(b)
    assert torch.equal(a.grad, by_indexing)


def test_imagenet_weights_load_from_the_hub_cache(fake_torch_home: Path):
    model = load_resnet("resnet18", "imagenet")
    state = torch.load(fake_torch_home / "hub" / "checkpoints" / weights_file_name("resnet18"), weights_only=True)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    # an explicit weights_path wins over the cache
    other = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    path = fake_torch_home / "custom.pth"
    torch.save(other, path)
    torch.testing.assert_close(load_resnet("resnet18", "imagenet", weights_path=str(path)).conv1.weight, other["conv1.weight"])


def test_missing_imagenet_weights_fail_fast_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.time()
    with pytest.raises(WeightsNotFoundError) as info:
        load_resnet("resnet34", "imagenet")
    assert time.time() - start < 5  # no download attempt, no hang
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth") in message
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in message
    assert "\n" not in message


def test_corrupt_weight_file_is_an_error_not_random_weights(tmp_path: Path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="could not load ImageNet weights"):
        load_resnet("resnet18", "imagenet", weights_path=str(path))


@pytest.mark.parametrize(
    "entry,match",
    [
        ({"name": "g", "model_type": "graph_cnn", "weights": "imagenet"}, "graph_cnn has no pre-trained weights"),
        ({"name": "x", "model_type": "resnet1O1", "weights": "imagenet"}, "unknown model_type 'resnet1O1' \\(did you mean 'resnet101'\\?\\)"),
        ({"name": "r", "model_type": "resnet18", "weights": "imagnet"}, "weights must be one of"),
        ({"name": "r", "model_type": "resnet18", "weights": "random", "freeze": True}, "did you mean 'freeze_backbone'"),
        ({"name": "r", "model_type": "resnet18", "weights": "random", "freeze_backbone": "yes"}, "expected bool"),
    ],
)
def test_bad_ptm_entries_are_clear_errors(entry, match):
    with pytest.raises(ConfigError, match=match):
        wsa_agent(ptms=[entry])


def test_wsa_without_ptms_is_an_error():
    with pytest.raises(ConfigError, match="no PTMs"):
        wsa_agent(ptms=[])


def test_gradient_checkpointing_gives_identical_gradients(obs):
    spec = PTMSpec(name="r", model_type="resnet18", weights="random", freeze_backbone=False)
    grads = []
    for min_nodes in (10_000, 0):  # off, then on (obs has 20 nodes)
        torch.manual_seed(0)
        ptm = PreTrainedModelWrapper(
            spec, feature_dim=8, node_feature_dim=6, graph_hidden_dim=64, weights_dir=None, checkpoint_min_nodes=min_nodes,
            image_channels=3, image_size=None, edge_dim=0, adapter="relu",
        )
        ptm.eval()  # BatchNorm running stats would otherwise update twice under recomputation
        ptm(StateInputs.from_batch(obs)).sum().backward()
        grads.append(ptm.backbone.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_extractor_reports_names_in_order():
    agent = wsa_agent()
    assert isinstance(agent.actor.extractor, MultiPTMFeatureExtractor)
    assert agent.ptm_names == ["resnet18_imagenet", "graph_cnn", "resnet18_random"]


def test_evaluate_and_update_paths_agree_on_log_prob(obs):
    agent = wsa_agent()
    agent.eval()
    with torch.no_grad():
        first = agent.get_action_and_value(obs)
        again = agent.get_action_and_value(obs, HybridAction(first.action.node, first.action.continuous))
    torch.testing.assert_close(again.log_prob, first.log_prob)
    torch.testing.assert_close(again.value, first.value)


def test_actors_handle_2000_node_graphs_with_checkpointing():
    env = CoverageEnv(num_envs=2, num_nodes=2000, num_sites=5, image_size=32, seed=0)
    big = env.reset()
    for agent in (wsa_agent(), build_actor_critic(*coverage_specs(), **actor_critic_kwargs(wsa={"enabled": False}))):
        assert agent.actor.encoder.out_dim > 0
        out = agent.get_action_and_value(big)  # 2000 > checkpoint_min_nodes: CNN bodies are checkpointed
        (out.log_prob.sum() + out.value.sum()).backward()
        assert out.action.node.max() < 2000 and torch.isfinite(out.log_prob).all()


def test_standard_actor_checkpointing_gives_identical_gradients(obs):
    """Stage-wise checkpointing of the Standard Actor's CNN: the GNN's gradients (through the CNN) are unchanged."""
    grads = []
    for min_nodes in (10_000, 0):
        torch.manual_seed(0)
        agent = build_actor_critic(*coverage_specs(), **actor_critic_kwargs(checkpoint_min_nodes=min_nodes, wsa={"enabled": False}))
        agent.train()
        out = agent.get_action_and_value(obs, HybridAction(torch.zeros(obs.num_graphs, dtype=torch.long), torch.zeros(obs.num_graphs, 1)))
        (out.log_prob.sum() + out.value.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "actor.cnn.layer4.1.conv2.weight" in grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], msg=name)


def test_gcn_stack_matches_pyg_gcnconv(obs):
    """The shared sparse adjacency gives what GCNConv's own per-layer normalisation gives."""
    from torch_geometric.nn import GCNConv

    from wsa_lab.models.encoders import GCNStack

    torch.manual_seed(0)
    inputs = StateInputs.from_batch(obs)
    stack = GCNStack(obs.x.shape[1], 8, num_layers=2)
    reference = [GCNConv(8, 8) for _ in range(2)]
    for ref, conv in zip(reference, stack.convs):
        ref.load_state_dict(conv.state_dict())
    h = torch.relu(stack.input(inputs.x))
    for ref in reference:
        h = h + torch.relu(ref(h, inputs.edge_index))
    torch.testing.assert_close(stack(inputs.x, inputs.graph), h)
    torch.testing.assert_close(stack(inputs.x, inputs.edge_index), h)  # edge list in: adjacency built inside


def test_regular_adjacency_equals_the_generic_one(obs):
    from wsa_lab.models.encoders import gcn_adjacency, regular_gcn_adjacency

    direct = regular_gcn_adjacency(obs.edge_index, obs.num_nodes, obs.in_degree)
    generic = gcn_adjacency(obs.edge_index, obs.num_nodes)
    torch.testing.assert_close(direct.to_dense(), generic.to_dense(), rtol=0, atol=0)
    # a batch without in_degree takes the generic path and gets the same matrix
    plain = StateInputs.from_batch(GraphBatch(**{**obs.state_dict(), "in_degree": None}))
    torch.testing.assert_close(plain.adj_t.to_dense(), generic.to_dense(), rtol=0, atol=0)
