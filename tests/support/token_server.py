"""A token server for the registry's Bearer auth, on loopback, issuing real signed JWTs.

The registry (configured by `auth_config()`) answers 401 with
`Bearer realm="http://127.0.0.1:PORT/token",service="rafs-test",scope="repository:NAME:ACTIONS"`
and verifies every token itself: an RS256 JWT whose `x5c` header carries a self-signed
certificate that is also the registry's `rootcertbundle`, issuer and audience as configured,
and an `access` claim listing the granted actions per repository (distribution
`registry/auth/token`). This server checks Basic credentials against its users, grants what
was asked, and signs with `openssl dgst -sha256 -sign` (PKCS#1 v1.5, i.e. RS256). Anonymous
or wrong credentials get 401. Every request is recorded for the test to inspect.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SERVICE = "rafs-test"
ISSUER = "rafs-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    authorization: str | None
    service: str | None
    scopes: list[str]
    granted: bool


@dataclass
class TokenServer:
    url: str
    key: Path
    cert: Path
    users: dict[str, str]
    requests: list[TokenRequest] = field(default_factory=list)

    def auth_config(self) -> dict[str, Any]:
        return {"token": {"realm": f"{self.url}/token", "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.cert)}}  # fmt: skip

    def sign(self, claims: dict[str, Any]) -> str:
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             capture_output=True, check=True).stdout  # fmt: skip
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        encoded = (_b64url(json.dumps(part).encode()) for part in (header, claims))
        signing_input = ".".join(encoded)
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True,
                                   check=True).stdout  # fmt: skip
        return f"{signing_input}.{_b64url(signature)}"

    def issue(self, user: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        return self.sign({"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300,
                          "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                          "access": access})  # fmt: skip

    def check(self, authorization: str | None) -> str | None:
        """The user whose Basic credentials these are, or None."""
        if not authorization or not authorization.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None


@contextmanager
def start_token_server(base: Path, users: dict[str, str]) -> Iterator[TokenServer]:
    base.mkdir(parents=True, exist_ok=True)
    key, cert = base / "token.key", base / "token.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=rafs-test-token"],
                   capture_output=True, check=True)  # fmt: skip
    holder: list[TokenServer] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server = holder[0]
            query = parse_qs(urlsplit(self.path).query)
            scopes = query.get("scope", [])
            authorization = self.headers.get("Authorization")
            user = server.check(authorization)
            server.requests.append(TokenRequest(authorization, query.get("service", [None])[0],
                                                scopes, user is not None))  # fmt: skip
            if user is None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="token"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps({"token": server.issue(user, scopes), "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(TokenServer(f"http://127.0.0.1:{httpd.server_address[1]}", key, cert, users))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
