"""The one settings object of Model Custody, read from ``MODELCUSTODY_*`` environment variables (or ``.env``).

Every component (gateway, detector, admin API, workers, CLI) reads this class; fields carry their
component as a prefix so one flat namespace stays greppable: ``MODELCUSTODY_GATEWAY_UPSTREAM_URL`` etc.
Validation fails fast at start: placeholder secrets are refused outside the ``dev``/``demo``/``test``
environments.
"""

from __future__ import annotations

import os
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "secret", "admin"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODELCUSTODY_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    env: Literal["dev", "demo", "test", "prod"] = "dev"
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("var")

    # --- gateway -------------------------------------------------------------------------------
    gateway_upstream_url: str = "http://127.0.0.1:8081"
    gateway_instance_id: str = ""  # stable id of this gateway; names its spill file. Empty → hostname.
    # Connect fast-fails a dead upstream; the read timeout covers a slow model (a large batch on CPU).
    gateway_connect_timeout_s: float = 2.0
    gateway_read_timeout_s: float = 30.0
    # 1 MiB fits a batch of ~1,000 64-dim rows; larger bodies get 413 before they are parsed.
    gateway_max_body_bytes: int = 1_048_576
    gateway_input_dim: int | None = None  # when set, rows of another width get 400
    gateway_generic_route: str = "/predict"
    gateway_generic_input_path: str = "inputs"
    gateway_generic_output_path: str = "outputs"
    # Buffer bound: at 10k rows/s this is ~10 s of Redis outage before the spill file takes over.
    gateway_log_buffer_max: int = 100_000
    gateway_log_batch_max: int = 1_000
    # 20 ms keeps records fresh for the detector (which batches anyway) while one MULTI/EXEC round
    # trip carries dozens of rows: at 5 ms the Redis writes cost ~10% of the gateway's CPU.
    gateway_log_flush_interval_s: float = 0.02
    gateway_log_fail_open: bool = False  # False: a full buffer answers 503 rather than lose a record
    gateway_redis_retry_s: float = 1.0
    gateway_client_refresh_s: float = 2.0  # how soon a revoked key or a tightened policy takes effect
    queries_stream: str = "mc:queries"

    # --- answer watermark (audit/answer_watermark.py; docs/audits.md "Answer watermark") -----------
    # The deployment secret keys which answers are marked and how. Every gateway and every audit worker of a
    # deployment must share it (same input → same answer everywhere). Empty in dev/demo/test: one random
    # secret is kept in <data_dir>/keys/answer_watermark.secret and shared by the processes of that data dir.
    answer_watermark_secret: str = ""
    # all: every client's answers; flagged: only clients whose policy asks for it (the detector's tightened
    # policy does); off: never. A client's policy field ``answer_watermark`` overrides the default.
    answer_watermark_mode: Literal["all", "flagged", "off"] = "all"
    # 0.1: the largest probability change served. At 0.05 single Knockoff copies were claimed but an ensemble of
    # three thieves (p 0.008) and the demo's copy (p 0.016) were not within 500 queries; at 0.1 both were
    # (docs/benchmarks.md). The top-1 label never changes. Capped at 0.2 so the mark stays a perturbation.
    answer_watermark_amplitude: float = Field(default=0.1, gt=0.0, le=0.2)
    # Radians per unit of the keyed projection <v, x>: 23 ≈ one cycle per standard deviation of a random
    # projection of [0, 1]-scaled images (digits, MNIST); AnswerWatermark.suggest_frequency for other scales.
    answer_watermark_frequency: float = Field(default=23.0, gt=0.0)
    # 1 %: DAWN's order of magnitude (0.5 %); ~10 marked labels per 1,000 answers claim an MLP copy.
    answer_watermark_label_share: float = Field(default=0.01, gt=0.0, le=0.1)
    # Classes of a model whose upstream answers labels (a probability answer tells the gateway by its width).
    answer_watermark_n_classes: int | None = Field(default=None, ge=3)

    # --- admin API / alerts --------------------------------------------------------------------
    admin_token: str = ""
    webhook_url: str | None = None
    webhook_secret: str = ""

    # --- audits / signing ----------------------------------------------------------------------
    signing_key_path: Path | None = None  # default: <data_dir>/keys/signing_ed25519.pem

    # --- detector ------------------------------------------------------------------------------
    # A baseline directory written by `modelcustody detector fit`; unset → the demo models' baselines are
    # fitted at start-up on the demo reference data and cached under <data_dir>/detector/baseline.
    detector_reference_path: Path | None = None  # or the owner's reference set (.npz), fitted at start-up
    detector_reference_model: str = "*"  # the model a reference .npz is for ("*": every model)
    detector_metrics_port: int = 9101
    detector_consumer: str = ""  # consumer name in the group; empty → hostname-pid
    # Stream entries per batch: a client's rows are analysed together, so larger batches amortise the
    # per-client state work (bench/detector_throughput.py: ~9k records/s at 500, ~21k at 2,000).
    detector_batch_max: int = 2000
    detector_state_cache_clients: int = 1000  # decoded client states kept per process (~100 kB each)
    # Entries unacknowledged this long belong to a dead detector and are taken over (XAUTOCLAIM).
    detector_reclaim_idle_s: float = 30.0
    detector_tighten_on: Literal["high", "medium", ""] = "high"  # alert level that tightens a client's policy
    alert_window_s: float = 3600.0  # detections of one client within this window fold into one alert
    alerts_stream: str = "mc:alerts"

    celery_broker_url: str | None = None  # default: redis_url
    # Audits on small models take seconds to minutes; an hour is a generous ceiling for HTTP suspects.
    audit_soft_time_limit_s: float = 3300.0
    audit_hard_time_limit_s: float = 3600.0
    # Must exceed the hard limit, or the broker hands a still-running audit to a second worker.
    audit_visibility_timeout_s: float = 3900.0
    allow_unsafe_formats: bool = False  # pickle/joblib/TorchScript uploads, sandboxed; off by default
    # 256 MiB: ten times the largest model the demo audits, far below ONNX's 2 GiB protobuf ceiling.
    audit_max_upload_bytes: int = 256 * 1024**2
    worker_metrics_port: int = 9102  # Prometheus scrape port of an audit worker (0: no metrics server)
    extra_trusted_types: list[str] = Field(default_factory=list)
    # Signed compliance reports (workers/compliance_report.py), one per interval; 0 disables the schedule.
    compliance_report_interval_s: float = 86_400.0

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        relaxed = self.env in ("dev", "demo", "test")
        for name in ("admin_token", "webhook_secret"):
            value = getattr(self, name)
            if value in PLACEHOLDER_SECRETS:
                if not relaxed and (name == "admin_token" or self.webhook_url):
                    raise ValueError(f"MODELCUSTODY_{name.upper()} must be set to a real secret when env={self.env}")
                if relaxed and value == "":
                    # A per-process random secret keeps dev/demo usable without a published default.
                    setattr(self, name, secrets.token_urlsafe(24))
        if self.answer_watermark_mode != "off" and not relaxed:
            secret = self.answer_watermark_secret
            if secret in PLACEHOLDER_SECRETS or len(secret.encode()) < 16:
                raise ValueError(
                    f"MODELCUSTODY_ANSWER_WATERMARK_SECRET must be a real secret of at least 16 bytes when "
                    f"env={self.env} (or set MODELCUSTODY_ANSWER_WATERMARK_MODE=off)"
                )
        return self

    def answer_watermark_key(self) -> bytes:
        """The deployment's answer-watermark secret as bytes (dev/demo/test: the data dir's shared file)."""
        if self.answer_watermark_secret:
            key = self.answer_watermark_secret.encode()
            if len(key) < 16:
                raise ValueError("MODELCUSTODY_ANSWER_WATERMARK_SECRET must be at least 16 bytes")
            return key
        if self.env not in ("dev", "demo", "test"):
            raise ValueError(f"MODELCUSTODY_ANSWER_WATERMARK_SECRET is not set (env={self.env})")
        path = self.data_dir / "keys" / "answer_watermark.secret"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: of two processes starting together one writes, both read the same secret
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        for _ in range(100):  # the writer may not have flushed yet: at most ~1 s
            key = path.read_text().strip().encode()
            if len(key) >= 16:
                return key
            time.sleep(0.01)
        raise ValueError(f"{path} does not hold an answer-watermark secret of at least 16 bytes")

    @property
    def signing_key_file(self) -> Path:
        return self.signing_key_path or self.data_dir / "keys" / "signing_ed25519.pem"

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def instance_id(self) -> str:
        if self.gateway_instance_id:
            return self.gateway_instance_id
        import socket

        return socket.gethostname()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
