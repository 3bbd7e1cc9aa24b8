"""Registry authentication (distribution `docs/spec/auth`): challenges, tokens, credentials.

A registry that wants credentials answers 401 with `WWW-Authenticate`:
- `Basic realm="..."`: send `Authorization: Basic base64(user:password)` with every request.
- `Bearer realm="https://auth/token",service="registry",scope="repository:NAME:pull"`: GET the
  realm with `service` and one `scope` parameter per scope (`repository:NAME:pull[,push]`),
  sending Basic credentials if we have any (anonymous otherwise); the JSON answer holds
  `token` (or `access_token`) and `expires_in` (seconds, default 60). Then send
  `Authorization: Bearer TOKEN`. Tokens are cached per set of scopes until they expire.

Credentials come from the Docker config (`credentials.py`).

Credentials are sent to the registry's own origin and to the token realm only; a realm over
plain HTTP gets them only when the client was told to use plain HTTP.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from rafs.errors import FailedPrecondition, FormatError, Unsupported
from rafs.registry.credentials import Credentials

_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*,?')
# A scheme ends at whitespace, a comma (a challenge without parameters) or the end; one
# character class before it, so runs of blanks and empty list elements cost linear time.
_SCHEME = re.compile(r"[\s,]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s+|(?=,)|$)")
DEFAULT_TOKEN_LIFETIME = 60.0
@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: the scheme (lowercase) and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` value (RFC 7235) into its challenges."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM.match(header, pos)) is not None:
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


TokenFetch = Callable[[httpx.URL, dict[str, str]], httpx.Response]
"""Sends one GET for a token (with the given headers) and returns the answered response."""


class Authenticator:
    """Answers challenges for one registry and caches the resulting `Authorization` values."""

    def __init__(self, registry: str, credentials: Credentials | None,
                 allow_plain_http: bool) -> None:  # fmt: skip
        self._registry = registry
        self._credentials = credentials
        self._allow_plain_http = allow_plain_http
        self._lock = threading.Lock()
        self._basic = False
        self._bearer: Challenge | None = None
        self._tokens: dict[frozenset[str], tuple[str, float]] = {}

    def authorization(self, scopes: frozenset[str], fetch: TokenFetch) -> str | None:
        """The header value for a request needing `scopes`, once a challenge was seen."""
        if self._basic and self._credentials is not None:
            return self._credentials.basic()
        with self._lock:
            cached = self._tokens.get(scopes)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            bearer = self._bearer
        return None if bearer is None else self._token(bearer, scopes, fetch)

    def challenged(self, header: str, scopes: frozenset[str], fetch: TokenFetch) -> str:
        """Handle a 401's `WWW-Authenticate`; return the header value to retry with."""
        challenges = {c.scheme: c for c in parse_challenges(header)}
        if "bearer" in challenges:
            bearer = challenges["bearer"]
            with self._lock:
                self._bearer = bearer
            wanted = scopes | frozenset(bearer.params.get("scope", "").split())
            return self._token(bearer, wanted, fetch)
        if "basic" in challenges:
            if self._credentials is None:
                raise FailedPrecondition(f"{self._registry}: authentication required and no "
                                         "credentials found (docker login?)")  # fmt: skip
            self._basic = True
            return self._credentials.basic()
        raise Unsupported(f"{self._registry}: unsupported authentication challenge {header!r}")

    def _token(self, bearer: Challenge, scopes: frozenset[str], fetch: TokenFetch) -> str:
        realm = bearer.params.get("realm")
        if not realm:
            raise FormatError(f"{self._registry}: Bearer challenge without a realm")
        service = [("service", bearer.params["service"])] if "service" in bearer.params else []
        try:
            url = httpx.URL(realm)
            url = url.copy_merge_params(tuple(service + [("scope", s) for s in sorted(scopes)]))
        except httpx.InvalidURL as exc:
            raise FormatError(f"{self._registry}: Bearer realm {realm!r} is not a URL "
                              f"({exc})") from None  # fmt: skip
        headers = {}
        if self._credentials is not None and (url.scheme == "https" or self._allow_plain_http):
            headers["Authorization"] = self._credentials.basic()
        response = fetch(url, headers)
        if response.status_code in (401, 403):
            raise FailedPrecondition(f"{self._registry}: token server {url.host} refused "
                                     f"{'the credentials' if headers else 'anonymous access'} "
                                     f"for {' '.join(sorted(scopes))}")  # fmt: skip
        if response.status_code != 200:
            raise FailedPrecondition(f"{self._registry}: token server {url.host} answered "
                                     f"{response.status_code}")  # fmt: skip
        try:
            answer = json.loads(response.content)
            token = answer.get("token") or answer.get("access_token")
            lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError, OverflowError, RecursionError):
            token = None  # not JSON, nested too deeply, or an expires_in no float can hold
        if not isinstance(token, str) or not token:
            raise FormatError(f"{self._registry}: token server {url.host} sent no usable token")
        value = f"Bearer {token}"
        with self._lock:  # renew a little early so a token does not expire in flight
            self._tokens[scopes] = (value, time.monotonic() + max(lifetime - 10, lifetime / 2))
        return value
