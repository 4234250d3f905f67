"""Can a logger start? The W&B server's reachability, probed at start-up (before anything is written) by the config
check, and the error a logger backend raises when it cannot start. Apart from the backends so that the config layer
can ask without importing them."""

from __future__ import annotations

from wsa_lab.errors import WsaLabError


class TrackingError(WsaLabError):
    """A logger backend could not start (the message says how to fix it)."""


#: Seconds to wait for the W&B server before an online run gives up (wandb itself blocks ~100 s without network).
ONLINE_PROBE_TIMEOUT_S = 5.0


def check_reachable(base_url: str, timeout: float = ONLINE_PROBE_TIMEOUT_S) -> None:
    """A TCP connection to the W&B server within `timeout` seconds, or a one-line TrackingError."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(base_url if "://" in base_url else f"https://{base_url}")
    host, port = url.hostname or base_url, url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TrackingError(
            f"logger.wandb.mode=online, but the W&B server {host}:{port} cannot be reached ({reason}, within "
            f"{timeout:.0f} s); check the network, or train with logger.wandb.mode=offline and upload later with "
            "`wandb sync <run folder>/wandb/offline-run-*`"
        ) from exc
