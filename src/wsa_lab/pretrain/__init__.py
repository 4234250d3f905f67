"""`python -m wsa_lab.pretrain`: PTMs pre-trained on an env's own states (the WSA paper's per-env PTMs).

States come from random play (`collect.py`); objectives (`objectives.py`): an image autoencoder for image PTMs,
PyG's DeepGraphInfomax for graph PTMs; `run.py` trains with atomic checkpoints and resume and writes the
checkpoint plus a PTM config an experiment can name. Works on any env of the graph env contract.
"""

from wsa_lab.pretrain.run import pretrain

__all__ = ["pretrain"]
