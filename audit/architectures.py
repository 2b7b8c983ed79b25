"""Named model architectures and their safetensors files: how an owner saves a model and how an audit loads one.

A saved model is one ``.safetensors`` file: the weights, plus two metadata entries that make the file
self-describing, ``modelcustody.architecture`` (a name registered here) and ``modelcustody.config`` (the JSON
keyword arguments of that architecture's factory). Loading never unpickles anything: safetensors holds only
tensors and strings, and the module is rebuilt by a factory we registered ourselves. A suspect file without
that metadata (somebody else's export) can still be loaded by passing the architecture and config explicitly.

Built in: ``"mlp"``, a ReLU multilayer perceptron on flat inputs (digits: 64 features in [0, 1], 10 classes).
Other engineers add architectures with ``register_architecture(name, factory)``; a factory validates its
config and raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from audit.validation import positive_int

ARCH_KEY = "modelcustody.architecture"
CONFIG_KEY = "modelcustody.config"

ArchitectureFactory = Callable[[Mapping[str, Any]], nn.Module]
_REGISTRY: dict[str, ArchitectureFactory] = {}


def register_architecture(name: str, factory: ArchitectureFactory, *, replace: bool = False) -> None:
    """Make ``factory(config) -> nn.Module`` loadable by ``name``. Re-registering needs ``replace=True``."""
    if not name or not isinstance(name, str):
        raise ValueError("architecture name must be a non-empty string")
    if name in _REGISTRY and not replace:
        raise ValueError(f"architecture '{name}' is already registered (pass replace=True to override)")
    _REGISTRY[name] = factory


def architectures() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, config: Mapping[str, Any]) -> nn.Module:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture '{name}' (registered: {', '.join(architectures())})") from None
    return factory(config)


class MLP(nn.Module):
    """Linear → ReLU blocks then a linear classifier head.

    ``representations(x)`` returns every hidden block's (post-ReLU) output: the layers the entangled
    watermark's soft-nearest-neighbour loss acts on.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        widths = [input_dim, *hidden]
        self.blocks = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.head = nn.Linear(widths[-1], num_classes)

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.blocks:
            x = torch.relu(block(x))
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.representations(x)
        return self.head(hidden[-1] if hidden else x)


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    return positive_int(f"mlp config '{key}'", config.get(key))


def _mlp_factory(config: Mapping[str, Any]) -> nn.Module:
    unknown = set(config) - {"input_dim", "hidden", "num_classes"}
    if unknown:
        raise ValueError(f"mlp config has unknown keys {sorted(unknown)}")
    hidden = config.get("hidden", [])
    if not isinstance(hidden, list | tuple) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"mlp config 'hidden' must be a list of positive integers, got {hidden!r}")
    num_classes = _positive_int(config, "num_classes")
    if num_classes < 2:
        raise ValueError("mlp config 'num_classes' must be at least 2")
    return MLP(_positive_int(config, "input_dim"), list(hidden), num_classes)


register_architecture("mlp", _mlp_factory)


def save_model(path: str | Path, model: nn.Module, architecture: str, config: Mapping[str, Any]) -> Path:
    """Write the weights and the (architecture, config) that rebuild them; checks that they really do."""
    rebuilt = build_model(architecture, config)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(state, strict=True)  # fails now rather than when an auditor loads the file
    path = Path(path)
    metadata = {ARCH_KEY: architecture, CONFIG_KEY: json.dumps(dict(config), sort_keys=True)}
    save_file(state, str(path), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_model(
    path: str | Path, *, architecture: str | None = None, config: Mapping[str, Any] | None = None
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Rebuild a saved model in eval mode. Explicit ``architecture``/``config`` override the file's metadata."""
    metadata = read_metadata(path)
    name = architecture or metadata.get(ARCH_KEY)
    if name is None:
        raise ValueError(f"{path} names no architecture ('{ARCH_KEY}' metadata); pass architecture=")
    if config is None:
        if CONFIG_KEY not in metadata:
            raise ValueError(f"{path} carries no config ('{CONFIG_KEY}' metadata); pass config=")
        config = json.loads(metadata[CONFIG_KEY])
    model = build_model(name, config)
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()
    return model, name, dict(config)


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Logits for a float array, in eval mode and without gradients (restores the model's mode after).

    ``batch_size`` 1024 bounds activation memory for large query sets; any size gives the same answers.
    """
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            chunk = torch.as_tensor(np.asarray(x[start : start + batch_size], dtype=np.float32))
            out.append(model(chunk).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def predict_labels(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return predict_logits(model, x).argmax(axis=1).astype(np.int64)


def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    logits = predict_logits(model, x).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
