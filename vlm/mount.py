"""``--root-path``: the app served under a path of its host, e.g. ``https://homelab.lan/vlm/``.

A reverse proxy in front may pass the path on (``/vlm/static/app.js``) or strip it
(``/static/app.js``); either way the app must know it, since the page names every URL it asks
for from it (``request.script_root``, rendered into the page). So a request under the root has
it moved from ``PATH_INFO`` to ``SCRIPT_NAME``, and one without it is taken as stripped by the
proxy. Under ``--trusted-proxy`` a proxy's ``X-Forwarded-Prefix`` sets it instead (ProxyFix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def root_path(value: str) -> str:
    """``vlm/``, ``/vlm`` or ``/vlm/`` -> ``/vlm``; ``/`` or nothing -> ``""`` (the host's root).

    Raises ValueError for what cannot be one path of a URL."""
    path = "/" + value.strip().strip("/")
    if path == "/":
        return ""
    if any(part in ("", ".", "..") for part in path[1:].split("/")) or any(c in path for c in "?#%\\ "):
        raise ValueError(f"{value!r} is not a plain URL path such as /vlm")
    return path


def mounted_at(wsgi_app: Callable[..., Iterable[bytes]], root: str) -> Callable[..., Iterable[bytes]]:
    """``wsgi_app`` with ``root`` as its ``SCRIPT_NAME``, whether the proxy in front stripped it or not."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, script = environ.get("PATH_INFO", ""), environ.get("SCRIPT_NAME", "")
        if path == root or path.startswith(root + "/"):
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = script + root, path[len(root) :] or "/"
        elif not script.endswith(root):
            environ["SCRIPT_NAME"] = script + root
        return wsgi_app(environ, start_response)

    return app
