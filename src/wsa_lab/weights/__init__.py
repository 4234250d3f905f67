"""Pre-trained weight files: every file a PTM loads goes through this package; nothing else reads weights from disk.

- :mod:`~wsa_lab.weights.names`: torchvision models and their weights enums by name (`model_type`, `weights`).
- :mod:`~wsa_lab.weights.files`: where a file is looked for, the download of a missing torchvision file on first
  use (``WSA_LAB_OFFLINE=1``: never), reading state dicts.
- :mod:`~wsa_lab.weights.checks`: the SHA-256 check against the digits in the file's name, its cache, the
  ``WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS=1`` opt-out for stand-in files, the record of what this process loaded.
- :mod:`~wsa_lab.weights.load`: torchvision models built for their weights, the file loaded explicitly.
- ``python -m wsa_lab.weights status|download``: the files' state, and fetching them ahead of time.
"""
