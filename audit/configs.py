"""Parameters of an audit method as a frozen dataclass that round-trips through JSON (reports, artifacts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Self

from audit.validation import int_in, positive_float, positive_int

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


@dataclass(frozen=True, kw_only=True)
class DatasetInferenceFields(JsonConfig):
    """The fields both dataset-inference embeddings' configs share (``BlindWalkConfig``, ``MinGDConfig``):
    dataset inference runs the same regressor and test on either embedding. Defaults are for digits in
    [0, 1]^64, and why:

    - ``input_low``/``input_high`` 0/1: the input box probes are clipped to when the config's ``clip`` is on.
    - ``batch_size`` 8192 rows per model call: one ``labels()`` call of the Blind Walk (~2 MB of float32 per
      request to an HTTP suspect) or one forward/backward pass of MinGD (a few MB of activations for an MLP).
    - ``n_regressor`` 100 and ``n_revealed`` 150 samples per side: the regressor's training set (it has only a
      handful of weights) and the most samples an audit can reveal (m); power grows like √m, and digits' public
      split (450 rows) holds both. With less data each part gets half of what there is.
    - ``regressor_c`` 0.1: L2 strength of the non-negative logistic regression; 0.1 vs 1.0 moved the owner's
      mean t by < 0.1.
    - ``use_correctness`` True: whether the suspect labels x correctly, beside the distances (see
      ``audit.dataset_inference``).
    - ``between_data_sd`` 1.0: the standard deviation, in units of the Welch t, allowed for the shift a model on
      another party's data brings that the registration's nulls cannot show (added in quadrature to the
      parametric null's prediction variance, ``audit.di_statistics.parametric_null``). Measured on digits seeds
      0–15: models on the attacker's half sat +0.51 above the nulls on average, spread 0.79 across seeds, root mean
      square 0.94 (docs/benchmarks.md "An allowance for another party's data"). 0 gives the unadjusted null.

    Keyword-only: a base dataclass's fields come first, and these would otherwise take the front of each
    config's positional order.
    """

    input_low: float = 0.0
    input_high: float = 1.0
    batch_size: int = 8192
    n_regressor: int = 100
    n_revealed: int = 150
    regressor_c: float = 0.1
    use_correctness: bool = True
    between_data_sd: float = 1.0

    def __post_init__(self) -> None:
        self._require_positive_ints("batch_size", "n_regressor", "n_revealed")
        positive_float("regressor_c", self.regressor_c)
        sd = self.between_data_sd
        if isinstance(sd, bool) or not isinstance(sd, int | float) or not 0.0 <= float(sd) <= 10.0:
            raise ValueError(f"between_data_sd must be a number in [0, 10], got {sd!r}")
