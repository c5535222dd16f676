"""HTTP views (SPEC 7): feature lookups routed to the owning worker, health, readiness."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from faust.web import Request, Response, View
from yarl import URL

from app.cluster import access, cluster_stats, local_stats
from app.main import app, settings
from app.readiness import is_ready, owned_partitions
from records.errors import StateCorruptError
from records.schema import FeaturesLookup
from tables.user_state import is_expired_in_table, user_state, windows

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Velocity-Routed"
RETRY_AFTER_S = "1"
#: A lookup proxied to its owner gives up after this long: before HTTP_REQUEST_TIMEOUT_S, so that the
#: client hears that the owner did not answer (503, Retry-After) rather than a bare 504.
PROXY_TIMEOUT_S = min(5.0, 0.8 * settings.http_request_timeout_s)
#: The largest ``at``: the end of year 9999 (epoch seconds); transactions' timestamps are > 0.
MAX_AT_S = 253402300799.0


def parse_at(raws: list[str]) -> float | None:
    """The ``?at=`` values of a request as one finite JSON number of epoch seconds, or ValueError."""
    if not raws:
        return None
    if len(raws) > 1:
        raise ValueError(f"give at most one at, got {len(raws)}")
    try:
        value = orjson.loads(raws[0])
    except orjson.JSONDecodeError:
        raise ValueError("at must be a JSON number of epoch seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("at must be a finite JSON number of epoch seconds")
    if not 0 <= value <= MAX_AT_S:
        raise ValueError(f"at must be epoch seconds between 0 and {MAX_AT_S:.0f} (year 9999)")
    return float(value)


def too_long(user_id: str) -> str | None:
    """Why ``user_id`` is refused (longer than HTTP_MAX_USER_ID_CHARS), or None."""
    if len(user_id) <= settings.http_max_user_id_chars:
        return None
    return (
        f"user_id has {len(user_id)} characters, more than HTTP_MAX_USER_ID_CHARS="
        f"{settings.http_max_user_id_chars}"
    )


def peer_url(owner: URL, request: Request) -> URL:
    """``request``'s path and query, asked of ``owner`` (its canonical URL: scheme, host, port)."""
    return owner.with_path(request.rel_url.raw_path, encoded=True).with_query(request.rel_url.query)


def peer_headers() -> dict[str, str]:
    """Headers of a call to another worker: routed, with HTTP_PEER_TOKEN when set."""
    return {ROUTED_HEADER: "1", **access.peer_headers}


#: Statuses another worker answers when it refuses this worker's own credentials (HTTP_PEER_TOKEN).
REFUSED = (401, 403)
REFUSED_ERROR = "the worker owning this user refused this worker's peer token"


def _error(view: View, status: int, message: str, retry: bool = False) -> Response:
    headers = {"Retry-After": RETRY_AFTER_S} if retry else None
    return view.json({"error": message}, status=status, headers=headers)


def _at_when_ready(view: View, request: Request) -> tuple[float | None, Response | None]:
    """``?at=`` of a lookup, and the answer to give instead when there is none: 400 (bad ``at``), 503."""
    try:
        at_s = parse_at(request.url.query.getall("at", []))
    except ValueError as exc:
        return None, _error(view, 400, str(exc))
    if not is_ready():
        return None, _error(view, 503, "worker is rebalancing or restoring its tables", retry=True)
    return at_s, None


def is_self(owner: Any) -> bool:
    return bool(owner.host == app.conf.canonical_url.host and owner.port == app.conf.canonical_url.port)


def lookup_here(user_id: str, at_s: float | None) -> tuple[int, dict[str, Any]]:
    """SPEC 7 for a user this worker owns: (200, the FeaturesLookup) or (status, {"error": ...})."""
    try:
        window = windows.load(user_id)
    except StateCorruptError as exc:
        log.error("state of user %r is corrupt: %s", user_id, exc)
        return 500, {"error": "stored state of this user cannot be read"}
    if window is None or is_expired_in_table(window):
        return 404, {"error": f"no state for user {user_id!r}"}
    floor = window.lateness_floor_s()
    if at_s is not None and floor is not None and at_s < floor:
        return 400, {
            "error": f"at={at_s!r} is earlier than the user's latest timestamp minus ALLOWED_LATENESS_S "
            f"({floor!r}); windows older than that are no longer exact"
        }
    values: dict[str, Any] = window.lookup(at_s, time.time())  # exactly FeaturesLookup's fields (test_schema)
    return 200, values


# Any user id but '/' (aiohttp's default pattern also refuses '{' and '}'); '%2F' is a '/' in the id.
@app.page("/features/{user_id:[^/]+}")
class FeaturesView(View):
    """``GET /features/{user_id}[?at=epoch_s]``: answered by the worker owning the user."""

    async def get(self, request: Request, user_id: str) -> Response:
        try:
            return await self._get(request, user_id)
        except Exception:
            log.exception("lookup of user %r failed", user_id)
            return _error(self, 500, "internal error; see the worker log")

    async def _get(self, request: Request, user_id: str) -> Response:
        if (why := too_long(user_id)) is not None:
            return _error(self, 400, why)
        at_s, refused = _at_when_ready(self, request)
        if refused is not None:
            return refused
        try:
            owner = app.router.key_store(user_state.name, user_id)
        except KeyError:
            return _error(self, 503, "no worker owns this user yet", retry=True)
        if not is_self(owner):
            if request.headers.get(ROUTED_HEADER):
                # The sender thinks we own the user and we disagree: assignments are moving.
                return _error(self, 503, "ownership is moving between workers", retry=True)
            return await self._proxy(request, owner)
        status, body = lookup_here(user_id, at_s)
        if status != 200:
            return _error(self, status, body["error"])
        return self.bytes(FeaturesLookup.from_values(body).encode(), content_type="application/json")

    async def _proxy(self, request: Request, owner: URL) -> Response:
        try:
            async with app.http_client.get(
                peer_url(owner, request),
                headers=peer_headers(),
                ssl=access.peer_ssl,
                timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_S),
            ) as response:
                body = await response.read()
                if response.status in REFUSED:
                    log.warning("owner %s refused this worker's HTTP_PEER_TOKEN (%s)", owner, response.status)
                    return _error(self, 503, REFUSED_ERROR, retry=True)
                headers = {}
                if "Retry-After" in response.headers:
                    headers["Retry-After"] = response.headers["Retry-After"]
                return self.bytes(
                    body, content_type="application/json", status=response.status, headers=headers
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("owner %s of a lookup did not answer: %s", owner, exc)
            return _error(self, 503, "the worker owning this user did not answer", retry=True)


#: Users in one batched lookup, at most (the request line is limited to 8 KiB by aiohttp anyway:
#: about 400 ids of 12 characters).
MAX_BATCH_USERS = 500


def _item(user_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    if status == 200:
        return {"user_id": user_id, "status": 200, "features": body}
    return {"user_id": user_id, "status": status, "error": body["error"]}


@app.page("/features")
class FeaturesBatchView(View):
    """``GET /features?user_id=a&user_id=b[&at=epoch_s]``: many users in one request.

    The answer is ``{"results": [...]}`` in the order asked, one item per
    user id: ``{"user_id", "status": 200, "features": {...}}`` or
    ``{"user_id", "status": 404|400|503|500, "error": "..."}`` (the status the
    single lookup would have had). Users are grouped by owner: this worker
    answers its own, and each other owner gets one request for its share,
    all at once (``asyncio.gather``), so the batch takes about as long as the
    slowest owner, not the sum.
    """

    async def get(self, request: Request) -> Response:
        try:
            return await self._get(request)
        except Exception:
            log.exception("batched lookup failed")
            return _error(self, 500, "internal error; see the worker log")

    async def _get(self, request: Request) -> Response:
        users = request.url.query.getall("user_id", [])
        if not users:
            return _error(self, 400, "give one or more user_id query parameters")
        if len(users) > MAX_BATCH_USERS:
            return _error(self, 400, f"at most {MAX_BATCH_USERS} user_id per request, got {len(users)}")
        for user_id in users:
            if (why := too_long(user_id)) is not None:
                return _error(self, 400, why)
        at_s, refused = _at_when_ready(self, request)
        if refused is not None:
            return refused
        routed = bool(request.headers.get(ROUTED_HEADER))
        answers: dict[str, dict[str, Any]] = {}
        remote: dict[URL, list[str]] = {}
        for user_id in dict.fromkeys(users):  # each distinct user once
            try:
                owner = app.router.key_store(user_state.name, user_id)
            except KeyError:
                answers[user_id] = _item(user_id, 503, {"error": "no worker owns this user yet"})
                continue
            if is_self(owner):
                answers[user_id] = _item(user_id, *lookup_here(user_id, at_s))
            elif routed:
                answers[user_id] = _item(user_id, 503, {"error": "ownership is moving between workers"})
            else:
                remote.setdefault(owner, []).append(user_id)
        shares = await asyncio.gather(*(self._ask(request, where, share) for where, share in remote.items()))
        for share in shares:
            answers.update(share)
        body = {"results": [answers[user_id] for user_id in users]}
        return self.bytes(orjson.dumps(body), content_type="application/json")

    async def _ask(self, request: Request, owner: URL, users: list[str]) -> dict[str, Any]:
        """One owner's share of the batch, from that owner."""
        query: list[tuple[str, str]] = [("user_id", u) for u in users]
        if "at" in request.query:
            query.append(("at", request.query["at"]))
        url = peer_url(owner, request).with_query(query)
        try:
            async with app.http_client.get(
                url,
                headers=peer_headers(),
                ssl=access.peer_ssl,
                timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_S),
            ) as response:
                if response.status in REFUSED:
                    log.warning("owner %s refused this worker's HTTP_PEER_TOKEN (%s)", owner, response.status)
                    return {u: _item(u, 503, {"error": REFUSED_ERROR}) for u in users}
                body = await response.json(loads=orjson.loads)
                if response.status == 200:
                    return {item["user_id"]: item for item in body["results"]}
                error = {"error": str(body.get("error", f"owner answered {response.status}"))}
                status = response.status if response.status in (400, 503) else 503
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.warning("owner %s of a batched lookup did not answer: %s", owner, exc)
            error, status = {"error": "the worker owning this user did not answer"}, 503
        return {u: _item(u, status, error) for u in users}


@app.page("/health")
class HealthView(View):
    async def get(self, request: Request) -> Response:
        return self.json({"status": "ok"})


@app.page("/ready")
class ReadyView(View):
    async def get(self, request: Request) -> Response:
        if is_ready():
            return self.json({"status": "ready", "partitions": owned_partitions()})
        return _error(self, 503, "not ready: waiting for partitions or table recovery", retry=True)


@app.page("/metrics")
class MetricsView(View):
    """Prometheus text format, this worker's own partitions."""

    async def get(self, request: Request) -> Response:
        return self.bytes(app.metrics.prometheus_text(), content_type="text/plain; version=0.0.4")


@app.page("/stats")
class StatsView(View):
    """``/stats``: the cluster view gathered from every worker; ``?scope=worker``: this worker only."""

    async def get(self, request: Request) -> Response:
        scope = request.query.get("scope", "cluster")
        if scope == "worker":
            return self.bytes(orjson.dumps(await local_stats()), content_type="application/json")
        if scope != "cluster":
            return _error(self, 400, "scope must be 'cluster' or 'worker'")
        body = await cluster_stats()
        body["history"] = list(app.metrics.history)  # this worker's, for the page's first paint
        return self.bytes(orjson.dumps(body), content_type="application/json")


STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css"}
STATIC_FILES = {
    path.relative_to(STATIC_DIR).as_posix(): (path.read_bytes(), STATIC_TYPES[path.suffix])
    for path in STATIC_DIR.rglob("*")
    if path.suffix in STATIC_TYPES
}


@app.page("/")
class DashboardView(View):
    """The live page (app/static/index.html)."""

    async def get(self, request: Request) -> Response:
        body, content_type = STATIC_FILES["index.html"]
        return self.bytes(body, content_type=content_type)


@app.page("/static/{name:.+}")
class StaticView(View):
    async def get(self, request: Request, name: str) -> Response:
        found = STATIC_FILES.get(name)
        if found is None:
            return _error(self, 404, "no such file")
        return self.bytes(found[0], content_type=found[1], headers={"Cache-Control": "max-age=300"})
