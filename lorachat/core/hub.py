"""Whether the Hugging Face hub can be reached, asked in seconds: a client without network spends
~50 s in retries before it fails (measured), so models and datasets ask here first. Knows nothing
about what is fetched.
"""
import os
import socket
from urllib.parse import urlparse


def hub_reachable() -> bool:
    """Whether to ask the hub at all: a quick TCP check (HF_ENDPOINT's host), and never with HF_HUB_OFFLINE set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
        return True
    except OSError:
        return False
