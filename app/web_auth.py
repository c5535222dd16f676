"""Who may ask what over HTTP: bearer tokens with scopes, and TLS for the web server and its peers.

``HTTP_AUTH_TOKENS_FILE`` holds one token per line::

    # comment
    <token> <scope>[,<scope>...]    [# comment]

(``<scope>[,<scope>...] <token>``, SPEC 2's order, is read the same.) Scopes:

* ``read``: feature lookups, ``GET /features/{user}`` and ``GET /features?user_id=...``;
* ``ops``: everything else (``/stats``, the live page ``/`` and ``/static/...``, and
  ``/metrics``, ``/health``, ``/ready`` when they are not in ``HTTP_OPEN_PATHS``);
* ``peer``: worker-to-worker calls, which may do anything ``read`` and ``ops`` may.

The file is read once, at start (:func:`web_access`, called where ``app.main``
builds the App): a bad file is a :class:`SettingsError` naming the file and the
line, never the token. Tokens are kept as SHA-256 digests and compared in
constant time. Without the setting nothing is checked (the behaviour before
tokens existed).

With ``WEB_SSL_CERTFILE``/``WEB_SSL_KEYFILE`` the web server speaks HTTPS, the
canonical URL other workers use is ``https://``, and worker-to-worker calls
verify the peer against the certificates in ``WEB_SSL_CERTFILE`` (one
certificate shared by the cluster, or a leaf followed by the CA that signed
every worker's certificate): never an unverified connection.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from app.settings import Settings
from records.errors import SettingsError

Scope = Literal["read", "ops", "peer"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
#: Shorter tokens are refused: a token is a secret, not a password someone types.
MIN_TOKEN_CHARS = 16
# RFC 6750's b64token: what an ``Authorization: Bearer`` header can carry.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_AROUND_COMMAS = re.compile(r"\s*,\s*")
_PEER_MISSING = (
    "HTTP_AUTH_TOKENS_FILE is set: HTTP_PEER_TOKEN (a token of scope peer in that file) "
    "is needed for worker-to-worker calls"
)
REALM = 'realm="velocity"'


def required_scope(path: str) -> Scope:
    """The scope a request for ``path`` needs (``peer`` grants every scope)."""
    if path == "/features" or path.startswith("/features/"):
        return "read"
    return "ops"


def grants(scopes: Iterable[str], needed: Scope) -> bool:
    """Whether a token with ``scopes`` may do what ``needed`` allows (SPEC 2: ``ops`` implies ``read``)."""
    have = set(scopes)
    return "peer" in have or needed in have or (needed == "read" and "ops" in have)


def is_open(path: str, open_paths: Iterable[str]) -> bool:
    """Paths in ``HTTP_OPEN_PATHS`` are served without a token: exact paths, or prefixes ending in ``*``."""
    for open_path in open_paths:
        if open_path.endswith("*"):
            if path.startswith(open_path[:-1]):
                return True
        elif path == open_path:
            return True
    return False


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class Tokens:
    """The tokens of a tokens file: SHA-256 digests and their scopes."""

    entries: tuple[tuple[bytes, frozenset[Scope]], ...]

    def scopes_of(self, token: str) -> frozenset[Scope] | None:
        """The scopes of ``token``, or None for an unknown token (constant time in the token)."""
        presented = _digest(token)
        found: frozenset[Scope] | None = None
        for digest, scopes in self.entries:  # every entry, whatever matches: no early exit
            if hmac.compare_digest(presented, digest):
                found = scopes
        return found

    def __len__(self) -> int:
        return len(self.entries)


def _scope_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",")]


def _is_scope_list(text: str) -> bool:
    return all(s in SCOPES for s in _scope_list(text))


def _unknown(scope: str) -> str:
    if not scope:
        return "an empty scope"
    if len(scope) >= MIN_TOKEN_CHARS:  # perhaps a token in the wrong place: never shown
        return f"an unknown scope of {len(scope)} characters (is the token first?)"
    return f"unknown scope {scope!r}"


def parse_tokens(text: str, source: str = "HTTP_AUTH_TOKENS_FILE") -> Tokens:
    """The tokens of a tokens file's text; a bad line is a SettingsError naming ``source`` and the line.

    No message ever contains a token.
    """
    entries: list[tuple[bytes, frozenset[Scope]]] = []
    first_line: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        where = f"{source} line {number}"
        fields = _AROUND_COMMAS.sub(",", content).split()  # tokens hold no comma: 'read, ops' is one field
        if len(fields) < 2:
            raise SettingsError(f"{where}: a token needs its scopes: '<token> <scope>[,<scope>...]'")
        if len(fields) > 2:
            raise SettingsError(
                f"{where}: '<token> <scope>[,<scope>...]' expected, found {len(fields)} fields"
            )
        token, scopes_text = fields
        if _is_scope_list(token) and not _is_scope_list(scopes_text):  # SPEC 2's '<scope> <token>'
            scopes_text, token = token, scopes_text
        names = _scope_list(scopes_text)
        unknown = [s for s in names if s not in SCOPES]
        if unknown:
            raise SettingsError(f"{where}: {_unknown(unknown[0])} (scopes: {', '.join(SCOPES)})")
        if len(token) < MIN_TOKEN_CHARS:
            raise SettingsError(f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters")
        if not _B64TOKEN.fullmatch(token):
            raise SettingsError(
                f"{where}: the token may only contain ASCII letters, digits and -._~+/ (then '=')"
            )
        digest = _digest(token)
        if digest in first_line:
            raise SettingsError(f"{where}: the same token as line {first_line[digest]}")
        first_line[digest] = number
        entries.append((digest, frozenset(s for s in SCOPES if s in names)))
    if not entries:
        raise SettingsError(f"{source} holds no token")
    return Tokens(tuple(entries))


def load_tokens(path: str) -> Tokens:
    source = f"HTTP_AUTH_TOKENS_FILE={path!r}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise SettingsError(f"{source} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{source} is not UTF-8 text (byte {exc.start})") from None
    return parse_tokens(text, source)


@dataclass(frozen=True)
class WebAccess:
    """What the web server checks and what this worker sends to the others, from the settings."""

    tokens: Tokens | None  # None: no HTTP_AUTH_TOKENS_FILE, nothing checked
    open_paths: tuple[str, ...]
    peer_headers: dict[str, str] = field(default_factory=dict)  # Authorization for peer calls
    server_ssl: ssl.SSLContext | None = None  # the web server's, with WEB_SSL_CERTFILE/KEYFILE
    #: ``ssl=`` of peer calls: a context trusting WEB_SSL_CERTFILE's certificates, or True (default CAs)
    peer_ssl: ssl.SSLContext | bool = True

    @property
    def scheme(self) -> str:
        return "https" if self.server_ssl is not None else "http"


@functools.cache
def web_access(settings: Settings) -> WebAccess:
    """Tokens, peer credentials and TLS contexts from ``settings`` (SettingsError: one line).

    Cached: ``app.main`` calls it first (a bad file stops the worker there), the
    views and the cluster view get the same object.
    """
    tokens = None
    if settings.http_auth_tokens_file is not None:
        tokens = load_tokens(settings.http_auth_tokens_file)
        if settings.http_peer_token is None:
            raise SettingsError(_PEER_MISSING)
        scopes = tokens.scopes_of(settings.http_peer_token)
        if scopes is None or "peer" not in scopes:
            raise SettingsError(
                f"HTTP_PEER_TOKEN is not a token of scope peer in "
                f"HTTP_AUTH_TOKENS_FILE={settings.http_auth_tokens_file!r}"
            )
    headers = {}
    if settings.http_peer_token is not None:
        headers["Authorization"] = f"Bearer {settings.http_peer_token}"
    server_ssl: ssl.SSLContext | None = None
    peer_ssl: ssl.SSLContext | bool = True
    if settings.web_ssl_certfile is not None and settings.web_ssl_keyfile is not None:
        server_ssl, peer_ssl = _tls_contexts(settings.web_ssl_certfile, settings.web_ssl_keyfile)
    return WebAccess(tokens, settings.http_open_paths, headers, server_ssl, peer_ssl)


def _tls_contexts(certfile: str, keyfile: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(
            f"WEB_SSL_CERTFILE={certfile!r} and WEB_SSL_KEYFILE={keyfile!r} are not a PEM certificate "
            f"and its private key: {exc.strerror or exc}"
        ) from None
    try:
        # Peers present their certificate: trust the ones in our certificate file (the cluster's
        # self-signed certificate, or the CA after the leaf), with host name checks.
        peers = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certfile)
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(f"WEB_SSL_CERTFILE={certfile!r} cannot be a trust anchor: {exc}") from None
    return server, peers


def _refusal(status: int, message: str, challenge: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={"WWW-Authenticate": challenge})


def auth_middleware(access: WebAccess) -> Middleware:
    """aiohttp middleware: 401 without a known token, 403 without the scope; open paths pass."""
    tokens = access.tokens
    open_paths = frozenset(access.open_paths)

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tokens is None or is_open(request.path, open_paths):
            return await handler(request)
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return _refusal(401, "this request needs 'Authorization: Bearer <token>'", f"Bearer {REALM}")
        scopes = tokens.scopes_of(token)
        if scopes is None:
            return _refusal(401, "unknown token", f'Bearer {REALM}, error="invalid_token"')
        needed = required_scope(request.path)
        if not grants(scopes, needed):
            return _refusal(
                403,
                f"this token lacks the scope {needed!r}",
                f'Bearer {REALM}, error="insufficient_scope", scope="{needed}"',
            )
        return await handler(request)

    return check_token
