"""The operator's side of the ``modelcustody`` command: a client of the admin API.

``clients``, ``alerts``, ``audit list|cancel`` and ``webhooks`` send HTTP requests to the admin API
(``--api`` / ``MODELCUSTODY_API_URL``, ``--token`` / ``MODELCUSTODY_ADMIN_TOKEN``), so they work from any
machine that reaches the API and every change is recorded under the token's name. ``tokens`` is the one
bootstrap group that talks to Redis directly (``MODELCUSTODY_REDIS_URL``): it creates the tokens the API
then accepts.

Output: ``-o table`` (default, for people) or ``-o json`` (for scripts: the API's JSON, unchanged).

Exit codes (docs/operations.md, "CLI exit codes"):
  0 success; 1 the API refused the request (4xx other than 401/403; an audit that failed);
  2 wrong usage or unreadable local input; 3 the API or its Redis is unreachable (connection refused,
  timeout, 5xx); 4 not authenticated or not allowed (401/403).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer

API_OPTION = typer.Option("http://127.0.0.1:8000", "--api", envvar="MODELCUSTODY_API_URL", help="admin API URL")
TOKEN_OPTION = typer.Option("", "--token", envvar="MODELCUSTODY_ADMIN_TOKEN", help="admin API token")

EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_AUTH = 1, 2, 3, 4


class Output(StrEnum):
    table = "table"
    json = "json"


OUTPUT_OPTION = typer.Option(Output.table, "-o", "--output", help="table for people, json for scripts")

clients_app = typer.Typer(help="Clients of the gateway: keys, policies, usage (through the admin API).",
                          no_args_is_help=True)
policy_app = typer.Typer(help="A client's output policy.", no_args_is_help=True)
clients_app.add_typer(policy_app, name="policy")
alerts_app = typer.Typer(help="Extraction alerts: list, show, acknowledge, resolve.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook deliveries that failed: inspect and requeue.", no_args_is_help=True)
tokens_app = typer.Typer(help="Scoped admin-API tokens (bootstrap: talks to Redis directly).", no_args_is_help=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


class Api:
    """One admin-API session; every failure becomes a one-line message and a documented exit code."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(30.0))

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise fail(f"cannot reach the admin API at {self.url} (connection refused or no route)",
                       EXIT_UNAVAILABLE) from None
        except httpx.TimeoutException:
            raise fail(f"the admin API at {self.url} did not answer in time", EXIT_UNAVAILABLE) from None
        except httpx.HTTPError as exc:
            raise fail(f"request to {self.url} failed: {type(exc).__name__}", EXIT_UNAVAILABLE) from None
        if response.status_code >= 400:
            raise fail(_problem_text(response), _exit_code(response.status_code))
        return response.json()


def _problem_text(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if isinstance(body, dict) and "type" in body:
        kind = str(body["type"]).rsplit(":", 1)[-1]
        return f"{body.get('detail', '')} ({response.status_code} {kind})"
    return f"HTTP {response.status_code}: {body}"


def _exit_code(status: int) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    return EXIT_UNAVAILABLE if status >= 500 else EXIT_REFUSED


def emit(data: Any, output: Output, columns: list[str] | None = None, title: str | None = None) -> None:
    """JSON as the API gave it, or a table of ``columns`` (a record is a one-row table)."""
    if output is Output.json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    rows = data if isinstance(data, list) else [data]
    cols = columns or (sorted(rows[0]) if rows else [])
    table = Table(title=title, show_lines=False)
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*[_cell(_dig(row, col)) for col in cols])
    Console(width=200).print(table)


def _dig(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if value < 1e9 else _when(value)
    if isinstance(value, list | dict):
        return ",".join(map(str, value)) if isinstance(value, list) else json.dumps(value, sort_keys=True)
    return str(value)


def _when(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


# --- clients -------------------------------------------------------------------------------------------

CLIENT_COLUMNS = ["id", "revoked", "key_hint", "created_at", "policy.label_only", "policy.daily_quota",
                  "policy.rate_per_s", "policy.blocked"]


@clients_app.command("add")
def clients_add(name: str, api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Create a client; prints its API key once (stored only as a hash)."""
    with Api(api, token) as client:
        created = client.call("POST", "/v1/clients", json={"name": name})
    if output is Output.json:
        emit(created, output)
        return
    typer.echo(f"client: {created['client']['id']}")
    typer.echo(f"api key (shown once, store it now): {created['api_key']}")


@clients_app.command("list")
def clients_list(api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Clients with their status and policy (never their keys)."""
    with Api(api, token) as client:
        emit(client.call("GET", "/v1/clients"), output, CLIENT_COLUMNS)


@clients_app.command("show")
def clients_show(name: str, api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """One client, with today's usage against its quota."""
    with Api(api, token) as client:
        data = {**client.call("GET", f"/v1/clients/{name}"), "usage": client.call("GET", f"/v1/clients/{name}/usage")}
    emit(data, output, [*CLIENT_COLUMNS, "usage.used", "usage.remaining"])


@clients_app.command("revoke")
def clients_revoke(name: str, api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Revoke a client's key; the gateways refuse it within one refresh interval."""
    with Api(api, token) as client:
        emit(client.call("POST", f"/v1/clients/{name}/revoke"), output, CLIENT_COLUMNS)


@clients_app.command("rotate-key")
def clients_rotate(name: str, api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """A new key for the client (shown once); the old one stops working within one refresh interval."""
    with Api(api, token) as client:
        rotated = client.call("POST", f"/v1/clients/{name}/rotate-key")
    if output is Output.json:
        emit(rotated, output)
        return
    typer.echo(f"new api key for {name} (shown once, store it now): {rotated['api_key']}")


POLICY_COLUMNS = ["label_only", "round_decimals", "top_k", "noise_sigma", "daily_quota", "rate_per_s", "blocked",
                  "reason"]


@policy_app.command("show")
def policy_show(name: str, api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """The client's current output policy."""
    with Api(api, token) as client:
        emit(client.call("GET", f"/v1/clients/{name}/policy"), output, POLICY_COLUMNS)


@policy_app.command("set")
def policy_set(
    name: str,
    label_only: bool = typer.Option(False, help="answer with the class label only"),
    round_decimals: int | None = typer.Option(None, help="round probabilities to k decimals"),
    top_k: int | None = typer.Option(None, help="only the k largest probabilities"),
    noise_sigma: float = typer.Option(0.0, help="Gaussian noise on probabilities"),
    daily_quota: int | None = typer.Option(None, help="rows per UTC day"),
    rate_per_s: float | None = typer.Option(None, help="rows per second"),
    blocked: bool = typer.Option(False, help="refuse every request"),
    reason: str = typer.Option("set by operator", help="why (kept in the policy and its history)"),
    api: str = API_OPTION,
    token: str = TOKEN_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Replace the client's output policy (options left out take their defaults)."""
    body = {"label_only": label_only, "round_decimals": round_decimals, "top_k": top_k, "noise_sigma": noise_sigma,
            "daily_quota": daily_quota, "rate_per_s": rate_per_s, "blocked": blocked, "reason": reason}
    with Api(api, token) as client:
        emit(client.call("PUT", f"/v1/clients/{name}/policy", json=body), output, POLICY_COLUMNS)


@policy_app.command("history")
def policy_history(name: str, api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Operators' policy changes, newest first: when, who, what."""
    with Api(api, token) as client:
        emit(client.call("GET", f"/v1/clients/{name}/policy/history"), output,
             ["at", "by", "policy.label_only", "policy.daily_quota", "policy.rate_per_s", "policy.blocked",
              "policy.reason"])


# --- alerts --------------------------------------------------------------------------------------------

ALERT_COLUMNS = ["id", "client_id", "status", "severity", "risk_score", "fired_signals", "opened_at", "detections"]


@alerts_app.command("list")
def alerts_list(
    status: str | None = typer.Option(None, help="open, acknowledged or resolved"),
    client_id: str | None = typer.Option(None, "--client", help="only this client's alerts"),
    severity: str | None = typer.Option(None, help="medium or high"),
    limit: int = typer.Option(50, help="alerts per page"),
    all_pages: bool = typer.Option(False, "--all", help="follow the cursor to the last page"),
    api: str = API_OPTION,
    token: str = TOKEN_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Alerts, newest first."""
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("status", status), ("client_id", client_id), ("severity", severity)):
        if value:
            params[key] = value
    items: list[Any] = []
    with Api(api, token) as client:
        while True:
            page = client.call("GET", "/v1/alerts", params=params)
            items += page["items"]
            if not all_pages or not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
    emit(items, output, ALERT_COLUMNS)


@alerts_app.command("show")
def alerts_show(
    alert_id: str, api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION,
) -> None:
    """One alert with its signals and history (-o json for the evidence)."""
    with Api(api, token) as client:
        emit(client.call("GET", f"/v1/alerts/{alert_id}"), output, [*ALERT_COLUMNS, "model", "history"])


def _transition(alert_id: str, action: str, note: str, api: str, token: str, output: Output) -> None:
    with Api(api, token) as client:
        emit(client.call("POST", f"/v1/alerts/{alert_id}/{action}", json={"note": note}), output, ALERT_COLUMNS)


@alerts_app.command("ack")
def alerts_ack(alert_id: str, note: str = typer.Option("", help="a note kept in the alert's history"),
               api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Acknowledge an alert (recorded under your token's name)."""
    _transition(alert_id, "ack", note, api, token, output)


@alerts_app.command("resolve")
def alerts_resolve(alert_id: str, note: str = typer.Option("", help="a note kept in the alert's history"),
                   api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Resolve an alert; the client's next detection opens a new one."""
    _transition(alert_id, "resolve", note, api, token, output)


# --- audits (registered on the `audit` group) ----------------------------------------------------------

AUDIT_COLUMNS = ["id", "method", "protected_model", "status", "progress", "decision", "created_at", "message"]


def audit_list(
    status: str | None = typer.Option(None, help="queued, running, done, failed or cancelled"),
    limit: int = typer.Option(100, help="the newest this many"),
    api: str = API_OPTION,
    token: str = TOKEN_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Audits, newest first."""
    params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
    with Api(api, token) as client:
        emit(client.call("GET", "/v1/audits", params=params), output, AUDIT_COLUMNS)


def audit_cancel(
    audit_id: str, api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION,
) -> None:
    """Cancel a queued audit, or ask a running one to stop at its next progress update."""
    with Api(api, token) as client:
        emit(client.call("POST", f"/v1/audits/{audit_id}/cancel"), output, AUDIT_COLUMNS)


# --- webhooks ------------------------------------------------------------------------------------------


@webhooks_app.command("dead-letters")
def webhooks_dead_letters(offset: int = 0, limit: int = 50, api: str = API_OPTION, token: str = TOKEN_OPTION,
                          output: Output = OUTPUT_OPTION) -> None:
    """Deliveries the detector gave up on, oldest first."""
    with Api(api, token) as client:
        page = client.call("GET", "/v1/webhooks/dead-letters", params={"offset": offset, "limit": limit})
    if output is Output.json:
        emit(page, output)
        return
    emit(page["items"], output, ["event", "attempts", "payload.id", "payload.client_id"],
         title=f"{page['total']} dead letters")


@webhooks_app.command("requeue")
def webhooks_requeue(limit: int = typer.Option(1000, help="at most this many, oldest first"),
                     api: str = API_OPTION, token: str = TOKEN_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Send dead letters again (attempts reset), once the receiver works."""
    with Api(api, token) as client:
        emit(client.call("POST", "/v1/webhooks/dead-letters/requeue", params={"limit": limit}), output,
             ["requeued", "remaining"])


# --- tokens (bootstrap, Redis) -------------------------------------------------------------------------


def _tokens() -> Any:
    import redis

    from services.core.settings import get_settings
    from services.core.tokens import TokenStore

    url = get_settings().redis_url
    r = redis.Redis.from_url(url)
    try:
        r.ping()
    except redis.RedisError as exc:
        raise fail(f"Redis at {url} unavailable: {type(exc).__name__}", EXIT_UNAVAILABLE) from None
    return TokenStore(r)


@tokens_app.command("create")
def tokens_create(
    name: str = typer.Argument(..., help="who holds it: recorded as the actor of their changes"),
    scope: str = typer.Option(..., help="read, auditor or operator"),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Create a scoped token; prints it once (stored only as its SHA-256)."""
    try:
        principal, token = _tokens().create(name, scope)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if output is Output.json:
        emit({"name": principal.name, "scope": principal.scope, "token": token}, output)
        return
    typer.echo(f"token {principal.name} ({principal.scope}), shown once, store it now: {token}")


@tokens_app.command("list")
def tokens_list(output: Output = OUTPUT_OPTION) -> None:
    """Tokens: name, scope, created, hint (never the token)."""
    rows = [{"name": p.name, "scope": p.scope, "created_at": p.created_at, "hint": p.hint} for p in _tokens().list()]
    emit(rows, output, ["name", "scope", "created_at", "hint"])


@tokens_app.command("revoke")
def tokens_revoke(name: str) -> None:
    """Revoke a token: the API refuses it from the next request."""
    try:
        _tokens().revoke(name)
    except KeyError as exc:
        raise fail(str(exc.args[0]), EXIT_REFUSED) from None
    typer.echo(f"revoked token {name}")
