"""wsa_lab's Hydra launchers (`hydra/launcher=slurm|local_parallel`). Hydra only instantiates plugins that
live in the `hydra_plugins` namespace package, hence this package next to `wsa_lab`."""
