"""Crafted small files that made loaders allocate hundreds of MiB or raise a RecursionError: each is now
refused by a format check before anything large is allocated, and the child-process check holds its limits."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from audit.suspects.base import SuspectError
from audit.suspects.isolated import check_in_child
from audit.suspects.loader import load_suspect_file
from tests.utils import hostile_models

CASES: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("safetensors", hostile_models.safetensors_asking_for_a_huge_architecture, "parameters", "architecture"),
    ("safetensors", hostile_models.safetensors_with_a_nested_header, "nested too deeply", "nested"),
    ("onnx", hostile_models.onnx_constant_of_shape, "elements", "constant-of-shape"),
    ("skops", hostile_models.skops_zip_bomb, "-fold", "zip-bomb"),
]


@pytest.mark.parametrize(("fmt", "make", "reason", "name"), CASES, ids=[c[3] for c in CASES])
def test_each_hostile_file_is_refused_before_it_allocates(
    fmt: str, make: Callable[[], bytes], reason: str, name: str
) -> None:
    data = make()
    assert len(data) < 400 * 1024  # small files, large demands
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SuspectError, match=reason):
        load_suspect_file(data, fmt)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    # The libraries' own imports may land here on first use (torch ~190 MiB); the bombs asked for 128-600 MiB.
    assert grown_mib < 220, grown_mib


def test_the_child_holds_its_memory_limit(tmp_path: Path) -> None:
    # 128 MiB of address space cannot even hold the loader's imports: the child fails, the caller gets a
    # SuspectError naming the failure, and nothing propagates as a crash.
    path = tmp_path / "model.onnx"
    path.write_bytes(hostile_models.onnx_constant_of_shape(4))
    with pytest.raises(SuspectError, match="memory|could not be loaded|MemoryError"):
        check_in_child(path, "onnx", memory_bytes=128 * 1024**2)
