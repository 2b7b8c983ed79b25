"""The ``modelcustody`` command line: servers, the demo, detector baselines; operator actions through the admin
API (``services.cli_ops``: clients, alerts, audits, webhooks; ``tokens`` bootstraps through Redis) and the
owner's audit side (``services.cli_audit``). Heavy modules (torch, scikit-learn, Celery) are imported inside
the commands that need them, so a gateway-only install runs ``modelcustody serve gateway``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from services import cli_audit, cli_ops
from services.core.settings import get_settings
from services.core.version import __version__

app = typer.Typer(help="Model Custody: guard a model's prediction API against extraction.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelcustody {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """Model Custody: guard a model's prediction API against extraction."""


serve_app = typer.Typer(help="Run a component in the foreground.", no_args_is_help=True)
app.add_typer(cli_ops.clients_app, name="clients")
app.add_typer(cli_ops.alerts_app, name="alerts")
app.add_typer(cli_ops.webhooks_app, name="webhooks")
app.add_typer(cli_ops.tokens_app, name="tokens")
app.add_typer(serve_app, name="serve")
detector_app = typer.Typer(help="The extraction detector's baselines.", no_args_is_help=True)
app.add_typer(detector_app, name="detector")
app.add_typer(cli_audit.watermark_app, name="watermark")
app.add_typer(cli_audit.protect_app, name="protect")
app.add_typer(cli_audit.audit_app, name="audit")
app.add_typer(cli_audit.report_app, name="report")
cli_audit.audit_app.command("list")(cli_ops.audit_list)
cli_audit.audit_app.command("cancel")(cli_ops.audit_cancel)
serve_app.command("api")(cli_audit.serve_api)
serve_app.command("worker")(cli_audit.serve_worker)


def _run_uvicorn(factory: str, host: str, port: int) -> None:
    import uvicorn

    # proxy_headers=False: uvicorn would otherwise replace the peer address with a loopback client's own
    # X-Forwarded-For, and the gateway's X-Forwarded-For and the API's per-source rate limit key on the peer.
    uvicorn.run(
        factory, factory=True, host=host, port=port, loop="uvloop", http="httptools", access_log=False,
        log_level="info", proxy_headers=False,
        # Bounded, as in the tests' servers: a client holding a connection open cannot delay a stop forever.
        timeout_graceful_shutdown=10,
    )


@serve_app.command("gateway")
def serve_gateway(host: str = "127.0.0.1", port: int = 8080) -> None:
    """The query-logging gateway (upstream: MODELCUSTODY_GATEWAY_UPSTREAM_URL)."""
    _run_uvicorn("services.gateway.app:create_app", host, port)


@serve_app.command("signer")
def serve_signer(host: str = "127.0.0.1", port: int = 8090) -> None:
    """The signer: the only process that reads the signing key; signs statements for holders of
    MODELCUSTODY_SIGNER_TOKEN (workers, the API, the CLI point MODELCUSTODY_SIGNER_URL at it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _run_uvicorn("services.signer.app:create_app", host, port)


@serve_app.command("archiver")
def serve_archiver() -> None:
    """The query-log archiver: hash-chained segments under MODELCUSTODY_ARCHIVE_DIR, then trims the stream."""
    from services.archiver.service import run_archiver

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_archiver(get_settings())


archive_app = typer.Typer(help="The query-log archive on disk.", no_args_is_help=True)
app.add_typer(archive_app, name="archive")


@archive_app.command("verify")
def archive_verify(
    directory: Path | None = typer.Argument(None, help="archive directory (default: MODELCUSTODY_ARCHIVE_DIR)"),
    expect_head: str | None = typer.Option(None, help="the head hash published earlier (mc:archive:head)"),
) -> None:
    """Recompute the hash chain of every segment: exit 0 intact, 1 on any altered, missing or reordered record."""
    import orjson

    from services.core.archive import verify_archive

    result = verify_archive(directory or get_settings().archive_path, expect_head=expect_head)
    typer.echo(orjson.dumps({"ok": result.ok, "segments": result.segments, "records": result.records,
                             "first_segment": result.first_segment, "head": result.head,
                             "problems": result.problems}, option=orjson.OPT_INDENT_2).decode())
    raise typer.Exit(0 if result.ok else 1)


@serve_app.command("model-server")
def serve_model_server(host: str = "127.0.0.1", port: int = 8081) -> None:
    """The demo model server (digits classifiers over OIP v2 and KServe v1)."""
    _run_uvicorn("services.demo.model_server.app:create_app", host, port)


@serve_app.command("detector")
def serve_detector() -> None:
    """A detector process: consumes the query log, raises alerts, serves metrics (MODELCUSTODY_DETECTOR_*)."""
    from services.detector.service.main import run_detector

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if settings.env == "prod":
        # A production detector must be told its model's baseline; the demo's digits models are no fallback.
        run_detector(settings)
        return
    from services.demo.baseline import demo_engines, resolve_demo_reference

    run_detector(
        settings,
        fallback=lambda: demo_engines(settings.data_dir / "detector" / "baseline"),
        resolve_reference=resolve_demo_reference,
    )


@detector_app.command("fit")
def detector_fit(
    out: Path = typer.Argument(..., help="baseline directory (then set MODELCUSTODY_DETECTOR_REFERENCE_PATH)"),
    model: list[str] = typer.Option(["digits-mlp"], help="demo model(s), or the served model's name with --reference"),
    reference: Path | None = typer.Option(
        None,
        help="owner's reference set: .npz with 'x' and 'probabilities' or 'labels' (or use --upstream), "
        "optionally 'daily_volumes' (benign clients' queries per day: enables the volume test)",
    ),
    upstream: str | None = typer.Option(
        None, help="model API to ask for the reference probabilities (not the gateway)"
    ),
    protocol: str = typer.Option("oip-v2", help="the upstream's protocol: oip-v2, kserve-v1"),
    token_env: str | None = typer.Option(None, help="environment variable holding the upstream's bearer token"),
    seed: int = 0,
) -> None:
    """Fit detector baselines and save them (JSON + npz, no pickle).

    Without --reference: the demo models, on their reference digits. With --reference: one model (--model NAME)
    on the owner's held-out reference inputs, in the gateway's input space, never sent by any client.
    """
    from services.demo.baseline import fit_demo_engine, save_demo_engine
    from services.detector.service.runtime import (
        fit_reference_engine,
        read_reference_set,
        reference_outputs_from_upstream,
        save_engine,
    )

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(2)

    from rich.console import Console

    # A spinner on standard error: fitting calibrates on simulated clients and takes tens of seconds per model;
    # the fitters report no fraction done, so a bar would be a guess.
    status = Console(stderr=True).status
    fitted = []
    try:
        if reference is None:
            for name in model:
                with status(f"fitting the {name} baseline (simulating benign clients)…"):
                    engine = fit_demo_engine(name, seed)
                save_demo_engine(engine, out / name, name)
                fitted.append((name, engine))
        else:
            if len(model) != 1:
                raise fail("with --reference, name exactly one model (--model NAME)")
            x, outputs, labels, volumes = read_reference_set(reference)
            if outputs is None and labels is None and upstream is not None:
                token = os.environ.get(token_env) if token_env else None
                outputs = reference_outputs_from_upstream(x, upstream, model[0], protocol, token)
            with status(f"fitting the {model[0]} baseline on {len(x)} reference rows…"):
                engine = fit_reference_engine(x, outputs, labels, daily_volumes=volumes, seed=seed)
            save_engine(engine, out / model[0])
            fitted.append((model[0], engine))
    except ValueError as exc:
        raise fail(str(exc)) from None
    for name, engine in fitted:
        th = engine.thresholds
        assert th is not None
        signals = ", ".join(engine.signal_names)
        typer.echo(
            f"{name}: signals {signals}; alert at risk score {th.alert:.2f}, high at {th.high:.2f} → {out / name}"
        )


@app.command()
def demo(rows_per_client: int = typer.Option(300, help="query rows each benign client sends")) -> None:
    """Run the whole stack on embedded defaults, send traffic, report what was logged, shut down."""
    from services.demo.run import run_demo

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MODELCUSTODY_ENV", "demo")
    sys.exit(run_demo(rows_per_client=rows_per_client))


if __name__ == "__main__":
    app()
