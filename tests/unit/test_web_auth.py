"""app/web_auth.py: the tokens file, the scope rules, the middleware, the peer credentials and TLS."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from app.settings import load_settings
from app.web_auth import (
    MIN_TOKEN_CHARS,
    Tokens,
    WebAccess,
    auth_middleware,
    bearer_token,
    grants,
    is_open,
    load_tokens,
    parse_tokens,
    required_scope,
    web_access,
)
from app.web_errors import json_errors, request_timeout, server_options
from records.errors import SettingsError
from tests.certs import self_signed
from tests.ports import free_port

READ = "read-token-0123456789"
OPS = "ops-token-0123456789a"
PEER = "peer-token-0123456789"
BOTH = "both-token-0123456789"
FILE = f"""
# the cluster's tokens
{READ} read            # a model server
{OPS} ops
{PEER} peer
{BOTH} read,ops
"""


def scopes(tokens: Tokens, token: str) -> set[str] | None:
    found = tokens.scopes_of(token)
    return None if found is None else set(found)


def test_a_tokens_file_maps_each_token_to_its_scopes() -> None:
    tokens = parse_tokens(FILE)
    assert len(tokens) == 4
    assert scopes(tokens, READ) == {"read"}
    assert scopes(tokens, OPS) == {"ops"}
    assert scopes(tokens, PEER) == {"peer"}
    assert scopes(tokens, BOTH) == {"read", "ops"}
    assert tokens.scopes_of("not-a-token-0123456789") is None
    assert tokens.scopes_of(READ + "x") is None
    assert tokens.scopes_of(READ[:-1]) is None
    assert tokens.scopes_of("") is None


def test_spec_order_scope_first_and_spaces_after_commas_are_read_too() -> None:
    tokens = parse_tokens(f"read {READ}\nops, read {OPS}\n{PEER}\tpeer , read\n")
    assert scopes(tokens, READ) == {"read"}
    assert scopes(tokens, OPS) == {"ops", "read"}
    assert scopes(tokens, PEER) == {"peer", "read"}


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (f"{READ}\n", 1, "needs its scopes"),
        (f"# ok\n\n{READ} read\n{OPS}\n", 4, "needs its scopes"),
        (f"{READ} admin\n", 1, "unknown scope 'admin'"),
        (f"{READ} read,\n", 1, "empty scope"),
        (f"{READ} read,,ops\n", 1, "empty scope"),
        (f"{READ} Read\n", 1, "unknown scope 'Read'"),
        (f"{READ} read\n{OPS} ops\n{READ} ops\n", 3, "the same token as line 1"),
        ("short-token read\n", 1, "shorter than 16"),
        (f"{READ[:15]} read\n", 1, "shorter than 16"),
        (f"{READ}\u00e9 read\n", 1, "may only contain"),
        (f'{READ}"x read\n', 1, "may only contain"),
        (f"{READ} read ops\n", 1, "found 3 fields"),
        (f"read {READ} extra\n", 1, "found 3 fields"),
        (f"{READ} read, ,ops\n", 1, "empty scope"),
    ],
)
def test_a_bad_line_is_one_error_naming_the_file_and_line_never_the_token(
    text: str, line: int, says: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_tokens(text, "HTTP_AUTH_TOKENS_FILE='/etc/velocity/tokens'")
    message = str(caught.value)
    assert message.startswith(f"HTTP_AUTH_TOKENS_FILE='/etc/velocity/tokens' line {line}: "), message
    assert says in message, message
    assert "\n" not in message
    for token in (READ, OPS, READ[:15]):
        assert token not in message, message


def test_a_token_in_the_scope_place_is_not_shown() -> None:
    # '<unknown scope> <token>': the second field is taken for the scopes, and must not be echoed.
    with pytest.raises(SettingsError) as caught:
        parse_tokens(f"admin {READ}\n")
    assert READ not in str(caught.value) and "is the token first?" in str(caught.value)


def test_a_file_with_no_token_is_refused() -> None:
    with pytest.raises(SettingsError, match="holds no token"):
        parse_tokens("# nothing yet\n\n")


def test_load_tokens_names_an_unreadable_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        load_tokens(str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="cannot be read"):
        load_tokens(str(tmp_path))  # a directory
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + READ.encode() + b" read\n")
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_tokens(str(binary))
    good = tmp_path / "tokens"
    good.write_text(FILE)
    assert scopes(load_tokens(str(good)), OPS) == {"ops"}


_TOKEN = st.text(alphabet="ABCDEFabcdef0123456789-._~+/", min_size=MIN_TOKEN_CHARS, max_size=64)
_SCOPES = st.sets(st.sampled_from(["read", "ops", "peer"]), min_size=1)


@given(st.dictionaries(_TOKEN, _SCOPES, min_size=1, max_size=8), st.booleans())
def test_any_well_formed_file_reads_back_every_token(entries: dict[str, set[str]], spec_order: bool) -> None:
    lines = [
        f"{','.join(sorted(scopes))} {token}" if spec_order else f"{token} {','.join(sorted(scopes))} # c"
        for token, scopes in entries.items()
    ]
    tokens = parse_tokens("\n".join(lines))
    for token, granted in entries.items():
        assert scopes(tokens, token) == granted
        if token + "A" not in entries:
            assert tokens.scopes_of(token + "A") is None


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/features/user-1", "read"),
        ("/features", "read"),
        ("/features/", "read"),
        ("/stats", "ops"),
        ("/", "ops"),
        ("/static/vendor/uPlot.iife.min.js", "ops"),
        ("/metrics", "ops"),
        ("/health", "ops"),
        ("/ready", "ops"),
        ("/featuresx", "ops"),
        ("/nowhere", "ops"),
    ],
)
def test_required_scope(path: str, scope: str) -> None:
    assert required_scope(path) == scope


@pytest.mark.parametrize(
    ("scopes", "needed", "granted"),
    [
        ({"read"}, "read", True),
        ({"read"}, "ops", False),
        ({"ops"}, "read", True),  # SPEC 2: ops implies read
        ({"ops"}, "ops", True),
        ({"peer"}, "read", True),
        ({"peer"}, "ops", True),
        ({"read", "ops"}, "ops", True),
        (set(), "read", False),
    ],
)
def test_scope_rules(scopes: set[str], needed: str, granted: bool) -> None:
    assert grants(scopes, needed) is granted  # type: ignore[arg-type]


def test_open_paths_are_exact() -> None:
    open_paths = ("/health", "/ready")
    assert is_open("/health", open_paths)
    assert not is_open("/health/", open_paths)
    assert not is_open("/healthz", open_paths)
    assert not is_open("/health/../stats", open_paths)
    assert not is_open("/health", ())


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        (f"Bearer {READ}", READ),
        (f"bearer {READ}", READ),
        (f"BEARER   {READ}  ", READ),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Basic {READ}", None),
        (READ, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


# --- the settings: peer token, TLS ---


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    tokens = tmp_path / "tokens"
    tokens.write_text(FILE)
    return {"HTTP_AUTH_TOKENS_FILE": str(tokens), **extra}


def test_without_a_tokens_file_nothing_is_checked_and_nothing_is_sent() -> None:
    access = web_access(load_settings({}))
    assert access.tokens is None and access.peer_headers == {}
    assert access.server_ssl is None and access.peer_ssl is True and access.scheme == "http"


def test_tokens_need_a_peer_token_of_scope_peer_in_the_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        web_access(load_settings(_env(tmp_path)))
    assert str(caught.value) == (
        "HTTP_AUTH_TOKENS_FILE is set: HTTP_PEER_TOKEN (a token of scope peer in that file) "
        "is needed for worker-to-worker calls"
    )
    for wrong in (READ, OPS, BOTH, "peer-token-not-in-the-file"):
        with pytest.raises(SettingsError, match="HTTP_PEER_TOKEN is not a token of scope peer") as caught:
            web_access(load_settings(_env(tmp_path, HTTP_PEER_TOKEN=wrong)))
        assert wrong not in str(caught.value)
    access = web_access(load_settings(_env(tmp_path, HTTP_PEER_TOKEN=PEER)))
    assert access.tokens is not None and access.peer_headers == {"Authorization": f"Bearer {PEER}"}


def test_a_peer_token_file_works_too(tmp_path: Path) -> None:
    secret = tmp_path / "peer"
    secret.write_text(PEER + "\n")
    access = web_access(load_settings(_env(tmp_path, HTTP_PEER_TOKEN_FILE=str(secret))))
    assert access.peer_headers == {"Authorization": f"Bearer {PEER}"}


def test_web_tls_serves_the_certificate_and_peers_trust_it(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    access = web_access(load_settings({"WEB_SSL_CERTFILE": str(cert), "WEB_SSL_KEYFILE": str(key)}))
    assert access.scheme == "https"
    assert isinstance(access.server_ssl, ssl.SSLContext) and isinstance(access.peer_ssl, ssl.SSLContext)
    assert access.peer_ssl.verify_mode == ssl.CERT_REQUIRED and access.peer_ssl.check_hostname
    trusted = access.peer_ssl.get_ca_certs()
    assert len(trusted) == 1 and trusted[0]["subject"] == ((("commonName", "velocity"),),)


def test_a_key_that_is_not_the_certificates_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for certfile, keyfile in ((cert, other_key), (garbage, other_key), (cert, garbage)):
        with pytest.raises(SettingsError, match="are not a PEM certificate and its private key") as caught:
            web_access(load_settings({"WEB_SSL_CERTFILE": str(certfile), "WEB_SSL_KEYFILE": str(keyfile)}))
        assert "\n" not in str(caught.value)


# --- the middleware, on a real aiohttp server ---


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    access = WebAccess(parse_tokens(FILE), ("/health",))
    app = web.Application(middlewares=[auth_middleware(access)])
    for path in ("/features/{user}", "/features", "/stats", "/health", "/ready", "/"):
        app.router.add_get(path, ok)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        ("/features/u1", None, 401),
        ("/features/u1", "wrong-token-0123456789", 401),
        ("/features/u1", OPS, 200),  # SPEC 2: ops implies read
        ("/features/u1", READ, 200),
        ("/features/u1", PEER, 200),
        ("/features?user_id=u1", OPS, 200),
        ("/features?user_id=u1", READ, 200),
        ("/stats", READ, 403),
        ("/stats", OPS, 200),
        ("/stats", BOTH, 200),
        ("/stats", PEER, 200),
        ("/", None, 401),
        ("/", OPS, 200),
        ("/ready", None, 401),  # not open in this server
        ("/ready", OPS, 200),
        ("/health", None, 200),  # open
        ("/health", "wrong-token-0123456789", 200),
        ("/nowhere", None, 401),  # no token: not even whether the path exists
        ("/nowhere", READ, 403),
        ("/nowhere", OPS, 404),
    ],
)
async def test_the_middleware_answers_401_403_or_lets_through(
    server: str, path: str, token: str | None, status: int
) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, session.get(server + path, headers=headers) as response:
        assert response.status == status
        if status in (401, 403):
            body = await response.json()
            assert isinstance(body["error"], str) and (token is None or token not in body["error"])
            challenge = response.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer ")
            if status == 403:
                assert 'error="insufficient_scope"' in challenge
            elif token is not None:
                assert 'error="invalid_token"' in challenge


# --- the deadline of a request (app/web_errors.py), on a real aiohttp server ---


async def test_a_request_past_its_deadline_is_a_504_json_error_and_others_still_answer() -> None:
    release = asyncio.Event()

    async def hangs(request: web.Request) -> web.Response:
        await release.wait()  # a proxied call to a worker that never answers
        return web.json_response({})

    async def quick(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[json_errors, request_timeout(0.5)], handler_args=server_options(0.5))
    app.router.add_get("/hangs", hangs)
    app.router.add_get("/quick", quick)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            started = time.monotonic()
            async with session.get(f"http://127.0.0.1:{port}/hangs") as response:
                assert response.status == 504
                assert "HTTP_REQUEST_TIMEOUT_S" in (await response.json())["error"]
            assert time.monotonic() - started < 5
            async with session.get(f"http://127.0.0.1:{port}/quick") as response:
                assert response.status == 200
        # A connection that never finishes its request head is closed after the deadline.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /qui")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        release.set()
        await runner.cleanup()


def test_open_paths_are_exact_or_prefixes() -> None:
    from app.web_auth import is_open

    opened = ("/health", "/static/*", "/")
    assert is_open("/health", opened) and is_open("/static/dashboard.js", opened) and is_open("/", opened)
    assert (
        not is_open("/healthz", opened)
        and not is_open("/stats", opened)
        and not is_open("/features/u", opened)
    )
