"""The watermark key: what an owner keeps secret after embedding and shows an auditor to verify a suspect.

One canonical JSON file (``modelcustody.watermark-key/v1``): source and target class, the trigger (pixel
positions in the image and the value they are set to), the image shape, the watermarked inputs themselves
(flat, scaled exactly as the model's inputs), the seeds and free-form provenance. Its sha256 over the
canonical JSON (``fingerprint``) names the key in reports and is what an owner can commit to (timestamp)
before any dispute, against false-claim attacks (Liu et al., USENIX Security 2024).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KEY_FORMAT = "modelcustody.watermark-key/v1"


class CanonicalJsonKey:
    """A key that is one canonical JSON document: its bytes, its SHA-256 fingerprint, the file (EWE's
    ``WatermarkKey`` and ``audit.boundary_watermark.BoundaryKey``)."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: what a report names the key by (and what an owner can commit to early)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path


@dataclass(frozen=True)
class WatermarkKey(CanonicalJsonKey):
    """What the owner keeps secret and shows the auditor: the trigger, the class pair and the watermarked inputs."""

    source_class: int
    target_class: int
    num_classes: int
    image_shape: tuple[int, int]
    trigger_positions: tuple[tuple[int, int], ...]
    trigger_value: float
    inputs: np.ndarray  # [n, h*w] float32, already scaled like the model's inputs
    seeds: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source_class == self.target_class:
            raise ValueError("source_class and target_class must differ")
        for c in (self.source_class, self.target_class):
            if not 0 <= c < self.num_classes:
                raise ValueError(f"class {c} outside 0..{self.num_classes - 1}")
        h, w = self.image_shape
        inputs = np.asarray(self.inputs, dtype=np.float32)
        if inputs.ndim != 2 or inputs.shape[1] != h * w or len(inputs) == 0:
            raise ValueError(f"inputs must be a non-empty [n, {h * w}] array, got shape {inputs.shape}")
        for r, c in self.trigger_positions:
            if not (0 <= r < h and 0 <= c < w):
                raise ValueError(f"trigger position {(r, c)} outside the {h}×{w} image")
        object.__setattr__(self, "inputs", inputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": KEY_FORMAT,
            "source_class": self.source_class,
            "target_class": self.target_class,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "trigger_positions": [list(p) for p in self.trigger_positions],
            "trigger_value": self.trigger_value,
            # float32 → Python float is exact, so the JSON round trip gives back the same bits
            "inputs": [[float(v) for v in row] for row in self.inputs],
            "seeds": dict(self.seeds),
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WatermarkKey:
        if d.get("format") != KEY_FORMAT:
            raise ValueError(f"not a watermark key (format {d.get('format')!r}, expected {KEY_FORMAT!r})")
        return cls(
            source_class=int(d["source_class"]),
            target_class=int(d["target_class"]),
            num_classes=int(d["num_classes"]),
            image_shape=(int(d["image_shape"][0]), int(d["image_shape"][1])),
            trigger_positions=tuple((int(r), int(c)) for r, c in d["trigger_positions"]),
            trigger_value=float(d["trigger_value"]),
            inputs=np.asarray(d["inputs"], dtype=np.float32),
            seeds={k: int(v) for k, v in d.get("seeds", {}).items()},
            info=dict(d.get("info", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> WatermarkKey:
        return cls.from_dict(json.loads(Path(path).read_text()))
