"""The real model's install: idempotent, atomic, a clear error when missing (eval.realworld.install)."""

from __future__ import annotations

import pytest

from eval.realworld import install as inst
from eval.realworld import paths


def test_missing_model_error_names_the_install_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ALPHAEDIT_CACHE", str(tmp_path))
    with pytest.raises(paths.RealModelMissingError, match=r"python -m eval.realworld install"):
        paths.require_model()
    assert paths.model_dir() == tmp_path / "models" / paths.MODEL_NAME


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ALPHAEDIT_CACHE", str(tmp_path))

    def broken(gguf, out):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(inst, "convert", broken)
    with pytest.raises(OSError, match="disk full"):
        inst.install()
    models = tmp_path / "models"
    assert not paths.model_dir().exists() and list(models.iterdir()) == []


@pytest.mark.integration
def test_install_is_idempotent_and_matches_its_manifest() -> None:
    """The project's own install (make setup ran it): a second run changes nothing, files verify."""
    folder, manifest, changed = inst.install()
    assert not changed and folder == paths.model_dir()
    assert inst.verify(folder) == manifest
    assert manifest["model"]["architecture"] == "LlamaForCausalLM" and manifest["model"]["layers"] == 30
    assert manifest["dtype"] == "float32" and set(manifest["files"]) >= {"config.json", "model.safetensors"}
