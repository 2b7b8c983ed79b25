"""The gateway: a pure-ASGI reverse proxy in front of a model API that logs every answered row.

Pure ASGI rather than FastAPI routes on the proxy path: routing and request objects cost CPU on every
call, and the hop's CPU is what limits throughput on a small machine (``bench/gateway.py``). The
upstream client is one pooled ``aiohttp.ClientSession`` (0.17 ms CPU per request against httpx's 0.86
ms on these machines, docs/design.md "Measured on these machines").

Per request: declared length (413) → API key → client (401) → content type (415) → read the body (413 over
the limit; read only once the key is known, so an anonymous client cannot make the gateway buffer a
megabyte) → policy (403 blocked, 429 quota/rate, 503 if the query log cannot take the rows) → parse and
validate the rows (400) → forward the original bytes with allow-listed headers only → parse the answer →
answer watermark and output policy → answer → queue the log entry.
"""

from __future__ import annotations

import asyncio
import faulthandler
import itertools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.core import protocols
from services.core.policy import apply_policy
from services.core.records import OutputKind, Protocol
from services.core.settings import Settings
from services.gateway import routing
from services.gateway.answer_mark import AnswerMarker
from services.gateway.clientcache import ClientCache
from services.gateway.metrics import GatewayMetrics
from services.gateway.querylog import AnsweredRequest, QueryLogWriter
from services.gateway.source import SourceNetworks

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# RFC 9110 §7.6.1 connection-specific headers, plus what the gateway itself sets or consumes.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"authorization",
        b"x-api-key",
        b"content-encoding",
    }
)
JSON_HEADERS = [(b"content-type", b"application/json")]
# Request headers that reach the upstream (an allow-list: anything else a client sends, such as ``Forwarded``,
# ``X-Forwarded-*``, cookies or headers named by ``Connection``, could make the model API trust the client).
# ``content-type`` is set from the validated value, ``x-request-id`` and ``x-forwarded-for`` by the gateway.
FORWARD_HEADERS = frozenset({b"accept", b"user-agent", b"traceparent", b"tracestate"})


@dataclass(slots=True)
class _Admitted:
    """A request that passed every check, with what forwarding and logging it need."""

    client_id: str
    request_id: str
    received_at: float
    body: bytes
    rows: np.ndarray
    policy: Any
    headers: dict[str, str]  # to the upstream: allow-listed, plus content type and request id
    network: str  # the source network (services/gateway/source.py), recorded for the cross-client test


class _Refused(Exception):
    """A step of the proxy path refuses the request: the client gets ``status`` and ``reason``."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(slots=True)
class _Headers:
    """What the proxy path reads from a request's headers."""

    api_key: str | None = None
    content_type: bytes | None = None
    request_id: str | None = None
    connection_named: set[bytes] = field(default_factory=set)  # named by ``Connection``: not forwarded


@dataclass(frozen=True, slots=True)
class _Upstream:
    """The upstream model API's answer."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]  # without hop-by-hop headers
    seconds: float


@dataclass(frozen=True, slots=True)
class _Served:
    """The answer as the client gets it, with what the query log records of it."""

    outputs: np.ndarray | None  # [n, k] as served; None when the upstream's answer held no readable outputs
    kind: OutputKind
    body: bytes
    policy: str  # the policy that changed the answer; "none" when it went out as the upstream gave it
    marks: list[str] | None  # per row, the answer watermark served

    @staticmethod
    def unchanged(body: bytes) -> _Served:
        return _Served(None, "none", body, "none", None)


class Gateway:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.upstream = settings.gateway_upstream_url.rstrip("/")
        self.instance = settings.instance_id
        self._request_ids = itertools.count(1)
        self._rng = np.random.default_rng()  # noise policy: must not be predictable by clients
        self.forward_headers = FORWARD_HEADERS | {
            h.strip().lower().encode("latin-1") for h in settings.gateway_forward_extra_headers
        }
        self.sources = SourceNetworks(
            settings.gateway_trusted_proxies,
            settings.gateway_client_ip_header,
            settings.gateway_source_ipv4_prefix,
            settings.gateway_source_ipv6_prefix,
        )
        self.session: aiohttp.ClientSession | None = None
        self.redis: aioredis.Redis | None = None
        self.querylog: QueryLogWriter | None = None
        self.clients: ClientCache | None = None
        self.marker: AnswerMarker | None = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        s = self.settings
        # `kill -USR1 <pid>` writes every thread's stack to stderr: what a gateway that does not stop is doing.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.marker = AnswerMarker(s, self.metrics) if s.answer_watermark_mode != "off" else None
        # Fail fast on a dead Redis instead of retrying inside the flusher: the spill file takes over.
        self.redis = aioredis.Redis.from_url(
            s.redis_url, socket_connect_timeout=0.5, socket_timeout=2.0, retry=Retry(NoBackoff(), 0)
        )
        self.clients = ClientCache(self.redis, refresh_s=s.gateway_client_refresh_s)
        await self.clients.start()
        self.querylog = QueryLogWriter(
            self.redis,
            stream=s.queries_stream,
            instance=self.instance,
            spill_dir=s.data_dir / "spill",
            metrics=self.metrics,
            buffer_max=s.gateway_log_buffer_max,
            batch_max=s.gateway_log_batch_max,
            flush_interval_s=s.gateway_log_flush_interval_s,
            retry_s=s.gateway_redis_retry_s,
            fail_open=s.gateway_log_fail_open,
            stream_maxlen=s.queries_stream_maxlen,  # approximate: a memory ceiling the archiver stays far below
            journal_retain_s=s.gateway_journal_retain_s,
        )
        await self.querylog.start()
        # Pool sized above any sane client concurrency; keep-alive avoids a TCP handshake per call.
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=s.gateway_connect_timeout_s, sock_read=s.gateway_read_timeout_s
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        self._started = True
        log.info("gateway %s fronting %s", self.instance, self.upstream)

    async def shutdown(self) -> None:
        """Each step bounded: a stop must end within the orchestrator's grace period (compose: 40 s, with
        uvicorn's 10 s for open connections before this), even if a Redis connection hangs on close, which
        redis-py's asyncio client can do. The query log's own drain stops after 10 s and spills the rest."""
        if self.querylog is not None:
            # 15 s: its own 10 s deadline plus one write (the Redis socket timeout is 2 s).
            if not await _bounded(self.querylog.stop(), 15.0, "query-log drain"):
                self.querylog.abandon()
        if self.clients is not None:
            await _bounded(self.clients.stop(), 2.0, "client-usage push")
        if self.session is not None:
            await _bounded(self.session.close(), 2.0, "upstream session close")
        if self.redis is not None:
            await _bounded(self.redis.aclose(), 2.0, "Redis close")

    # ------------------------------------------------------------------ ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            found = routing.route(method, path, scope.get("raw_path"), self.settings.gateway_generic_route)
        except routing.BadPath as exc:
            await _error(send, 400, str(exc))
            return
        if found is None:
            await _error(send, 404, f"no route for {method} {path}")
            return
        if found.kind in ("oip-v2", "kserve-v1", "generic"):
            await self._proxy(scope, receive, send, found.kind, found.model, found.upstream_path)  # type: ignore[arg-type]
        elif found.kind == "metrics":
            await _respond(send, 200, generate_latest(self.registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())])
        elif found.kind == "healthz":
            ql = self.querylog
            body = {"status": "ok", "instance": self.instance, "querylog_buffer_rows": ql.buffered_rows if ql else None}
            await _respond(send, 200, orjson.dumps(body), JSON_HEADERS)
        else:
            await self._passthrough(scope, send, found.upstream_path, authenticate=found.kind == "passthrough")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ the proxy path
    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, protocol: Protocol, model: str, upstream_path: str
    ) -> None:
        t0 = time.perf_counter()
        status = await self._proxy_inner(scope, receive, send, protocol, model, upstream_path)
        self.metrics.requests.labels(protocol, f"{status // 100}xx").inc()
        self.metrics.request_duration.labels(protocol).observe(time.perf_counter() - t0)

    async def _proxy_inner(
        self, scope: Scope, receive: Receive, send: Send, protocol: Protocol, model: str, upstream_path: str
    ) -> int:
        """Admit the request, forward it, apply the watermark and policy, answer, log. A step that refuses raises
        ``_Refused``; the client then gets its status and reason, and nothing is forwarded or logged."""
        try:
            request = await self._admit(scope, receive, protocol, model)
            upstream = await self._forward(scope, request, upstream_path)
        except _Refused as refusal:
            return await _error(send, refusal.status, refusal.reason, refusal.headers)
        self.metrics.upstream_duration.labels(protocol).observe(upstream.seconds)
        served = _Served.unchanged(upstream.body)
        if upstream.status == 200:
            served = self._serve(upstream.body, protocol, request.rows, request.policy)
        await _respond(send, upstream.status, served.body, upstream.headers)
        self.metrics.rows.inc(len(request.rows))
        # Only answered queries teach the client something; errors are counted, not logged as queries.
        if upstream.status == 200:
            self._log(request, model, protocol, upstream, served)
        return upstream.status

    async def _admit(self, scope: Scope, receive: Receive, protocol: Protocol, model: str) -> _Admitted:
        """Headers (declared length 413) → API key (401) → content type (415) → body (413) → rows (400) →
        policy (403, 429) → room in the query log (503). The admitted request, or ``_Refused``."""
        headers = scope["headers"]
        found = _read_headers(headers, self.settings.gateway_max_body_bytes)
        client_id = await self._authorise(found.api_key)
        content_type = _json_content_type(found.content_type)
        body, rows = await self._read_rows(receive, protocol, model)
        policy, now = self._check_policy(client_id, len(rows))
        request_id = found.request_id
        if request_id is None:
            request_id = f"{self.instance}-{next(self._request_ids)}"
        allowed = self.forward_headers - found.connection_named
        fwd_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in allowed}
        fwd_headers["content-type"] = content_type.decode("latin-1")
        fwd_headers["x-request-id"] = request_id
        peer = scope.get("client")
        network = self.sources.source(peer[0] if peer else None, headers)
        return _Admitted(client_id, request_id, now, body, rows, policy, fwd_headers, network)

    async def _authorise(self, api_key: str | None) -> str:
        """The client the API key belongs to (401 without a key, or with an unknown or revoked one)."""
        assert self.clients is not None
        if not api_key:
            raise _Refused(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        client_id = await self.clients.client_for_key(api_key)
        if client_id is None:
            raise _Refused(401, "unknown or revoked API key")
        return client_id

    async def _read_rows(self, receive: Receive, protocol: Protocol, model: str) -> tuple[bytes, np.ndarray]:
        """The body and its validated rows: within the size limit (413), valid rows (400)."""
        limit = self.settings.gateway_max_body_bytes
        body = await _read_body(receive, limit)
        if body is None:
            raise _Refused(413, f"request body over the limit of {limit} bytes")
        try:
            return body, self._rows(body, protocol, model)
        except protocols.BadRequest as exc:
            raise _Refused(400, str(exc)) from None

    def _check_policy(self, client_id: str, n: int) -> tuple[Any, float]:
        """The client's policy and the admission time, once the policy (403 blocked, 429 quota or rate) and the
        query log (503 when full and failing closed) take ``n`` more rows."""
        assert self.clients is not None and self.querylog is not None
        policy = self.clients.policy_for(client_id)
        if policy.blocked:
            raise _Refused(403, "client blocked by policy" + (f": {policy.reason}" if policy.reason else ""))
        now = time.time()
        refusal = self.clients.admit(client_id, policy, n, now)
        if refusal is not None:
            raise _Refused(429, refusal)
        if not self.querylog.has_room(n) and not self.settings.gateway_log_fail_open:
            raise _Refused(503, "query log buffer full; retry later", [(b"retry-after", b"1")])
        return policy, now

    def _rows(self, body: bytes, protocol: Protocol, model: str) -> np.ndarray:
        """The request's rows, validated (``protocols.BadRequest`` with the reason)."""
        s = self.settings
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise protocols.BadRequest(f"malformed JSON ({exc.msg}; NaN and Infinity are not valid JSON)") from None
        if protocol == "oip-v2":
            rows = protocols.oip_rows(parsed, s.gateway_input_dim)
        elif protocol == "kserve-v1":
            rows = protocols.kserve_rows(parsed, s.gateway_input_dim)
        else:
            rows = protocols.generic_rows(parsed, s.gateway_generic_input_path, s.gateway_input_dim)
        input_range = s.gateway_input_ranges.get(model) or s.gateway_input_ranges.get("*")
        if input_range is not None:
            protocols.check_range(rows, input_range[0], input_range[1], model)
        return rows

    async def _forward(self, scope: Scope, request: _Admitted, upstream_path: str) -> _Upstream:
        """The upstream's answer, or ``_Refused`` (504 on a timeout, 502 when unreachable)."""
        assert self.session is not None
        headers = request.headers
        client_addr = scope.get("client")
        if client_addr:  # the peer this gateway saw; a client's own X-Forwarded-For is never passed on
            headers["x-forwarded-for"] = client_addr[0]
        # Written from the parsed route, never the client's raw path (services/gateway/routing.py).
        url = self.upstream + upstream_path
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        t_up = time.perf_counter()
        try:
            async with self.session.post(url, data=request.body, headers=headers) as resp:
                up_body = await resp.read()
                up_headers = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in HOP_BY_HOP]
                return _Upstream(resp.status, up_body, up_headers, time.perf_counter() - t_up)
        except TimeoutError:
            raise _Refused(504, "upstream model API timed out") from None
        except aiohttp.ClientError as exc:
            raise _Refused(502, f"upstream model API unreachable ({type(exc).__name__})") from None

    def _serve(self, up_body: bytes, protocol: Protocol, rows: np.ndarray, policy: Any) -> _Served:
        """The answer the client gets: the upstream's outputs through the answer watermark or the client's output
        policy, re-encoded only on a change."""
        try:
            answer = orjson.loads(up_body)
        except orjson.JSONDecodeError:
            return _Served.unchanged(up_body)
        index = -1
        if protocol == "oip-v2":
            out, index = protocols.oip_outputs(answer, len(rows))
        elif protocol == "kserve-v1":
            out = protocols.kserve_outputs(answer, len(rows))
        else:
            out = protocols.generic_outputs(answer, self.settings.gateway_generic_output_path, len(rows))
        if out is None:
            return _Served.unchanged(up_body)
        kind = protocols.classify_output(out)
        changed = self._transform(rows, out, kind, policy)
        if changed is None:
            return _Served(out, kind, up_body, "none", None)
        new, new_kind, marks = changed
        if protocol == "oip-v2":
            protocols.oip_write_outputs(answer, index, new)
        elif protocol == "kserve-v1":
            answer["predictions"] = protocols.rows_for_protocol(new)
        else:
            protocols.set_path(answer, self.settings.gateway_generic_output_path, protocols.rows_for_protocol(new))
        return _Served(new.astype(np.float64), new_kind, orjson.dumps(answer), policy.name, marks)

    def _transform(
        self, rows: np.ndarray, out: np.ndarray, kind: OutputKind, policy: Any
    ) -> tuple[np.ndarray, OutputKind, list[str] | None] | None:
        """The outputs with the answer watermark (which applies the client's policy itself) or else the policy
        applied; None when the answer goes out as the upstream gave it."""
        if self.marker is not None and self.marker.applies(policy):
            marked = self.marker.serve(rows, out, kind, policy, self._rng)
            if marked is not None:
                return marked
        if kind != "probabilities" or not policy.transforms_output:
            return None
        return apply_policy(out, policy, self._rng), "label" if policy.label_only else "probabilities", None

    def _log(self, request: _Admitted, model: str, protocol: Protocol, upstream: _Upstream, served: _Served) -> None:
        """Queue the answered request for the query log (off the request path: the flusher writes it)."""
        assert self.querylog is not None
        self.querylog.offer(
            AnsweredRequest(
                request.received_at,
                request.client_id,
                model,
                protocol,
                request.request_id,
                request.rows,
                served.outputs,
                served.kind,
                upstream.status,
                upstream.seconds,
                served.policy,
                served.marks,
                request.network,
            )
        )

    async def _passthrough(self, scope: Scope, send: Send, path: str, authenticate: bool) -> None:
        assert self.session is not None and self.clients is not None
        if authenticate:
            api_key = None
            for name, value in scope["headers"]:
                key = _api_key(name, value)
                if key is not None:
                    api_key = key
            if not api_key or await self.clients.client_for_key(api_key) is None:
                await _error(send, 401, "missing, unknown or revoked API key")
                return
        try:
            async with self.session.get(self.upstream + path) as resp:
                body = await resp.read()
                headers = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in HOP_BY_HOP]
                await _respond(send, resp.status, body, headers)
        except TimeoutError:
            await _error(send, 504, "upstream model API timed out")
        except aiohttp.ClientError as exc:
            await _error(send, 502, f"upstream model API unreachable ({type(exc).__name__})")


async def _bounded(step: Awaitable[Any], timeout_s: float, what: str) -> bool:
    """Await ``step`` for at most ``timeout_s``; False (and a warning) when it had to be cancelled."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.warning("shutdown: %s did not finish within %.0f s; going on", what, timeout_s)
        return False
    except Exception as exc:  # a failing close must not keep the other steps from running
        log.warning("shutdown: %s failed (%s); going on", what, type(exc).__name__)
        return False
    return True


def _read_headers(headers: list[tuple[bytes, bytes]], max_body_bytes: int) -> _Headers:
    """The headers the proxy path uses (400 on an unreadable Content-Length, 413 when it declares a body over
    the limit)."""
    found = _Headers()
    content_length = -1
    for name, value in headers:
        if name in (b"authorization", b"x-api-key"):
            key = _api_key(name, value)
            if key is not None:  # an empty key counts (and is refused): the last key header wins
                found.api_key = key
        elif name == b"content-type":
            found.content_type = value
        elif name == b"x-request-id":
            found.request_id = value.decode("latin-1")[:128]
        elif name == b"connection":  # RFC 9110 §7.6.1: the headers it names are for this hop only
            found.connection_named.update(t.strip().lower() for t in value.split(b","))
        elif name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                raise _Refused(400, "invalid Content-Length") from None
    if content_length > max_body_bytes:
        raise _Refused(413, f"request body over the limit of {max_body_bytes} bytes")
    return found


def _json_content_type(content_type: bytes | None) -> bytes:
    """The request's Content-Type when it is JSON (415 otherwise)."""
    if content_type is None or not content_type.split(b";")[0].strip().lower().endswith(b"json"):
        raise _Refused(415, "Content-Type must be application/json")
    return content_type


def _api_key(name: bytes, value: bytes) -> str | None:
    """The API key this header carries (``Authorization: Bearer <key>`` or ``X-API-Key``), if any."""
    if name == b"authorization":
        return value[7:].strip().decode("latin-1") if value[:7].lower() == b"bearer " else None
    if name == b"x-api-key":
        return value.strip().decode("latin-1")
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, reason: str, extra: list[tuple[bytes, bytes]] | None = None) -> int:
    await _respond(send, status, orjson.dumps({"error": reason}), JSON_HEADERS + (extra or []))
    return status


def create_app(settings: Settings | None = None) -> Gateway:
    from services.core.settings import get_settings

    return Gateway(settings or get_settings())
