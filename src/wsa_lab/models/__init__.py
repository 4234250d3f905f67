"""Models: state encoder, PTM wrappers, Weight Sharing Attention, actors, hybrid heads, actor-critic."""

from wsa_lab.models.actor_critic import ActorCritic, PolicyStep, build_actor_critic
from wsa_lab.models.actors import ActorFeatures, StandardActor, WSAEnhancedActor
from wsa_lab.models.attention import WeightSharingAttention
from wsa_lab.models.encoders import GraphCNN, StateEncoder
from wsa_lab.models.fusion import ABLATION_MODES, FUSION_MODES, Ablation, FusedFeatures, MultiPTMFeatureExtractor
from wsa_lab.models.gpu import GPUConfig
from wsa_lab.models.heads import HybridAction, HybridActionHead
from wsa_lab.models.inputs import StateInputs, rasterise_nodes
from wsa_lab.models.ptm import PreTrainedModelWrapper, PTMSpec

__all__ = [
    "ABLATION_MODES", "Ablation", "ActorCritic", "ActorFeatures", "FUSION_MODES", "FusedFeatures", "GPUConfig", "GraphCNN", "HybridAction",
    "HybridActionHead", "MultiPTMFeatureExtractor", "PTMSpec", "PolicyStep", "PreTrainedModelWrapper",
    "StandardActor", "StateEncoder", "StateInputs", "WSAEnhancedActor", "WeightSharingAttention",
    "build_actor_critic", "rasterise_nodes",
]
