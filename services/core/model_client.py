"""A model behind an HTTP prediction API, as a ``Suspect``: what audits query, what registration and
``detector fit`` ask for the owner's own model's answers. Requests are written with the one codec
(``services.core.protocols``).

Protocols:

- Open Inference Protocol v2 (KServe "v2", Triton, MLServer): ``POST {url}/v2/models/{model}/infer`` with
  one FP32 tensor ``[n, d]`` in ``inputs[]``; the answer's ``outputs[]`` tensors (flat ``data`` plus
  ``shape``) are read as probabilities, logits or labels.
- KServe v1: ``POST {url}/v1/models/{model}:predict`` with ``{"instances": rows}`` → ``{"predictions": ...}``.
- Generic JSON: ``POST {url}`` with the rows placed at a dotted ``input_path`` and the answer read from a
  dotted ``output_path`` (integer segments index lists: ``outputs.0.data``).

Labels are the argmax of the probabilities when the endpoint returns probabilities. Requests are batched
(``batch_size`` rows at most); connection failures and 502/503/504 answers are retried with exponential
backoff. Synchronous on purpose: an audit is a sequential experiment, not a hot path.

Every request passes the egress policy (``services.core.egress``: internal addresses refused unless
allow-listed, the connection pinned to the checked address), its answer is read up to
``max_response_bytes`` and within ``total_timeout_s`` from connect to last byte, and an error answer's body
is never read into the audit's error (it could be anything the URL pointed at).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import httpx
import numpy as np
import orjson

from audit.suspects._outputs import Answer, interpret_output
from audit.suspects.base import Suspect, SuspectError
from services.core.egress import EgressPolicy, EgressRefused
from services.core.protocols import PROTOCOLS, Protocol, encode_request, get_path, request_path

OutputMode = Literal["auto", "probabilities", "labels"]

# A proxy in front of a restarting model server answers these; the request can safely be sent again.
_RETRY_STATUS = {502, 503, 504}
_RETRY_EXCEPTIONS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError)
_OIP_DTYPES = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL"}


class HttpSuspect(Suspect):
    def __init__(
        self,
        url: str,
        *,
        protocol: Protocol = "oip-v2",
        model: str = "",
        token: str | None = None,
        batch_size: int = 256,
        # Connecting fails fast on a dead host; a large CPU batch may legitimately take tens of seconds.
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        input_name: str = "input-0",
        output_name: str | None = None,
        input_path: str = "inputs",
        output_path: str = "outputs",
        output: OutputMode = "auto",
        budget: int | None = None,
        egress: EgressPolicy | None = None,  # None: the deployment's (settings)
        max_response_bytes: int | None = None,  # None: settings.egress_max_response_bytes
        total_timeout_s: float | None = None,  # None: settings.egress_total_timeout_s
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be http(s), got {url!r}")
        if protocol != "generic" and not model:
            raise ValueError(f"protocol {protocol} needs a model name")
        if batch_size <= 0 or retries < 0 or connect_timeout_s <= 0 or read_timeout_s <= 0 or backoff_s < 0:
            raise ValueError("batch_size and timeouts must be positive, retries and backoff non-negative")
        if output not in ("auto", "probabilities", "labels"):
            raise ValueError(f"output must be auto, probabilities or labels, got {output!r}")
        if protocol == "generic" and (not input_path or not output_path):
            raise ValueError("generic protocol needs input_path and output_path")
        if egress is None or max_response_bytes is None or total_timeout_s is None:
            from services.core.settings import get_settings

            settings = get_settings()
            egress = egress or EgressPolicy.from_settings(settings)
            max_response_bytes = max_response_bytes or settings.egress_max_response_bytes
            total_timeout_s = total_timeout_s or settings.egress_total_timeout_s
        self.egress = egress
        self.max_response_bytes = max_response_bytes
        self.total_timeout_s = total_timeout_s
        self.url = url.rstrip("/")
        identity = {"kind": "endpoint", "url": self.url, "protocol": protocol, "model": model}
        super().__init__(budget=budget, identity=identity)
        self.protocol = protocol
        self.model = model
        self.batch_size = batch_size
        self.retries = retries
        self.backoff_s = backoff_s
        self.input_name = input_name
        self.output_name = output_name
        self.input_path = input_path
        self.output_path = output_path
        self.output = output
        self._seen_probabilities = False
        headers = {"content-type": "application/json", "accept": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        # No redirects: a redirect to another host must not receive the bearer token or our queries.
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            follow_redirects=False,
        )

    def __repr__(self) -> str:  # never the token
        return f"HttpSuspect({self.url!r}, protocol={self.protocol!r}, model={self.model!r})"

    def close(self) -> None:
        self._client.close()

    def check_destination(self) -> None:
        """EgressRefused (a ValueError) when the URL's host resolves to an address the policy refuses."""
        self.egress.resolve(self.url)

    def __enter__(self) -> HttpSuspect:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def has_probabilities(self) -> bool:
        """``output="auto"`` cannot know before the first answer: False until an answer carried probabilities."""
        if self.output == "labels":
            return False
        if self.output == "probabilities":
            return True
        return self._seen_probabilities

    def _labels(self, x: np.ndarray) -> np.ndarray:
        return self._answer(x).labels

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        answer = self._answer(x)
        if answer.probabilities is None:
            raise SuspectError(f"{self.url} answered with labels only, not probabilities")
        return answer.probabilities

    def _answer(self, x: np.ndarray) -> Answer:
        labels, probas = [], []
        for start in range(0, len(x), self.batch_size):
            answer = self._request(x[start : start + self.batch_size])
            if answer.probabilities is not None and self.output != "labels":
                self._seen_probabilities = True
            labels.append(answer.labels)
            probas.append(answer.probabilities)
        if not labels:
            return Answer(np.zeros(0, dtype=np.int64), None, "labels")
        probabilities = None
        if all(p is not None for p in probas) and self.output != "labels":
            widths = {p.shape[1] for p in probas if p is not None}
            if len(widths) != 1:
                raise SuspectError(f"{self.url} answered with a varying number of classes {sorted(widths)}")
            probabilities = np.concatenate([p for p in probas if p is not None])
        return Answer(np.concatenate(labels), probabilities, "probabilities" if probabilities is not None else "labels")

    # --- protocols -----------------------------------------------------------------------------

    def _request(self, x: np.ndarray) -> Answer:
        n = len(x)
        body = encode_request(
            self.protocol, x, datatype="FP32", input_name=self.input_name, input_path=self.input_path
        )
        response = self._post(f"{self.url}{request_path(self.protocol, self.model)}", body)
        if self.protocol == "oip-v2":
            return self._read_oip(response, n)
        if self.protocol == "kserve-v1":
            if not isinstance(response, dict) or "predictions" not in response:
                raise SuspectError(f"{self.url} answered without 'predictions'")
            return interpret_output(response["predictions"], n)
        try:
            return interpret_output(get_path(response, self.output_path), n)
        except KeyError:
            raise SuspectError(f"the answer has nothing at JSON path {self.output_path!r}") from None

    def _read_oip(self, response: Any, n: int) -> Answer:
        outputs = response.get("outputs") if isinstance(response, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise SuspectError(f"{self.url} answered without OIP v2 'outputs'")
        candidates = []
        for out in outputs:
            if not isinstance(out, dict):
                continue
            if self.output_name is not None and out.get("name") != self.output_name:
                continue
            if out.get("datatype") not in _OIP_DTYPES:
                continue  # e.g. BYTES (string labels): not something we can compare numerically
            try:
                data = np.asarray(out["data"])
                shape = [int(s) for s in out.get("shape", [data.size])]
                data = data.reshape(shape)
            except (KeyError, ValueError, TypeError) as exc:
                raise SuspectError(f"{self.url} answered with a malformed output tensor: {exc}") from None
            if str(out.get("datatype")).startswith(("INT", "UINT", "BOOL")):
                data = data.astype(np.int64)
            candidates.append(interpret_output(data, n))
        if not candidates:
            wanted = f"named {self.output_name!r}" if self.output_name else "with a numeric datatype"
            raise SuspectError(f"{self.url} answered with no output tensor {wanted}")
        # Prefer an output that carries probabilities; labels are its argmax then.
        return next((c for c in candidates if c.probabilities is not None), candidates[0])

    def _post(self, url: str, body: Any) -> Any:
        payload = orjson.dumps(body)
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                target = self.egress.pin(url)  # resolved on every attempt: the check is as fresh as the connect
            except EgressRefused as exc:
                raise SuspectError(str(exc)) from None
            try:
                status, content = self._send(target.url, target.host_header, target.extensions, payload)
            except _RETRY_EXCEPTIONS as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            except httpx.HTTPError as exc:
                raise SuspectError(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
            if status in _RETRY_STATUS:
                last_error = f"HTTP {status}"
                continue
            if status != 200:
                # The status only: the body of an error could be whatever the URL points at, echoed into a report.
                raise SuspectError(f"{url} answered HTTP {status}")
            try:
                return orjson.loads(content)
            except orjson.JSONDecodeError as exc:
                raise SuspectError(f"{url} answered with invalid JSON: {exc}") from None
        raise SuspectError(f"{url} unreachable after {self.retries + 1} attempts ({last_error})")

    def _send(self, url: str, host: str, extensions: dict[str, Any], payload: bytes) -> tuple[int, bytes]:
        """POST and read the answer within the byte cap and the total deadline; the body only when 200."""
        deadline = time.monotonic() + self.total_timeout_s
        request = self._client.build_request("POST", url, content=payload, headers={"host": host},
                                             extensions=extensions)
        response = self._client.send(request, stream=True)
        try:
            if response.status_code != 200:
                return response.status_code, b""
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise SuspectError(
                    f"{url} answered with {declared} bytes, above the {self.max_response_bytes}-byte cap"
                )
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise SuspectError(f"{url} answered with more than {self.max_response_bytes} bytes; refused")
                if time.monotonic() > deadline:
                    raise SuspectError(f"{url} took longer than {self.total_timeout_s} s to answer; refused")
                chunks.append(chunk)
            return 200, b"".join(chunks)
        finally:
            response.close()
