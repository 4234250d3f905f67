"""A run folder's whole life: opening it (`folder.RunFolder`: lock, resume or refuse, checkpoints, metrics), stop
signals (`signals`), atomic files (`atomic`), reading it back (`reader`), the sweep index (`sweep`) and the checks
before Hydra writes anything (`startup`)."""
