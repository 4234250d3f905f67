"""`python -m wsa_lab.pretrain [overrides]`: the Hydra entry point (thin: `main(cfg)` calls `pretrain(cfg)`)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from wsa_lab.conf_files import config_dir
from wsa_lab.errors import WsaLabError, exit_with_one_line
from wsa_lab.pretrain.run import pretrain

log = logging.getLogger("wsa_lab")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="pretrain")
def main(cfg: DictConfig) -> float:
    try:
        record = pretrain(cfg)
    except (WsaLabError, OmegaConfBaseException) as exc:
        exit_with_one_line("wsa_lab.pretrain", exc)
    log.info("pre-trained %s: final loss %.4f -> %s", record["name"], record["epoch_losses"][-1], record["weights_path"])
    return record["epoch_losses"][-1]


if __name__ == "__main__":
    main()
