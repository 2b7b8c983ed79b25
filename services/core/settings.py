"""The one settings object of Model Custody, read from ``MODELCUSTODY_*`` environment variables (or ``.env``).

Every component (gateway, detector, admin API, workers, CLI) reads this class; fields carry their
component as a prefix so one flat namespace stays greppable: ``MODELCUSTODY_GATEWAY_UPSTREAM_URL`` etc.
Validation fails fast at start: placeholder secrets are refused outside the ``dev``/``demo``/``test``
environments.

Secrets may come from files: ``MODELCUSTODY_ADMIN_TOKEN_FILE=/run/secrets/admin_token`` (Docker and
Kubernetes secrets) sets ``admin_token`` to the file's content without its trailing newline. The variable
itself wins when both are set; a ``*_FILE`` naming a missing file fails the start.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.core import keys
from services.core.policy import OutputPolicy

if TYPE_CHECKING:
    from audit.answer_watermark import AnswerWatermark

T = TypeVar("T")

PLACEHOLDER_SECRETS = {"", "changethis", "change-me", "secret", "admin"}
# Fields that may be read from MODELCUSTODY_<NAME>_FILE: the secrets, and the URLs that may embed credentials.
FILE_FIELDS = (
    "admin_token",
    "webhook_secret",
    "webhook_url",
    "redis_url",
    "celery_broker_url",
    "answer_watermark_secret",
    "signer_token",
)


class FileSecretsSource(PydanticBaseSettingsSource):
    """``MODELCUSTODY_<FIELD>_FILE`` → the file's content, for the fields in ``FILE_FIELDS``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in FILE_FIELDS:
            path = os.environ.get(f"MODELCUSTODY_{name.upper()}_FILE")
            if path:
                try:
                    values[name] = Path(path).read_text().rstrip("\r\n")
                except OSError as exc:
                    raise ValueError(f"MODELCUSTODY_{name.upper()}_FILE: cannot read {path}: {exc.strerror}") from None
        return values


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
    # Request headers forwarded upstream besides the built-in allow-list (accept, content-type, user-agent,
    # traceparent, tracestate; x-request-id and x-forwarded-for are set by the gateway). Lower case.
    gateway_forward_extra_headers: list[str] = Field(default_factory=list)
    # Declared input range per model, JSON {"model": [low, high]} ("*": every model without its own); a
    # value outside gets 400. Unset: only the float32 range is enforced. Bounds what one row can do to a
    # client's detector state (docs/detector.md, "Evasion").
    gateway_input_ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
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
    # Committed query-log rows kept in the gateway's journal: Redis with appendfsync everysec can lose about
    # the last 1 s of acknowledged writes (2 s when a slow disk postpones them); 10 s is a wide margin, ~10 MB
    # at 1k rows/s.
    gateway_journal_retain_s: float = Field(default=10.0, gt=0)
    gateway_client_refresh_s: float = 2.0  # how soon a revoked key or a tightened policy takes effect
    # Source network of a request (recorded on each query record; the detector pools a network's clients,
    # docs/detector.md "Colluding keys"). CIDRs of the operator's own reverse proxies / load balancers: only
    # when the TCP peer is inside one is ``gateway_client_ip_header`` believed (its right-most address that
    # is not itself a trusted proxy); any other peer is the source, whatever header it sends.
    gateway_trusted_proxies: list[str] = Field(default_factory=list)
    gateway_client_ip_header: str = "x-forwarded-for"
    # /24 and /48: the block one site, NAT or cloud tenant typically holds; an attacker renting addresses in
    # one block lands in one group, while unrelated customers rarely share one.
    gateway_source_ipv4_prefix: int = Field(default=24, ge=8, le=32)
    gateway_source_ipv6_prefix: int = Field(default=48, ge=16, le=128)
    queries_stream: str = keys.QUERIES_STREAM
    # XADD MAXLEN ~ bound: at ~1 KB a record, 1M entries is ~1 GB of Redis memory (compose sets maxmemory
    # 2gb). The archiver keeps the stream far below it; the bound only bites when archiver or detectors stop.
    queries_stream_maxlen: int = 1_000_000

    # --- query-log archiver (services/archiver) ------------------------------------------------------
    archive_dir: Path | None = None  # default: <data_dir>/archive
    # 20,000 records (~20 MB raw, a few MB compressed) or one minute, whichever comes first, per segment.
    archive_segment_records: int = 20_000
    archive_segment_interval_s: float = 60.0
    archive_retention_days: float = 0.0  # segments older than this are deleted; 0 keeps everything
    # Nothing is trimmed before these consumer groups exist (a detector started later reads from id 0).
    archive_required_groups: list[str] = Field(default_factory=lambda: ["detectors"])
    archiver_metrics_port: int = 9103

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
    # Radians per unit of the keyed projection <v, x>: 5.75 ≈ a quarter cycle per standard deviation of a random
    # projection of [0, 1]-scaled images (digits, MNIST); AnswerWatermark.suggest_frequency for other scales.
    # At 23 (one cycle per std) copies carried the cosine only on their own training inputs: a logistic copy
    # (equation solving) and a 3-thief ensemble on MNIST were not claimed; at 5.75 both were (docs/benchmarks.md).
    answer_watermark_frequency: float = Field(default=5.75, gt=0.0)
    # 1 %: DAWN's order of magnitude (0.5 %); ~10 marked labels per 1,000 answers claim an MLP copy.
    answer_watermark_label_share: float = Field(default=0.01, gt=0.0, le=0.1)
    # Boundary label mark (label answers computed from upstream probabilities): where the upstream's top-2 margin
    # (p1 − p2) is below this, a keyed side of the input decides whether the runner-up is served. Boundary-
    # seeking thieves (JBDA, adaptive retraining) query there most; 0 turns it off. docs/audits.md has the
    # trade-off measured (benign label flip rate against copies claimed).
    answer_watermark_boundary_margin: float = Field(default=0.5, ge=0.0, lt=1.0)
    # Share of the band's region where the mark acts (1: everywhere in the band, half of its labels move).
    answer_watermark_boundary_share: float = Field(default=1.0, gt=0.0, le=1.0)
    # What picks the side in the band: "hash", the input's keyed HMAC (a fair coin per distinct input, so the
    # audit's test is valid even on an adaptive client's log); "smooth", a keyed cosine region of the input.
    # Over 20 keys on digits (bench/api_watermark_keys.py) the hash side claimed more of the boundary thieves'
    # copies; docs/audits.md has the comparison. Gateways and workers of a deployment must agree.
    answer_watermark_boundary_side: Literal["smooth", "hash"] = "hash"
    # Classes the probability mark moves: 1, the cosine into one keyed class; 2, also the sine of the same
    # projection into a second keyed class (a copy that can only carry the mark's linear part, e.g. a logistic
    # one, then finds it whatever the key's phase). Marked answers are audited with the setting they were served
    # under: gateways and workers of a deployment must agree.
    answer_watermark_probability_classes: int = Field(default=1, ge=1, le=2)
    # Classes of a model whose upstream answers labels (a probability answer tells the gateway by its width).
    answer_watermark_n_classes: int | None = Field(default=None, ge=3)

    # --- admin API / alerts --------------------------------------------------------------------
    admin_token: str = ""
    # POST /v1/reports/verify needs no token. Our envelopes are kilobytes and carry one signature: 1 MiB and
    # four signatures leave room for co-signed reports while bounding one request to milliseconds of CPU.
    api_verify_max_body_bytes: int = 1_048_576
    api_verify_max_signatures: int = 4
    # Per source address, in process (token bucket): a verifier checks a few reports, not thousands a second.
    api_verify_rate_per_s: float = 2.0
    api_verify_burst: int = 20
    webhook_url: str | None = None
    webhook_secret: str = ""

    # --- egress: audits' suspect URLs and the webhook (services/core/egress.py) ----------------------
    # Networks audits and webhooks may reach although internal (loopback, private, link-local...): CIDRs.
    # Outside env=prod loopback is added, since the demo and the tests run everything on one host.
    egress_allow_networks: list[str] = Field(default_factory=list)
    # An answer for a batch of 256 rows x 1,000 classes is ~5 MB of JSON; 16 MiB caps a hostile endless body.
    egress_max_response_bytes: int = 16 * 1024**2
    # Per request, connect to last byte: twice the suspect's read timeout, so a server trickling bytes (each
    # chunk resetting the read timeout) cannot hold an audit for longer.
    egress_total_timeout_s: float = 120.0

    # --- audits / signing ----------------------------------------------------------------------
    signing_key_path: Path | None = None  # default: <data_dir>/keys/signing_ed25519.pem
    # The signer service (`modelcustody serve signer`, services/signer): the only process that reads the key.
    # Set → workers, the API and the CLI send statements there; unset → they sign in process with
    # signing_key_file, allowed only when env is dev/demo/test (workers refuse to start in prod).
    signer_url: str | None = None
    # Bearer token shared by the signer and the processes that sign (workers, the CLI); the API only fetches the
    # public key and needs none. No random dev default: it would differ between the signer and its callers.
    signer_token: str = ""
    signer_timeout_s: float = 10.0  # signing takes < 1 ms: 10 s only covers a signer restarting
    # A registration statement (hundreds of subjects, self-test tables) is tens of KB; 4 MiB leaves 100x room.
    signer_max_body_bytes: int = 4 * 1024**2

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
    # A client's state holds one engine state (~100 kB at 64 features) per model it queried. Clients query
    # one or a few models; past this many, records of further models are counted and not analysed, so
    # made-up model names cannot grow a client's state without bound.
    detector_max_models_per_client: int = Field(default=8, ge=1)
    # --- colluding keys: the cross-client test per source network (docs/detector.md "Colluding keys") ----
    detector_groups: bool = True  # pool each source network's clients and test the pooled stream
    # A group alert needs this many member clients that did not alert on their own and each contributed at
    # least min_share of an equal split of the pool: one or two keys are each client's own test's business,
    # and clients that sent a few rows beside a bulk scorer are not a coalition; relative to an equal split
    # (not to the pool) so that splitting over more keys never hides them.
    detector_group_min_members: int = Field(default=3, ge=2)
    detector_group_min_share: float = Field(default=0.25, gt=0.0, le=1.0)
    # Rows one member may add to its group's pooled stream per window: a bulk scorer (10-100x the median
    # volume of 150) adds as much as three ordinary clients and cannot make the pool its own stream.
    detector_group_member_cap: int = Field(default=500, ge=20)
    # Members tracked per group: a carrier-grade NAT holding thousands of clients pools its first 64.
    detector_group_max_members: int = Field(default=64, ge=2)
    # Groups held in Redis (each up to one engine state, ~100 kB at 64 features): the least recently seen
    # is dropped beyond this and counted; an idle group expires after a day.
    detector_group_max: int = Field(default=10_000, ge=1)
    detector_group_idle_s: float = Field(default=86_400.0, gt=0.0)
    # A group alert notifies (or only records, "observe"); it never changes a policy by itself.
    detector_group_response: Literal["observe", "notify"] = "notify"
    # --- the population baseline (docs/detector.md "Population baseline") ---------------------------
    # Each detector process keeps, per model, a ring of what its clients send (at most per_client rows
    # each); a query that support other clients' rows explain is not out of distribution. Before
    # min_clients clients have rows (a fresh start) it explains nothing. Off: the reference-only OOD test.
    detector_population: bool = True
    detector_population_capacity: int = Field(default=4096, ge=16)
    detector_population_per_client: int = Field(default=8, ge=1)
    detector_population_support: int = Field(default=5, ge=1)
    detector_population_min_clients: int = Field(default=50, ge=1)
    # Saved to Redis this often (and when the detector stops), read back when it starts: a restart does not
    # warm up again. 0: never saved. 12.8 MB per model at 4,096 rows x 784 features.
    detector_population_save_s: float = Field(default=60.0, ge=0.0)
    # --- detector response (docs/detector.md, "Response levels") ---------------------------------
    # The highest response the detector takes by itself: observe (record the alert, no webhook), notify
    # (alert + webhook), enforce (also tighten the client's output policy, when the evidence persists).
    detector_response: Literal["observe", "notify", "enforce"] = "enforce"
    # Shadow mode: nothing is enforced and no client sees a change; what would have happened is recorded
    # on the alert. For trying the detector on live traffic before trusting it.
    detector_shadow_mode: bool = False
    # Automatic enforcement needs the client at level high AND either this many consecutive tests over
    # the alert threshold (3 tests span 100 queries at the 20/50/100 schedule: a benign client's one
    # unlucky window does not persist) or two independent signal families firing in the same test.
    detector_enforce_after_tests: int = Field(default=3, ge=1)
    # Signal → family. Under benign shift (off-centre, noisy captures) boundary and ood fire together, so
    # they count as one family; a signal not listed is its own family. steps (sign steps to the nearest earlier
    # query) measures the same thing as prada (a client's distances to its own earlier queries): one family.
    detector_signal_families: dict[str, str] = Field(
        default_factory=lambda: {
            "boundary": "shift",
            "ood": "shift",
            "prada": "sequence",
            "sweep": "sequence",
            "steps": "sequence",
        }
    )
    # The policy enforcement applies (tightened field by field into the client's current policy): labels
    # only removes what equation solving and boundary attacks learn from; 1,000 rows a day is ~6x the
    # median benign client's daily volume in the benchmark (150), so an honest client keeps working;
    # answer_watermark "all": a flagged client's answers are marked even where the deployment marks only those.
    detector_tightened_policy: dict[str, Any] = Field(
        default_factory=lambda: {"label_only": True, "daily_quota": 1000, "answer_watermark": "all"}
    )
    detector_tighten_on: Literal["high", "medium", ""] = "high"  # alert level from which enforcement may apply
    alert_window_s: float = 3600.0  # detections of one client within this window fold into one alert
    alerts_stream: str = keys.ALERTS_STREAM

    celery_broker_url: str | None = None  # default: redis_url
    # Audits on small models take seconds to minutes; an hour is a generous ceiling for HTTP suspects.
    audit_soft_time_limit_s: float = 3300.0
    audit_hard_time_limit_s: float = 3600.0
    # Must exceed the hard limit, or the broker hands a still-running audit to a second worker.
    audit_visibility_timeout_s: float = 3900.0
    allow_unsafe_formats: bool = False  # pickle/joblib/TorchScript uploads, sandboxed; off by default
    # 256 MiB: ten times the largest model the demo audits, far below ONNX's 2 GiB protobuf ceiling.
    audit_max_upload_bytes: int = 256 * 1024**2
    # Upload checks run in a child process with these limits (audit.suspects.isolated): imports take ~0.85 GiB
    # of address space and a model at the upload limit about three copies of its size while it loads.
    audit_validate_memory_bytes: int = 3 * 1024**3
    audit_validate_cpu_s: int = 60
    worker_metrics_port: int = 9102  # Prometheus scrape port of an audit worker (0: no metrics server)
    extra_trusted_types: list[str] = Field(default_factory=list)
    # Signed compliance reports (workers/compliance_report.py), one per interval; 0 disables the schedule.
    compliance_report_interval_s: float = 86_400.0

    @field_validator("egress_allow_networks", "gateway_trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        import ipaddress

        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"MODELCUSTODY_{str(info.field_name).upper()}: {exc}") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: arguments, then variables, then *_FILE, then .env.
        return init_settings, env_settings, FileSecretsSource(settings_cls), dotenv_settings, file_secret_settings

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

    @model_validator(mode="after")
    def _check_ranges_and_policy(self) -> Settings:
        for model, (low, high) in self.gateway_input_ranges.items():
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(
                    f"MODELCUSTODY_GATEWAY_INPUT_RANGES[{model!r}] must be finite [low, high] with low < high"
                )
        try:
            OutputPolicy.from_dict(self.detector_tightened_policy)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"MODELCUSTODY_DETECTOR_TIGHTENED_POLICY is not a valid output policy: {exc}") from None
        return self

    def answer_watermark(self, n_classes: int, input_dim: int, secret: bytes | None = None) -> AnswerWatermark:
        """The deployment's answer watermark for one model shape: the gateway, the audit worker, the demo and the
        benchmarks build it here, so they agree on every parameter. ``secret``: one already read (default: read
        it with ``answer_watermark_key``)."""
        from audit.answer_watermark import AnswerWatermark  # numpy: not every reader of the settings needs it

        names = (
            "amplitude",
            "frequency",
            "label_share",
            "boundary_margin",
            "boundary_share",
            "boundary_side",
            "probability_classes",
        )
        key = self.answer_watermark_key() if secret is None else secret
        params = {name: getattr(self, f"answer_watermark_{name}") for name in names}
        return AnswerWatermark(key, n_classes=n_classes, input_dim=input_dim, **params)

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
    def archive_path(self) -> Path:
        return self.archive_dir or self.data_dir / "archive"

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def instance_id(self) -> str:
        if self.gateway_instance_id:
            return self.gateway_instance_id
        import socket

        return socket.gethostname()


def settings_section(settings: Any, prefix: str, config: type[T]) -> T:
    """``config`` (a dataclass) built from the settings named ``prefix + field`` for each of its fields: one
    spelling of the mapping for every component's config that mirrors a block of settings."""
    names = [f.name for f in dataclasses.fields(config)]  # type: ignore[arg-type]
    return config(**{name: getattr(settings, prefix + name) for name in names})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
