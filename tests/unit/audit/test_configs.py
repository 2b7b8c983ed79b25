"""The fields both dataset-inference configs share (audit.configs.DatasetInferenceFields)."""

from __future__ import annotations

import pytest

from audit.blind_walk import BlindWalkConfig
from audit.configs import DatasetInferenceFields
from audit.mingd import MinGDConfig

CONFIGS = (BlindWalkConfig, MinGDConfig)


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_shared_fields_are_checked_for_both_embeddings(config_cls: type[DatasetInferenceFields]) -> None:
    for bad in (
        {"batch_size": 0},
        {"n_regressor": 0},
        {"n_revealed": -1},
        {"regressor_c": 0.0},
        {"regressor_c": float("nan")},
        {"n_revealed": True},
        {"clip": True, "input_low": 1.0, "input_high": 1.0},
    ):
        with pytest.raises(ValueError):
            config_cls(**bad)  # type: ignore[arg-type]
    config = config_cls(n_regressor=7, regressor_c=2.0, use_correctness=False)
    assert config_cls.from_dict(config.to_dict()) == config


def test_shared_fields_stay_out_of_the_positional_order() -> None:
    """The base's fields are keyword-only: each config's first positional field is still its own."""
    assert BlindWalkConfig(4).directions_per_family == 4
    assert MinGDConfig(("l2",)).norms == ("l2",)
    with pytest.raises(TypeError):
        BlindWalkConfig(4, ("gaussian",), 0.05, 16.0, 6, False, 0, 0.0)  # type: ignore[misc]
