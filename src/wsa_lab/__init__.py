"""wsa_lab: experiments with Weight Sharing Attention (WSA) actor-critics over pre-trained models."""

__version__ = "0.1.0"

import warnings

# PyG 2.8 calls the deprecated torch.jit.script at import; the warning is PyG's, not actionable here.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
