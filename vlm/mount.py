"""``--root-path``: the app served under a path of its host, e.g. ``https://homelab.lan/vlm/``.

A reverse proxy in front may pass the path on (``/vlm/static/app.js``) or strip it
(``/static/app.js``); either way the app must know it, since the page names every URL it asks
for from it (``request.script_root``, rendered into the page). So a request under the root has
it moved from ``PATH_INFO`` to ``SCRIPT_NAME``, and one without it is taken as stripped by the
proxy. Under ``--trusted-proxy`` a proxy's ``X-Forwarded-Prefix`` sets it instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


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
            environ["PATH_INFO"] = path[len(root) :] or "/"
        if not script.endswith(root):  # else a trusted proxy said it already
            environ["SCRIPT_NAME"] = script + root
        return wsgi_app(environ, start_response)

    return app


def prefixed_by_proxy(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """``--trusted-proxy``: the path the proxy serves the app under, from the ``X-Forwarded-Prefix`` it set (the
    last one: a proxy that keeps a client's own puts it first). Only a plain path: the page loads its scripts
    from it, and a header the proxy let through from a client must not make that another site."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if said := environ.get("HTTP_X_FORWARDED_PREFIX", "").split(",")[-1]:
            try:
                environ["SCRIPT_NAME"] = root_path(said)
            except ValueError:
                log.debug("ignored an X-Forwarded-Prefix that is no plain path: %r", said)
        return wsgi_app(environ, start_response)

    return app
