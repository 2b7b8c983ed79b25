"""Parameters of an audit method as a frozen dataclass that round-trips through JSON (reports, artifacts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from typing import Any, ClassVar, Self

from audit.validation import int_in, positive_int

Progress = Callable[[float, str], None]  # (fraction done, what is happening) — every long computation takes one


class JsonConfig:
    """Mixin for frozen dataclasses: ``to_dict``/``from_dict`` (unknown keys refused) and ``coerce``.

    ``TUPLE_FIELDS`` are tuples in the dataclass (hashable, immutable) and lists in JSON.
    """

    LABEL: ClassVar[str] = "config"
    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        for name in self.TUPLE_FIELDS:
            d[name] = list(d[name])
        return d  # type: ignore[no-any-return]

    def _require_positive_ints(self, *names: str) -> None:
        for name in names:
            positive_int(name, getattr(self, name))

    def _require_int_in(self, name: str, low: int, high: int) -> None:
        int_in(name, getattr(self, name), low, high)

    def _require_distinct_names(self, name: str, allowed: tuple[str, ...]) -> None:
        """The field as a tuple (JSON gives a list) of distinct names, each one of ``allowed``, at least one."""
        values = tuple(getattr(self, name))
        object.__setattr__(self, name, values)  # frozen dataclass: __post_init__ normalises through object
        if not values or len(set(values)) != len(values) or any(v not in allowed for v in values):
            raise ValueError(f"{name} must be distinct names from {allowed}, got {values}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Self:
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.LABEL} parameters {sorted(unknown)}")
        for name in cls.TUPLE_FIELDS:
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)

    @classmethod
    def coerce(cls, config: Self | Mapping[str, Any] | None) -> Self:
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        raise ValueError(f"config must be a {cls.__name__} or a dict, got {type(config).__name__}")
