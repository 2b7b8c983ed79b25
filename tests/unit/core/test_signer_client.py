"""Who signs (``services.core.signer_client``): the signer service when configured, the key in process only
outside prod; a signer URL without a real token is refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.signing import OWNERSHIP_AUDIT_PREDICATE, LocalSigner, load_or_create_signing_key, verify_envelope
from services.core.settings import Settings
from services.core.signer_client import RemoteSigner, SignerNotConfigured, require_signer, signer_for

SUBJECTS = [{"name": "m", "digest": {"sha256": "cd" * 32}}]


def test_prod_without_a_signer_url_refuses_and_never_touches_a_key(tmp_path: Path) -> None:
    settings = Settings(env="prod", admin_token="a-real-admin-token", answer_watermark_mode="off", data_dir=tmp_path)
    with pytest.raises(SignerNotConfigured, match="MODELCUSTODY_SIGNER_URL"):
        require_signer(settings)
    with pytest.raises(SignerNotConfigured):
        signer_for(settings)
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize("env", ["dev", "demo", "test"])
def test_outside_prod_without_a_url_signs_in_process(env: str, tmp_path: Path) -> None:
    signer = signer_for(Settings(env=env, data_dir=tmp_path))  # type: ignore[arg-type]
    assert isinstance(signer, LocalSigner)
    envelope = signer.sign({"x": 1}, SUBJECTS, OWNERSHIP_AUDIT_PREDICATE)
    assert verify_envelope(envelope, signer.public_key_pem())["predicate"] == {"x": 1}


def test_a_configured_signer_url_is_used_even_outside_prod(tmp_path: Path) -> None:
    settings = Settings(env="test", data_dir=tmp_path, signer_url="http://127.0.0.1:1", signer_token="t0ken-shared")
    assert isinstance(signer_for(settings), RemoteSigner)
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize("token", ["", "changethis", "secret"])
def test_signing_through_a_signer_url_needs_a_real_token_in_every_env(token: str) -> None:
    settings = Settings(env="dev", signer_url="http://signer:8090", signer_token=token)  # the API's case: fine
    with pytest.raises(SignerNotConfigured, match="MODELCUSTODY_SIGNER_TOKEN"):
        require_signer(settings)
    with pytest.raises(SignerNotConfigured, match="MODELCUSTODY_SIGNER_TOKEN"):
        signer_for(settings)


def test_local_signer_refuses_unknown_predicate_types(tmp_path: Path) -> None:
    signer = LocalSigner(load_or_create_signing_key(tmp_path / "k.pem"))
    with pytest.raises(ValueError, match="not one of ours"):
        signer.sign({}, SUBJECTS, "https://slsa.dev/provenance/v1")
