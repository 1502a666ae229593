"""Whether the model hub can be reached: one short request instead of a client's dozen retries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

PROBE_TIMEOUT_S = 3.0
_probe: dict[str, bool] = {}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_allowed() -> bool:
    """False when the user turned the hub off (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on")


def hub_reachable() -> bool:
    """Whether the hub answers one short request (remembered for the process).

    Any HTTP answer counts as reachable; proxies from the environment are honoured.
    """
    url = endpoint()
    if url not in _probe:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S)
            _probe[url] = True
        except urllib.error.HTTPError:
            _probe[url] = True
        except (OSError, ValueError):
            _probe[url] = False
    return _probe[url]


@contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Inside: the hub clients (huggingface_hub, datasets) read only their caches when the hub is
    turned off or unreachable. Yields whether the hub may be asked."""
    online = hub_allowed() and hub_reachable()
    if online:
        yield True
        return
    patched = []
    for module_name, attribute in (
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_HUB_OFFLINE"),
    ):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        if hasattr(module, attribute):
            patched.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, True)
    try:
        yield False
    finally:
        for module, attribute, value in patched:
            setattr(module, attribute, value)
