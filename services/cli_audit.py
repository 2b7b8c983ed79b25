"""The audit side of the ``modelcustody`` command line: watermark, protect, audit, report; serve api/worker.

- ``watermark embed``: EWE on the owner's own model and data (``--data`` with ``--model`` or ``--architecture``),
  or a demo digits model; save the model and its key, report the accuracy cost and the trigger success.
- ``protect register``: register a protected model *synchronously in this process* (a progress bar while
  the reference models train), writing under ``MODELCUSTODY_DATA_DIR`` and indexing it in Redis: the
  operator's path on the server host. Remote owners use ``POST /v1/protected-models`` (run by a worker).
- ``audit submit|status|report``: talk to the admin API (``--api``, ``--token``); ``submit`` waits with a
  progress bar unless ``--no-wait``.
- ``report verify REPORT --public-key KEY``: exit 0 when the signature and the statement check out, 1 when
  they do not (any altered byte), 2 when a file cannot be read.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

watermark_app = typer.Typer(help="Embed an EWE watermark into a model (the owner's side).", no_args_is_help=True)
protect_app = typer.Typer(help="Register protected models (done once, before any dispute).", no_args_is_help=True)
audit_app = typer.Typer(help="Submit ownership audits to the admin API and follow them.", no_args_is_help=True)
report_app = typer.Typer(help="Signed audit reports.", no_args_is_help=True)

API_OPTION = typer.Option("http://127.0.0.1:8000", "--api", envvar="MODELCUSTODY_API_URL", help="admin API URL")
TOKEN_OPTION = typer.Option("", "--token", envvar="MODELCUSTODY_ADMIN_TOKEN", help="admin token")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _parse_params(items: list[str] | None, as_json: str | None) -> dict[str, Any]:
    """``--param k=v`` (values parsed as JSON when they are JSON, else kept as strings) and/or ``--params`` JSON."""
    out: dict[str, Any] = {}
    if as_json:
        try:
            loaded = json.loads(as_json)
        except json.JSONDecodeError as exc:
            raise _fail(f"--params is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise _fail("--params must be a JSON object")
        out.update(loaded)
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise _fail(f"--param takes name=value, got {item!r}")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


# --- watermark -----------------------------------------------------------------------------------------


@watermark_app.command("embed")
def watermark_embed(
    out: Path = typer.Option(..., "--out", help="directory for model.safetensors, model.key.json and the data"),
    data: Path | None = typer.Option(None, "--data", help="the owner's training data (npz: x, y); without it, "
                                     "the digits demo"),
    test_data: Path | None = typer.Option(None, "--test-data", help="the owner's test data (npz: x, y), never "
                                          "trained on: where the accuracy cost is measured (else 10%% of --data)"),
    model: Path | None = typer.Option(None, "--model", help="the owner's trained torch model (safetensors with a "
                                      "registered architecture): fine-tuned with EWE"),
    architecture: str | None = typer.Option(None, help="a registered architecture to train with EWE instead"),
    config: str | None = typer.Option(None, help="JSON config of --architecture, e.g. "
                                      "'{\"input_dim\": 784, \"hidden\": [128, 64], \"num_classes\": 10}'"),
    image_shape: str = typer.Option("8x8", help="HxW of the flat inputs, where the trigger patch goes (MNIST: 28x28)"),
    patch_size: int = typer.Option(2, help="trigger patch side in pixels (MNIST: 4)"),
    seed: int = 0,
    epochs: int = typer.Option(20, help="clean pre-training epochs (EWE's first n; not used when fine-tuning)"),
    watermark_epochs: int | None = typer.Option(None, help="epochs interleaving watermark batches (EWE's second n;"
                                                " default 20, 5 when fine-tuning the owner's model)"),
    trigger_steps: int = typer.Option(10, help="signed-gradient steps that shape the triggers"),
    temperature: float = typer.Option(0.1, help="SNNL temperature (see WatermarkEmbedder)"),
    source_class: int = 1,
    target_class: int = 7,
    export_data: bool = typer.Option(True, help="digits demo: also write reference.npz and di_data.npz"),
    method: str = typer.Option("ewe", help="ewe (trigger inputs) or boundary (the keyed boundary watermark, which "
                               "reaches copies extracted with natural data; needs --model and --test-data)"),
    margin: float = typer.Option(0.8, help="boundary: top-2 margin below which the mark acts at full strength"),
    strength: float | None = typer.Option(None, help="boundary: the keyed logit shift, in units of the margin's "
                                          "gap (default 0.9 rehearsed, 1.1 with --no-rehearse)"),
    cycles_per_std: float = typer.Option(0.25, help="boundary: stripes per standard deviation of the data"),
    rehearse: bool = typer.Option(True, help="boundary: rehearse a clean fine-tuning attack while embedding, so "
                                  "more of the mark survives one (about 5x slower; the setting the benchmark "
                                  "adopted, docs/benchmarks.md)"),
) -> None:
    """Embed a watermark: EWE into the owner's own model (--data with --model, or --architecture) or, without
    --data, into a demo MLP on the owner's half of digits; or (--method boundary) the keyed boundary watermark into
    the owner's trained model. Saves model + secret key and reports the accuracy cost."""
    from audit.watermark_embed import WatermarkEmbedder

    if method not in ("ewe", "boundary"):
        raise _fail(f"--method must be ewe or boundary, got {method!r}")
    if method == "boundary":
        if data is None or model is None or test_data is None:
            raise _fail("--method boundary fine-tunes the owner's trained model: give --data, --model and "
                        "--test-data (held-out rows the model never trained on, for the accuracy cost)")
        _embed_boundary(out, data, test_data, model, seed, margin, strength, cycles_per_std, rehearse)
        return

    try:
        h, w = (int(v) for v in image_shape.lower().split("x"))
        embedder = WatermarkEmbedder(
            seed=seed, epochs=epochs, watermark_epochs=watermark_epochs or (5 if model else 20),
            trigger_steps=trigger_steps, source_class=source_class, target_class=target_class,
            patch_size=patch_size, temperature=temperature, image_shape=(h, w),
            num_classes=max(10, source_class + 1, target_class + 1),
        )
    except ValueError as exc:
        raise _fail(f"bad watermark parameters: {exc}") from None
    if data is None:
        if model is not None or architecture is not None:
            raise _fail("--model/--architecture need the owner's data (--data)")
        _embed_digits_demo(out, embedder, export_data)
        return
    _embed_owner(out, data, test_data, model, architecture, config, (h, w), embedder, seed)


def _embed_owner(
    out: Path, data: Path, test_data: Path | None, model: Path | None, architecture: str | None,
    config: str | None, shape: tuple[int, int], embedder: Any, seed: int,
) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from audit.watermark_owner import embed_owner_model, load_owner_data, save_owner_embedding

    try:
        x, y = load_owner_data(data)
        eval_data = load_owner_data(test_data) if test_data is not None else None
        cfg = json.loads(config) if config else None
        if architecture is not None and not isinstance(cfg, dict):
            raise ValueError("--architecture needs --config (a JSON object)")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task("EWE", total=1.0)

            def progress(fraction: float, message: str) -> None:
                bar.update(task, completed=fraction, description=message)

            result = embed_owner_model(x, y, image_shape=shape, model_path=model, architecture=architecture,
                                       config=cfg, embedder=embedder, eval_data=eval_data, seed=seed,
                                       progress=progress)
    except (ValueError, json.JSONDecodeError, OSError) as exc:
        raise _fail(str(exc)) from None
    model_path, key_path = save_owner_embedding(result, out)
    summary = result.summary()
    (out / "embedding.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    typer.echo(f"model: {model_path}  ({result.mode}; held-out accuracy {result.accuracy_before:.4f} -> "
               f"{result.accuracy_after:.4f}, cost {100 * result.accuracy_cost:+.2f} pp)")
    typer.echo(f"key:   {key_path}  (keep it secret; {summary['key_size']} inputs, trigger success "
               f"{result.trigger_success:.2f}, before the watermark {result.trigger_rate_before:.2f})")
    typer.echo(f"summary: {out / 'embedding.json'}")


def _embed_boundary(
    out: Path, data: Path, test_data: Path, model: Path, seed: int, margin: float, strength: float | None,
    cycles_per_std: float, rehearse: bool = False,
) -> None:
    import secrets

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from audit.architectures import load_model, save_model
    from audit.boundary_watermark import REHEARSED_EMBEDDING, BoundaryEmbedConfig, embed_boundary_watermark
    from audit.watermark_owner import load_owner_data

    try:
        x, y = load_owner_data(data)
        eval_data = load_owner_data(test_data)
        recipe: dict[str, Any] = dict(REHEARSED_EMBEDDING) if rehearse else {}
        if strength is not None:
            recipe["strength"] = strength
        cfg = BoundaryEmbedConfig(margin=margin, cycles_per_std=cycles_per_std, seed=seed, **recipe)
        owner, arch, arch_cfg = load_model(model)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task("boundary watermark", total=1.0)

            def progress(fraction: float, message: str) -> None:
                bar.update(task, completed=fraction, description=message)

            result = embed_boundary_watermark(owner, x, secret=secrets.token_bytes(32), eval_data=eval_data,
                                              config=cfg, progress=progress, y=y)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    model_path = save_model(out / "model.safetensors", result.model, arch, arch_cfg)
    key_path = result.key.save(out / "model.key.json")
    summary = result.summary()
    (out / "embedding.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    typer.echo(f"model: {model_path}  (boundary; held-out accuracy {result.accuracy_before:.4f} -> "
               f"{result.accuracy_after:.4f}, cost {100 * result.accuracy_cost:+.2f} pp, "
               f"{100 * result.labels_changed:.1f} % of held-out labels changed)")
    typer.echo(f"key:   {key_path}  (keep it secret; {summary['key_size']} probes, the model follows the key on "
               f"{result.mark_success:.2f} of them, {result.mark_rate_before:.2f} before)")
    typer.echo(f"summary: {out / 'embedding.json'}")


def _embed_digits_demo(out: Path, embedder: Any, export_data: bool) -> None:
    import numpy as np

    from audit.architectures import predict_labels
    from audit.data import split_digits

    split = split_digits(seed=0)
    result = embedder.fit(split.x_owner, split.y_owner)
    model_path, key_path = result.save(out)
    accuracy = float(np.mean(predict_labels(result.model, split.x_test) == split.y_test))
    wm = float(np.mean(predict_labels(result.model, result.key.inputs) == result.key.target_class))
    typer.echo(f"model: {model_path}  (test accuracy {accuracy:.3f})")
    typer.echo(f"key:   {key_path}  (keep it secret; {len(result.key.inputs)} inputs, success {wm:.2f}, "
               f"fingerprint {result.key.fingerprint()[:16]}…)")
    if export_data:
        # Reference data: the public pool the owner never trained on (for the null models). Dataset inference:
        # the owner's training rows as private, the held-out test quarter as public.
        np.savez(out / "reference.npz", x=split.x_pool, y=split.y_pool)
        np.savez(out / "di_data.npz", x_private=split.x_owner, y_private=split.y_owner,
                 x_public=split.x_test, y_public=split.y_test)
        typer.echo(f"data:  {out / 'reference.npz'}, {out / 'di_data.npz'}")


# --- protect -------------------------------------------------------------------------------------------


def _progress_bar() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    # On stderr: stdout carries only the result (a record as JSON), so it can be piped.
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=False)


@protect_app.command("register")
def protect_register(
    name: str = typer.Option(..., help="a name for the protected model"),
    model: Path | None = typer.Option(None, help="the model file (safetensors, onnx or skops)"),
    model_format: str = typer.Option("safetensors", help="format of --model"),
    architecture: str | None = typer.Option(None, help="registered architecture, when the file does not name it"),
    config: str | None = typer.Option(None, help="architecture config as JSON, when the file does not carry it"),
    endpoint: str | None = typer.Option(None, help="or: the model's endpoint as JSON (url, protocol, model, ...)"),
    watermark_key: Path | None = typer.Option(None, help="the watermark key file"),
    reference_data: Path | None = typer.Option(None, help="npz with x, y the model was NOT trained on"),
    di_data: Path | None = typer.Option(None, help="npz with x_private, y_private, x_public, y_public"),
    null_model: list[Path] | None = typer.Option(None, help="ready-made null model (safetensors); repeatable"),
    param: list[str] | None = typer.Option(None, help="registration parameter name=value; repeatable"),
) -> None:
    """Register synchronously here (trains reference models; progress bar), then index it in Redis."""
    import redis

    from audit.protected import RegistrationConfig, RegistrationInputs, register_protected_model
    from services.core.protected import ProtectedIndex, ProtectedRecord, new_protected_id
    from services.core.settings import get_settings
    from services.core.signer_client import SignerNotConfigured, signer_for
    from services.core.storage import protected_root

    settings = get_settings()
    try:
        inputs = RegistrationInputs(
            name=name, model_path=model, model_format=model_format, architecture=architecture,
            config=json.loads(config) if config else None, endpoint=json.loads(endpoint) if endpoint else None,
            watermark_key_path=watermark_key, reference_data_path=reference_data, di_data_path=di_data,
            null_model_paths=list(null_model or []),
        )
        inputs.validate()
        cfg = RegistrationConfig.from_dict(_parse_params(param, None))
    except (ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    try:
        signer = signer_for(settings)
    except SignerNotConfigured as exc:
        raise _fail(str(exc)) from None
    pm_id = new_protected_id()
    index = ProtectedIndex(redis.Redis.from_url(settings.redis_url))
    spec = {"model_format": model_format, "architecture": architecture, "local": True, "files": {},
            "parameters": cfg.__dict__}
    index.create(ProtectedRecord(id=pm_id, name=name, spec=spec, status="registering", attempts=1))
    try:
        with _progress_bar() as bar:
            task = bar.add_task(f"registering {pm_id}", total=1.0)

            def progress(fraction: float, message: str) -> None:
                bar.update(task, completed=fraction, description=f"{pm_id}: {message}")

            protected = register_protected_model(
                inputs, protected_root(settings), signer, registration_id=pm_id, config=cfg, progress=progress
            )
    except Exception as exc:
        index.update(pm_id, status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=time.time())
        raise _fail(f"registration failed: {exc}", 1) from None
    index.update(pm_id, status="ready", progress=1.0, message="registered", finished_at=time.time(),
                 registered_at=protected.registered_at, registration_sha256=protected.digest,
                 methods=protected.methods())
    typer.echo(f"protected model: {pm_id}")
    typer.echo(f"registered at {protected.registered_at}; registration sha256 {protected.digest}")
    typer.echo(f"methods: {', '.join(protected.methods()) or 'none'}")
    for note in protected.record.get("notes", []):
        typer.echo(f"note: {note}")


@protect_app.command("list")
def protect_list() -> None:
    """Protected models in the Redis index, newest first."""
    import redis

    from services.core.protected import ProtectedIndex
    from services.core.settings import get_settings

    for rec in ProtectedIndex(redis.Redis.from_url(get_settings().redis_url)).list():
        typer.echo(f"{rec.id}\t{rec.status}\t{rec.name}\t{','.join(rec.methods)}\t{rec.registered_at or ''}")


# --- audit ---------------------------------------------------------------------------------------------


def _client(api: str, token: str) -> Any:
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    # Uploads of large models over a slow link: generous write timeout; everything else answers fast.
    return httpx.Client(base_url=api.rstrip("/"), headers=headers, timeout=httpx.Timeout(30.0, write=600.0))


def _check(response: Any) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:500]
        raise _fail(f"HTTP {response.status_code}: {detail}", 1 if response.status_code < 500 else 3)
    return response


def _wait(client: Any, audit_id: str, poll_s: float) -> dict[str, Any]:
    with _progress_bar() as bar:
        task = bar.add_task(audit_id, total=1.0)
        while True:
            record = _check(client.get(f"/v1/audits/{audit_id}")).json()
            bar.update(task, completed=record["progress"],
                       description=f"{audit_id} {record['status']}: {record.get('message', '')}"[:80])
            if record["status"] in ("done", "failed"):
                return dict(record)
            time.sleep(poll_s)


@audit_app.command("submit")
def audit_submit(
    protected: str = typer.Option(..., "--protected", help="protected model id"),
    method: str = typer.Option(
        "watermark", help="watermark, dataset_inference, dataset_inference_mingd or api_watermark"
    ),
    file: Path | None = typer.Option(None, help="the suspect model file"),
    format: str = typer.Option("safetensors", help="format of --file (onnx, safetensors, skops, ...)"),
    architecture: str | None = typer.Option(None, help="architecture for a safetensors file without metadata"),
    config: str | None = typer.Option(None, help="architecture config JSON for such a file"),
    endpoint: str | None = typer.Option(None, help="or: the suspect endpoint's URL"),
    protocol: str = typer.Option("oip-v2", help="endpoint protocol: oip-v2, kserve-v1, generic"),
    model_name: str = typer.Option("", help="endpoint model name"),
    param: list[str] | None = typer.Option(None, help="audit parameter name=value; repeatable"),
    params: str | None = typer.Option(None, help="audit parameters as a JSON object"),
    wait: bool = typer.Option(True, help="wait for the audit with a progress bar"),
    poll: float = typer.Option(0.5, help="seconds between status polls"),
    api: str = API_OPTION,
    token: str = TOKEN_OPTION,
) -> None:
    """Submit an audit; with --wait (default) follow it to the end. Exit 0 done, 1 failed or refused."""
    if (file is None) == (endpoint is None):
        raise _fail("give exactly one of --file or --endpoint")
    parameters = _parse_params(param, params)
    with _client(api, token) as client:
        if file is not None:
            if not file.is_file():
                raise _fail(f"no such file: {file}")
            data = {"method": method, "protected_model": protected, "format": format, "params": json.dumps(parameters)}
            if architecture:
                data["architecture"] = architecture
            if config:
                data["config"] = config
            with open(file, "rb") as f:
                response = _check(client.post("/v1/audits", data=data, files={"file": (file.name, f)}))
        else:
            body = {"method": method, "protected_model": protected, "params": parameters,
                    "suspect": {"url": endpoint, "protocol": protocol, "model": model_name}}
            response = _check(client.post("/v1/audits", json=body))
        record = response.json()
        existing = " (existing audit for the same request)" if response.status_code == 200 else ""
        typer.echo(f"audit {record['id']}: {record['status']}{existing}", err=True)
        if wait and record["status"] not in ("done", "failed"):
            record = _wait(client, record["id"], poll)
    typer.echo(json.dumps(record, indent=2, sort_keys=True))
    if record["status"] == "failed":
        raise typer.Exit(1)


@audit_app.command("status")
def audit_status(audit_id: str, api: str = API_OPTION, token: str = TOKEN_OPTION) -> None:
    """An audit's record: status, progress, attempts, decision."""
    with _client(api, token) as client:
        typer.echo(json.dumps(_check(client.get(f"/v1/audits/{audit_id}")).json(), indent=2, sort_keys=True))


@audit_app.command("report")
def audit_report(
    audit_id: str,
    out: Path | None = typer.Option(None, "--out", help="write here instead of standard output"),
    format: str = typer.Option("json", help="json (the signed DSSE envelope) or html"),
    api: str = API_OPTION,
    token: str = TOKEN_OPTION,
) -> None:
    """Download an audit's signed report (exact bytes) or its HTML page."""
    if format not in ("json", "html"):
        raise _fail("--format is json or html")
    with _client(api, token) as client:
        content = _check(client.get(f"/v1/audits/{audit_id}/report", params={"format": format})).content
    if out is None:
        sys.stdout.buffer.write(content)
    else:
        out.write_bytes(content)
        typer.echo(f"wrote {out}", err=True)


# --- report --------------------------------------------------------------------------------------------


@report_app.command("verify")
def report_verify(
    report: Path = typer.Argument(..., help="the report's DSSE envelope (.dsse.json)"),
    public_key: Path = typer.Option(..., "--public-key", help="the signer's Ed25519 public key (PEM)"),
) -> None:
    """Verify a signed report. Exit 0: valid. Exit 1: the signature or statement does not verify. Exit 2: unreadable."""
    from audit.signing import (
        COMPLIANCE_PREDICATE,
        OWNERSHIP_AUDIT_PREDICATE,
        VerificationError,
        key_id,
        verify_envelope,
    )

    try:
        envelope, pem = report.read_bytes(), public_key.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        statement = verify_envelope(envelope, pem)
        if statement["predicateType"] not in (OWNERSHIP_AUDIT_PREDICATE, COMPLIANCE_PREDICATE):
            raise VerificationError(f"predicateType {statement['predicateType']!r} is not a Model Custody report")
    except VerificationError as exc:
        typer.echo(f"INVALID: {exc}", err=True)
        raise typer.Exit(1) from None
    predicate = statement["predicate"]
    if statement["predicateType"] == COMPLIANCE_PREDICATE:
        period = predicate["period"]
        typer.echo(f"valid: compliance report signed by key {key_id(pem)}")
        typer.echo(f"period {period['since']} → {period['until']}: {predicate['query_log']['records_logged']} "
                   f"records logged, {predicate['detector']['alerts_opened']} alerts opened, "
                   f"{predicate['audits']['submitted']} audits submitted")
        return
    protected = predicate.get("protected_model") or {}
    typer.echo(f"valid: signed by key {key_id(pem)}")
    typer.echo(f"decision: {predicate.get('decision')} (p = {predicate.get('p_value')}, "
               f"method {predicate.get('method')})")
    for subject in statement["subject"]:
        typer.echo(f"subject: {subject['name']} sha256:{subject['digest'].get('sha256')}")
    if protected.get("registered_at"):
        typer.echo(f"protected model registered at {protected['registered_at']}; "
                   f"audit started {predicate['started_at']}")


@report_app.command("pdf")
def report_pdf(
    report: Path = typer.Argument(..., help="the report's DSSE envelope (.dsse.json)"),
    public_key: Path = typer.Option(..., "--public-key", help="the signer's Ed25519 public key (PEM)"),
    out: Path = typer.Option(..., "--out", help="where to write the PDF"),
) -> None:
    """Render a signed audit report as a PDF for filing, after verifying its signature (exit 1 if invalid)."""
    import hashlib

    from audit.report_pdf import render_pdf
    from audit.signing import OWNERSHIP_AUDIT_PREDICATE, VerificationError, key_id, verify_envelope

    try:
        envelope, pem = report.read_bytes(), public_key.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        statement = verify_envelope(envelope, pem, predicate_type=OWNERSHIP_AUDIT_PREDICATE)
    except VerificationError as exc:
        typer.echo(f"INVALID: {exc}", err=True)
        raise typer.Exit(1) from None
    signature = {"keyid": key_id(pem), "envelope_sha256": hashlib.sha256(envelope).hexdigest(),
                 "verify with": f"modelcustody report verify {report.name} --public-key <the signer's public key>"}
    out.write_bytes(render_pdf(statement["predicate"], signature=signature))
    typer.echo(f"wrote {out} (verdict: {statement['predicate'].get('decision')})", err=True)


@report_app.command("compliance")
def report_compliance(
    hours: float = typer.Option(24.0, help="the period: this many hours up to now"),
) -> None:
    """Sign and store a compliance report now (celery beat also makes one per interval); prints its path."""
    import redis

    from services.core.settings import get_settings
    from workers.compliance_report import write_compliance_report

    if hours <= 0:
        raise _fail("--hours must be positive")
    settings = get_settings()
    r = redis.Redis.from_url(settings.redis_url)
    try:
        typer.echo(str(write_compliance_report(r, settings, period_s=hours * 3600)))
    except redis.RedisError as exc:
        raise _fail(f"Redis at {settings.redis_url} unavailable: {type(exc).__name__}") from None
    finally:
        r.close()


# --- serve ---------------------------------------------------------------------------------------------


def serve_api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """The admin API (alerts, clients, audits, reports, keys, protected models)."""
    import uvicorn

    uvicorn.run("services.api.main:create_app", factory=True, host=host, port=port, access_log=False, log_level="info")


def serve_worker(loglevel: str = "INFO") -> None:
    """An audit worker: Celery, solo pool (one audit at a time, in this process), metrics on
    MODELCUSTODY_WORKER_METRICS_PORT."""
    from services.core.settings import get_settings
    from services.core.signer_client import SignerNotConfigured, require_signer

    try:
        require_signer(get_settings())
    except SignerNotConfigured as exc:
        raise _fail(str(exc)) from None
    from workers.celery_app import app as celery_app

    # solo: one process, so a SIGKILL takes the audit with it and nothing is orphaned; no mingle/gossip:
    # workers need not know each other, and mingle alone delays the start by a second.
    celery_app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--loglevel={loglevel}",
                            "--without-mingle", "--without-gossip"])
