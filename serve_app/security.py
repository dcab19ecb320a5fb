"""Access control of the HTTP API (no Ray): optional API keys, admin keys and the CORS policy.

- API keys: once any key is configured, every route but `OPEN_PATHS` needs
  `Authorization: Bearer <key>` (what the `openai` SDK sends for `api_key=`); a missing or unknown
  key gets 401 in OpenAI's error envelope with `WWW-Authenticate: Bearer`. Keys are compared in
  constant time and never logged.
- Admin keys: once any is configured, voice upload and delete (`POST /v1/audio/voices`,
  `DELETE /v1/audio/voices/{name}`) need one (403 for any other valid key). An admin key is also
  valid on every other route.
- CORS: closed unless `cors_allow_origins` is set. A request whose `Origin` is neither the
  request's own origin nor an allowed one is refused (403) unless it is a GET or HEAD: this stops
  the cross-site form POST that browsers send without a preflight, and foreign preflights.
  Allowed origins get Starlette's `CORSMiddleware`, which answers their preflights.

Web UI (`serve_app/ui.py`, mounted under `UI_PATH`): a browser cannot send a bearer header, so
the key check delegates that prefix to the UI, which asks for a key on its own login page and
compares it with the same `KeyRing`.

Middleware order, outermost first: origin guard -> CORS -> key check -> the app. So a foreign
origin is refused before anything else, and an allowed origin's preflight (which browsers send
without credentials) is answered before the key check, while 401s still carry CORS headers.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.errors import ApiError, error_response

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready"})          # liveness probes carry no key
ADMIN_PREFIX = "admin:"                                # a key entry "admin:<key>" is an admin key
SAFE_METHODS = frozenset({"GET", "HEAD"})              # may come from any origin (no state change)
CORS_METHODS = ("GET", "POST", "DELETE", "OPTIONS")
CORS_HEADERS = ("Authorization", "Content-Type")
VOICES_PATH = "/v1/audio/voices"
UI_PATH = "/ui"                                        # where the web UI is mounted (serve_app/ui.py)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def split_list(value: Union[None, str, Iterable[str]]) -> tuple[str, ...]:
    """A list given as a list or as one comma-separated string (`serve run key=a,b`), items stripped,
    empty ones dropped."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(s for s in (str(item).strip() for item in items) if s)


def parse_origins(values: Iterable[str]) -> tuple[str, ...]:
    """CORS origins as browsers send them (`scheme://host[:port]`, lower case, no path), or "*"."""
    origins = []
    for value in values:
        origin = value.strip().rstrip("/").lower()
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(f"a CORS origin is scheme://host[:port] or '*', got {value!r}")
        origins.append(origin)
    return tuple(origins)


def parse_keys(entries: Iterable[str], admin: bool = False) -> tuple[frozenset[str], frozenset[str]]:
    """(user keys, admin keys) of key entries: blank lines and `#` comments are skipped, an entry
    `admin:<key>` (or every entry, with `admin=True`) is an admin key."""
    users, admins = set(), set()
    for entry in entries:
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        is_admin = admin or entry.startswith(ADMIN_PREFIX)
        key = entry[len(ADMIN_PREFIX):].strip() if entry.startswith(ADMIN_PREFIX) else entry
        # Header values are ASCII; a key that no client can send is a configuration error.
        if not key or not key.isascii() or not key.isprintable() or " " in key:
            raise ValueError("an API key must be printable ASCII without spaces (the key is not shown)")
        (admins if is_admin else users).add(key)
    return frozenset(users), frozenset(admins)


def read_keys_file(path: Union[str, Path]) -> tuple[frozenset[str], frozenset[str]]:
    """(user keys, admin keys) of a file with one key per line; missing or keyless is an error
    (an API meant to be closed must not start open)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"api_keys_file {path} does not exist or is not a file")
    users, admins = parse_keys(path.read_text(encoding="utf-8").splitlines())
    if not users and not admins:
        raise ValueError(f"api_keys_file {path} holds no keys")
    return users, admins


@dataclass(frozen=True)
class AccessSettings:
    """Who may call the API. No keys: open. `api_keys_env` names a variable of comma-separated
    keys (`admin:` prefix allowed), read where the API is built (each ingress replica)."""

    api_keys: frozenset[str] = field(default=frozenset(), repr=False)
    admin_keys: frozenset[str] = field(default=frozenset(), repr=False)
    cors_allow_origins: tuple[str, ...] = ()
    api_keys_env: Optional[str] = None

    def with_env_keys(self, environ: Mapping[str, str] = os.environ) -> "AccessSettings":
        """These settings plus the keys of `api_keys_env`; an unset or empty variable is an error."""
        if not self.api_keys_env:
            return self
        users, admins = parse_keys(split_list(environ.get(self.api_keys_env, "")))
        if not users and not admins:
            raise ValueError(f"api_keys_env names {self.api_keys_env}, which is unset or holds no keys")
        return replace(self, api_keys=self.api_keys | users, admin_keys=self.admin_keys | admins,
                       api_keys_env=None)


class KeyRing:
    """The configured keys, each compared in constant time (the key check and the web UI)."""

    def __init__(self, users: frozenset[str], admins: frozenset[str]):
        # Bytes, as the header arrives; a key in both sets is an admin key.
        self.keys = [(k.encode(), k in admins) for k in sorted(users | admins)]
        self.admin_only = bool(admins)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def role(self, token: bytes) -> Optional[str]:
        """'admin', 'user' or None; every key is compared, in constant time, whatever matches."""
        role = None
        for key, is_admin in self.keys:
            if hmac.compare_digest(token, key):
                role = "admin" if is_admin else "user"
        return role


def install_access_control(app: FastAPI, settings: AccessSettings, delegated: tuple[str, ...] = ()) -> None:
    """Add the key check, CORS and the origin guard to `app` (see the module docstring). The key
    check passes paths under a `delegated` prefix: the app mounted there checks keys itself."""
    settings = settings.with_env_keys()
    if settings.api_keys or settings.admin_keys:
        app.add_middleware(_KeyCheck, users=settings.api_keys, admins=settings.admin_keys, delegated=delegated)
    if settings.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_allow_origins),
                           allow_methods=list(CORS_METHODS), allow_headers=list(CORS_HEADERS))
    app.add_middleware(_OriginGuard, allowed=settings.cors_allow_origins)
    logger.info("access control: %d API keys, %d admin keys, CORS origins %s", len(settings.api_keys),
                len(settings.admin_keys), list(settings.cors_allow_origins) or "none (same origin only)")


def _route_path(scope: Scope) -> str:
    """The path the app routes on (Serve mounts an application under its `route_prefix`)."""
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def _is_admin_route(method: str, path: str) -> bool:
    return (method == "POST" and path.rstrip("/") == VOICES_PATH) or \
        (method == "DELETE" and path.startswith(VOICES_PATH + "/"))


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str,
                  headers: Optional[dict] = None) -> None:
    logger.info("refused %s %s: %s", scope["method"], _route_path(scope), code)
    response = error_response(ApiError(status, message, None, code))
    response.headers.update(headers or {})
    await response(scope, receive, send)


class _KeyCheck:
    """ASGI middleware: `Authorization: Bearer <key>` on every route but OPEN_PATHS; an admin key
    on the voice upload and delete routes once admin keys exist. (Plain ASGI, so streamed responses
    and their cancellation pass untouched.)"""

    def __init__(self, app: ASGIApp, users: frozenset[str], admins: frozenset[str], delegated: tuple[str, ...] = ()):
        self.app = app
        self.keys = KeyRing(users, admins)
        self.admin_only = self.keys.admin_only
        self.delegated = delegated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in OPEN_PATHS or \
                any(path == p or path.startswith(p + "/") for p in self.delegated):
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _refuse(scope, receive, send, 401, "missing API key: send 'Authorization: Bearer <key>'",
                          "invalid_api_key", {"WWW-Authenticate": "Bearer"})
            return
        role = self.keys.role(token.strip().encode("latin-1"))
        if role is None:
            await _refuse(scope, receive, send, 401, "incorrect API key", "invalid_api_key",
                          {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        if self.admin_only and role != "admin" and _is_admin_route(scope["method"], path):
            await _refuse(scope, receive, send, 403, "uploading and deleting voices needs an admin API key",
                          "admin_key_required")
            return
        await self.app(scope, receive, send)


class _OriginGuard:
    """ASGI middleware: refuse a non-GET/HEAD request (preflights included) whose `Origin` is neither
    the request's own origin nor in `allowed` ("*" allows all)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]):
        self.app = app
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and "*" not in self.allowed:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and origin.lower() not in self.allowed and \
                    _normalise(origin) not in _own_origins(scope, headers):
                await _refuse(scope, receive, send, 403, f"cross-origin request from {origin[:100]!r} refused: "
                              "the origin is not in cors_allow_origins", "cross_origin_refused")
                return
        await self.app(scope, receive, send)


def _normalise(origin: str) -> str:
    """`scheme://host[:port]` in lower case, without the scheme's default port."""
    scheme, _, host = origin.strip().lower().partition("://")
    port = _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{host.removesuffix(':' + port) if port else host}"


def _own_origins(scope: Scope, headers: Headers) -> set[str]:
    """The origins this request was sent to: its Host under the connection's scheme, or under the
    scheme a TLS-terminating proxy reports (a page cannot set Host, nor X-Forwarded-Proto without
    a preflight, which the guard refuses)."""
    host = headers.get("host")
    if not host:
        return set()
    schemes = {scope.get("scheme", "http")}
    forwarded = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if forwarded in _DEFAULT_PORTS:
        schemes.add(forwarded)
    return {_normalise(f"{scheme}://{host}") for scheme in schemes}
