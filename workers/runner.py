"""What a worker does with an audit or a registration record, without Celery: testable as plain functions.

``execute_audit``: verify the protected model's registration, open the suspect (a stored upload through
``audit.suspects.loader``, never unpickled unless the operator allowed unsafe formats, and then sandboxed; or
an HTTP endpoint), run the method (``audit.methods``), build the report, sign it (DSSE, Ed25519) and write the
envelope and its HTML page under ``<data_dir>/reports/``.

``execute_registration``: turn a queued registration's stored inputs into a signed registration
(``audit.protected.register_protected_model``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.configs import Progress
from audit.protected import (
    ProtectedModel,
    RegistrationConfig,
    RegistrationInputs,
    register_protected_model,
)
from audit.signing import OWNERSHIP_AUDIT_PREDICATE, Signer
from audit.suspects.base import Suspect
from services.core.audits import AuditRecord
from services.core.model_client import HttpSuspect
from services.core.protected import ProtectedRecord
from services.core.settings import Settings
from services.core.signer_client import public_key_for, signer_for
from services.core.storage import protected_root, reports_dir, write_atomic

# Keys of a stored suspect spec that configure an HTTP suspect (the rest is identity and bookkeeping).
HTTP_OPTIONS = ("url", "protocol", "model", "token", "batch_size", "input_name", "output_name", "input_path",
                "output_path", "output", "connect_timeout_s", "read_timeout_s", "retries")


class Deadline:
    """The soft time limit, checked cooperatively at every progress report.

    The solo pool runs tasks in the worker's main thread, where Celery's own time limits do not apply;
    audits report progress after every query batch, so checking there bounds the overrun by one batch.
    """

    def __init__(self, seconds: float | None) -> None:
        import time

        self._clock = time.monotonic
        self.at = None if seconds is None else self._clock() + seconds
        self.seconds = seconds

    def check(self) -> None:
        if self.at is not None and self._clock() > self.at:
            raise TimeoutError(f"audit exceeded the soft time limit of {self.seconds:g} s")


EXIT_HARD_LIMIT = 70  # the worker's exit status when it ended itself at the hard time limit


class HardLimit:
    """The hard time limit for the solo pool, where Celery cannot kill a task without killing the worker.

    A timer thread waits ``seconds``; if the task is still running then, it records the failure
    (``on_expire``) and ends the whole worker process: a task stuck in C code or a hung socket cannot be
    interrupted from another thread, and the process supervisor (docker's restart policy) starts a fresh
    worker. The broker redelivers the unacknowledged message after the visibility timeout; the task finds
    its record failed and only acknowledges it. Used as a context manager around the task's work.
    """

    def __init__(self, seconds: float | None, on_expire: Callable[[], None], what: str) -> None:
        import threading

        self.seconds, self.on_expire, self.what = seconds, on_expire, what
        self._timer = None if seconds is None else threading.Timer(seconds, self._expire)
        if self._timer is not None:
            self._timer.daemon = True

    def _expire(self) -> None:
        import logging
        import os

        try:
            self.on_expire()
        finally:
            logging.getLogger(__name__).error(
                "%s exceeded the hard time limit of %g s: ending the worker", self.what, self.seconds
            )
            os._exit(EXIT_HARD_LIMIT)

    def __enter__(self) -> HardLimit:
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()


def signer(settings: Settings) -> Signer:
    """The signer service in production; the key in process only outside prod (``signer_for``)."""
    return signer_for(settings)


def load_protected(settings: Settings, protected_id: str) -> ProtectedModel:
    directory = protected_root(settings) / protected_id
    if not directory.is_dir():
        raise ValueError(f"protected model {protected_id} has no registration under {protected_root(settings)}")
    return ProtectedModel.load(directory, public_key_for(settings))


def open_suspect(spec: Mapping[str, Any], settings: Settings) -> Suspect:
    if spec.get("kind") == "endpoint":
        return HttpSuspect(**{k: v for k, v in spec.items() if k in HTTP_OPTIONS and v is not None})
    if spec.get("kind") != "file":
        raise ValueError(f"unknown suspect kind {spec.get('kind')!r}")
    from audit.suspects.loader import load_suspect_file

    trusted = None  # skops's default allow-list
    if settings.extra_trusted_types:
        from audit.suspects.skops_loader import DEFAULT_TRUSTED_TYPES

        trusted = [*DEFAULT_TRUSTED_TYPES, *settings.extra_trusted_types]
    suspect = load_suspect_file(
        Path(spec["path"]),
        spec["format"],
        architecture=spec.get("architecture"),
        config=spec.get("config"),
        trusted_types=trusted,
        allow_unsafe=settings.allow_unsafe_formats,
        max_bytes=settings.audit_max_upload_bytes,
    )
    if suspect.identity.get("sha256") != spec.get("sha256"):
        raise ValueError("the stored upload no longer matches the SHA-256 it was submitted with")
    return suspect


@dataclass
class AuditOutcome:
    report_path: Path
    html_path: Path
    verdict: str
    p_value: float | None
    queries_used: int


def execute_audit(
    record: AuditRecord, settings: Settings, progress: Progress, deadline: Deadline | None = None
) -> AuditOutcome:
    from audit.methods import build_audit_report, run_audit
    from audit.report import render_html

    deadline = deadline or Deadline(None)

    def report_progress(fraction: float, message: str) -> None:
        deadline.check()
        progress(0.05 + 0.9 * fraction, message)

    started = datetime.now(UTC)
    progress(0.01, "verifying the protected model's registration")
    protected = load_protected(settings, record.protected_model)
    progress(0.03, "loading the suspect")
    context: dict[str, Any] = {}
    if record.method == "api_watermark":
        from workers.api_watermark import api_watermark_context

        progress(0.02, "reading the query log and the deployment's answer-watermark key")
        context = api_watermark_context(settings, protected, record.params)
    suspect = open_suspect(record.suspect, settings)
    try:
        evidence = run_audit(record.method, suspect, protected, record.params, report_progress, **context)
    finally:
        for opened in (suspect, context.get("owner")):
            close = getattr(opened, "close", None)
            if callable(close):
                close()
    progress(0.96, "signing the report")
    report = build_audit_report(
        audit_id=record.id,
        method=record.method,
        evidence=evidence,
        suspect_identity=suspect.identity,
        protected=protected,
        started_at=started,
        finished_at=datetime.now(UTC),
        submitted_at=datetime.fromtimestamp(record.created_at, UTC),
        attempts=record.attempts,
    )
    from audit.report import report_subjects

    envelope = signer(settings).sign(report, report_subjects(report), OWNERSHIP_AUDIT_PREDICATE)
    out = reports_dir(settings)
    report_path = write_atomic(out / f"{record.id}.dsse.json", envelope)
    from audit.signing import key_id

    signature_info = {
        "keyid": key_id(public_key_for(settings)), "envelope_sha256": hashlib.sha256(envelope).hexdigest(),
        "verify with": f"modelcustody report verify {record.id}.dsse.json --public-key signing_ed25519.pub.pem",
    }
    page = render_html(report, signature=signature_info)
    html_path = write_atomic(out / f"{record.id}.html", page.encode("utf-8"))
    from audit.report_pdf import render_pdf

    write_atomic(out / f"{record.id}.pdf", render_pdf(report, signature=signature_info))  # for filing
    return AuditOutcome(report_path, html_path, report["decision"], report["p_value"], report["queries"]["used"])


def execute_registration(record: ProtectedRecord, settings: Settings, progress: Progress) -> ProtectedModel:
    root = protected_root(settings)
    existing = root / record.id
    if existing.is_dir():  # a redelivered task whose first run finished: verify and reuse
        return ProtectedModel.load(existing, public_key_for(settings))
    return register_protected_model(
        RegistrationInputs.from_spec(record.name, record.spec),
        root,
        signer(settings),
        registration_id=record.id,
        config=RegistrationConfig.from_dict(record.spec.get("parameters")),
        progress=progress,
        open_endpoint=lambda endpoint: HttpSuspect(**dict(endpoint)),
    )
