"""`python -m wsa_lab.weights {status,download} [model_type ...]`: manage ImageNet weight files.

Training never downloads. `status` says which files the ImageNet PTMs need and whether each is present
in the torch hub cache; `download` (needs network, asked for explicitly) fetches them through
torchvision's weights API into that cache, so they can also be copied to an offline machine.
"""

from __future__ import annotations

import argparse
import sys

from wsa_lab.models.weights import RESNETS, default_weights_dir, weights_file_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsa_lab.weights", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["status", "download"])
    parser.add_argument("model_types", nargs="*", default=list(RESNETS), help="default: all ResNets")
    args = parser.parse_args(argv)
    folder = default_weights_dir()
    missing = 0
    for model_type in args.model_types:
        if model_type not in RESNETS:
            parser.error(f"unknown model_type {model_type!r}; choose from {sorted(RESNETS)}")
        path = folder / weights_file_name(model_type)
        if args.command == "download" and not path.is_file():
            RESNETS[model_type].imagenet.get_state_dict(progress=True)  # torchvision verifies the hash
        present = path.is_file()
        missing += not present
        print(f"{model_type:9s} {'ok     ' if present else 'MISSING'} {path}  ({RESNETS[model_type].imagenet.url})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
