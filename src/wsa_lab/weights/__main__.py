"""`python -m wsa_lab.weights {status,download} [MODEL[:WEIGHTS] ...] [--weights-dir DIR]`: pre-trained weight files.

Training downloads a missing file on first use (unless WSA_LAB_OFFLINE=1); this fetches them ahead of time, e.g.
for nodes without network. `status` says, for each file the PTMs need, where loading finds it and whether its
SHA-256 matches the prefix in its name: ``ok`` (verified), ``MISMATCH`` (a truncated or different file: training
refuses it) or ``MISSING`` (with every path looked at). It looks where training looks: `--weights-dir`
(`paths.weights_dir`), then the torch hub cache (``$TORCH_HOME/hub/checkpoints``); a PTM's own `weights_path`
is not known here. `download` (needs network) fetches the missing or mismatching files, checksum-verified, into
`--weights-dir` or the hub cache, so they can also be copied to an offline machine.

MODEL is any torchvision classification model (``torchvision.models.list_models()``); ``:WEIGHTS`` picks its
weights (``imagenet`` by default, ``DEFAULT`` or an enum name such as ``IMAGENET1K_V2``). Without models: the
ones the shipped PTM configs (``conf/ptm/*.yaml``) load.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from omegaconf import OmegaConf

from wsa_lab.errors import ConfigError, print_error
from wsa_lab.weights.checks import ALLOW_UNVERIFIED_ENV, allow_unverified, check_weights_file, default_weights_dir
from wsa_lab.weights.files import DownloadError, candidate_paths, download, enum_file_name, weights_url
from wsa_lab.weights.names import is_torchvision_model, torchvision_models, torchvision_weights

PROG = "wsa_lab.weights"


def shipped_models() -> list[tuple[str, str]]:
    """(model_type, weights) of the shipped PTM configs that load a torchvision weight file, in file order."""
    from wsa_lab.conf_files import config_dir

    found: list[tuple[str, str]] = []
    for path in sorted((config_dir() / "ptm").glob("*.yaml")):
        for entry in OmegaConf.to_container(OmegaConf.load(path), resolve=False).values():
            if not isinstance(entry, dict):
                continue
            model_type, weights = entry.get("model_type"), entry.get("weights")
            if isinstance(model_type, str) and is_torchvision_model(model_type) and weights not in (None, "random"):
                if (model_type, weights) not in found:
                    found.append((model_type, weights))
    return found


def _parse(item: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    model_type, _, weights = item.partition(":")
    if not is_torchvision_model(model_type):
        close = difflib.get_close_matches(model_type, torchvision_models(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        parser.error(f"unknown model {model_type!r}{hint}; any of torchvision.models.list_models() works")
    weights = weights or "imagenet"
    try:
        if torchvision_weights(model_type, weights) is None:
            parser.error(f"{item}: weights 'random' have no file")
    except ConfigError as exc:
        parser.error(str(exc))
    return model_type, weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}",
                                     description="Check and fetch pre-trained weight files ahead of training.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("command", choices=["status", "download"])
    parser.add_argument("models", nargs="*", metavar="MODEL[:WEIGHTS]",
                        help="torchvision model names (default: those of the shipped conf/ptm configs)")
    parser.add_argument("--weights-dir", default=None, metavar="DIR",
                        help="paths.weights_dir of the runs: looked in first, and where download writes")
    args = parser.parse_args(argv)
    wanted = [_parse(item, parser) for item in args.models] or shipped_models()
    target_dir = Path(args.weights_dir).expanduser() if args.weights_dir else default_weights_dir()
    bad = 0
    for model_type, weights in wanted:
        enum = torchvision_weights(model_type, weights)
        name, url = enum_file_name(enum), weights_url(enum)
        label = f"{model_type} ({enum.name})"
        state, path, detail = _status(name, url, args.weights_dir)
        if args.command == "download" and state != "ok":
            dst = target_dir / name
            try:
                download(url, dst)
            except DownloadError as exc:
                if exc.network:
                    return print_error(PROG, f"cannot download {url} ({exc.reason}); download it on a machine with "
                                             f"network and copy it to {dst}")
                return print_error(PROG, f"cannot download {url} to {dst} ({exc.reason}); download it by hand and "
                                         "copy it there")
            state, path, detail = _status(name, url, args.weights_dir)
            detail = f"downloaded; {detail}"
        bad += state != "ok"
        print(f"{label:36s} {state:8s} {path}  ({detail})")
    return 1 if bad else 0


def _status(name: str, url: str, weights_dir: str | None) -> tuple[str, str, str]:
    """(ok | MISMATCH | MISSING, the path (or every path looked at), detail) of one file, as loading would find it."""
    looked = candidate_paths(name, None, weights_dir)
    for path in looked:
        if path.is_file():
            check = check_weights_file(path, url)
            if check.state == "MISMATCH":
                opt_out = f"; {ALLOW_UNVERIFIED_ENV}=1 is set: training loads it as unverified" if allow_unverified() else ""
                return "MISMATCH", str(path), (
                    f"SHA-256 starts {check.found}, expected {check.expected}: a truncated or different file, "
                    f"training refuses it; delete it and run download{opt_out}"
                )
            if check.state == "unchecked":
                return "ok", str(path), "no hash prefix to check"
            return "ok", str(path), f"SHA-256 {check.expected}... verified"
    return "MISSING", ", ".join(str(p) for p in looked), url


if __name__ == "__main__":
    sys.exit(main())
