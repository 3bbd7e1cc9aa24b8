"""One registry host: the shared HTTP connection pool, authentication, retries, redirects.

Every request of the distribution API goes through `RegistryClient.request`, which
- sends `Authorization` only to the registry's own origin (scheme, host and port), so a
  redirect to blob storage elsewhere never carries credentials;
- on 401, answers the `WWW-Authenticate` challenge once (see `auth`) and resends;
- follows redirects of GET and HEAD itself (at most 5);
- retries 408/429/5xx answers and dropped connections with backoff (see `retry`), unless
  the caller cannot resend the body (`retry=False`); after the last attempt the failure is
  `Unavailable`, naming what was asked for.
Error answers map to error kinds: 404 `NotFound`, 401/403 `FailedPrecondition` (access
denied), 400/416 `InvalidArgument`, 405 `Unsupported`, 408/429/5xx `Unavailable`, with the
registry's error codes from the JSON body in the message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx

from rafs.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RafsError,
    Unavailable,
    Unsupported,
)
from rafs.registry.auth import Authenticator
from rafs.registry.credentials import Credentials
from rafs.registry.retry import RETRY_STATUS, RetryPolicy

if TYPE_CHECKING:
    from rafs.registry.repository import Repository

Body = bytes | Callable[[], Iterator[bytes]] | None
"""A request body: bytes, or a factory giving a fresh stream of it for each attempt."""

_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RegistryClient:
    """The distribution API of one registry host (`HOST[:PORT]`)."""

    def __init__(self, host: str, *, plain_http: bool = False,
                 credentials: Credentials | None = None, retry: RetryPolicy | None = None,
                 http: httpx.Client | None = None, timeout: float = 60.0) -> None:  # fmt: skip
        self.host = host
        self.base = httpx.URL(f"{'http' if plain_http else 'https'}://{host}")
        self.retry = retry or RetryPolicy()
        self._own_http = http is None
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        self._auth = Authenticator(host, credentials, allow_plain_http=plain_http)

    def close(self) -> None:
        if self._own_http:
            self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def repository(self, name: str) -> Repository:
        from rafs.registry.repository import Repository

        return Repository(self, name)

    def ping(self) -> None:
        """GET /v2/: the registry speaks the API and our credentials (if any) are accepted."""
        self.request("GET", "/v2/", frozenset(), f"docker://{self.host}").close()

    def url(self, path: str) -> httpx.URL:
        return self.base.join(path)

    def request(self, method: str, url: str | httpx.URL, scopes: frozenset[str], what: str, *,
                headers: dict[str, str] | None = None, body: Body = None,
                expect: tuple[int, ...] = (200,), retry: bool = True,
                stream: bool = False) -> httpx.Response:  # fmt: skip
        """Send one API request; return the response if its status is in `expect`.

        The body is read unless `stream` (then the caller closes the response). Any other
        status becomes the error of its kind, the message starting with `what`.
        """
        target = self.url(str(url)) if isinstance(url, str) else url
        failures = 0
        authorized = False
        redirects = 0
        while True:
            try:
                response = self._send(method, target, scopes, headers or {}, body)
            except httpx.TransportError as exc:
                failures = self.retry_or_raise(failures, retry, what, _dropped(exc))
                continue
            status = response.status_code
            if status == 401 and not authorized and "www-authenticate" in response.headers:
                response.close()
                self._auth.challenged(response.headers["www-authenticate"], scopes,
                                      self._fetch_token)  # fmt: skip
                authorized = True
                continue
            if status in _REDIRECTS and method in ("GET", "HEAD") and redirects < _MAX_REDIRECTS:
                response.close()
                target = target.join(response.headers.get("location", ""))
                redirects += 1
                continue
            if status in RETRY_STATUS and status not in expect:
                response.close()
                failures = self.retry_or_raise(failures, retry, what, f"HTTP {status}",
                                        response.headers.get("retry-after"))  # fmt: skip
                continue
            if status not in expect:
                try:
                    response.read()
                except httpx.TransportError:
                    pass
                finally:
                    response.close()
                raise error_for(response, what)
            if not stream:
                try:
                    response.read()
                except httpx.TransportError as exc:
                    failures = self.retry_or_raise(failures, retry, what, _dropped(exc))
                    continue
                finally:
                    response.close()
            return response

    def _send(self, method: str, url: httpx.URL, scopes: frozenset[str],
              headers: dict[str, str], body: Body) -> httpx.Response:  # fmt: skip
        headers = dict(headers)
        if _same_origin(url, self.base):
            authorization = self._auth.authorization(scopes, self._fetch_token)
            if authorization is not None:
                headers["Authorization"] = authorization
        content = body() if callable(body) else body
        request = self.http.build_request(method, url, headers=headers, content=content)
        return self.http.send(request, stream=True)

    def retry_or_raise(self, failures: int, retry: bool, what: str, reason: str,
                retry_after: str | None = None) -> int:  # fmt: skip
        """Count a retryable failure; sleep before the next try or raise `Unavailable`."""
        failures += 1
        if not retry or failures >= self.retry.attempts:
            tries = f" after {failures} attempts" if retry else ""
            raise Unavailable(f"{what}: {reason}{tries}")
        time.sleep(self.retry.delay(failures, retry_after))
        return failures

    def _fetch_token(self, url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
        """GET a token from the auth realm, with the same retries as API requests."""
        failures = 0
        while True:
            try:
                response = self.http.get(url, headers=headers)
            except httpx.TransportError as exc:
                failures = self.retry_or_raise(failures, True, f"token server {url.host}",
                                               _dropped(exc))  # fmt: skip
                continue
            if response.status_code in RETRY_STATUS:
                failures = self.retry_or_raise(failures, True, f"token server {url.host}",
                                        f"HTTP {response.status_code}")  # fmt: skip
                continue
            return response


def _dropped(exc: httpx.TransportError) -> str:
    return f"connection failed ({type(exc).__name__}: {exc})"


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def error_for(response: httpx.Response, what: str) -> RafsError:
    """The error of the right kind for a failed API response."""
    status = response.status_code
    detail = _error_detail(response) or response.reason_phrase or "error"
    message = f"{what}: {detail} (HTTP {status})"
    if status == 404:
        return NotFound(message)
    if status in (401, 403):
        return FailedPrecondition(f"{what}: access denied: {detail} (HTTP {status})")
    if status in (400, 416):
        return InvalidArgument(message)
    if status == 405:
        return Unsupported(message)
    if status in RETRY_STATUS:
        return Unavailable(message)
    return FailedPrecondition(message)


def _error_detail(response: httpx.Response) -> str:
    """`CODE: message; ...` from a distribution error body `{"errors": [...]}`."""
    try:
        errors = json.loads(response.content).get("errors")
        return "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ")
                         for e in errors)  # fmt: skip
    except (ValueError, AttributeError, TypeError, httpx.ResponseNotRead):
        return ""
