"""Checkpoints: round trip, fp16 storage, and refusal of missing, corrupt, foreign and future files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from liver_e2net.checkpoint import FORMAT_VERSION, load_checkpoint, random_checkpoint, save_checkpoint
from liver_e2net.config import lite_config
from liver_e2net.errors import UserInputError
from liver_e2net.pipeline import Segmenter


def test_round_trip_keeps_config_weights_and_metadata(tmp_path: Path) -> None:
    original = random_checkpoint(lite_config(), seed=3, training_cases=["a", "b"], epochs=4)
    path = save_checkpoint(original, tmp_path / "model.pt")
    loaded = load_checkpoint(path)
    assert loaded.config == original.config
    assert loaded.metadata["training_cases"] == ["a", "b"]
    for key, value in original.stage2.items():
        assert torch.equal(loaded.stage2[key], value)
    assert "2 training cases" in loaded.describe() and "4 epochs" in loaded.describe()


def test_half_precision_storage_loads_as_float32(tmp_path: Path) -> None:
    original = random_checkpoint(lite_config())
    loaded = load_checkpoint(save_checkpoint(original, tmp_path / "half.pt", half=True))
    assert loaded.stage1["head.conv.weight"].dtype == torch.float16
    stage1, _ = loaded.build()
    weight = stage1.head.conv.weight
    assert weight.dtype == torch.float32
    assert torch.allclose(weight, original.stage1["head.conv.weight"], atol=1e-3)


def test_weights_that_are_or_would_become_inf_are_never_written(tmp_path: Path) -> None:
    checkpoint = random_checkpoint(lite_config())
    name = next(k for k in checkpoint.stage2 if k.endswith("running_var"))
    checkpoint.stage2[name][0] = 1e6  # finite in fp32, inf in fp16
    save_checkpoint(checkpoint, tmp_path / "full.pt")
    assert load_checkpoint(tmp_path / "full.pt").stage2[name][0] == 1e6
    with pytest.raises(UserInputError, match=f"stage 2 weights {name} reach 1e\\+06, beyond fp16.*--full-precision"):
        save_checkpoint(checkpoint, tmp_path / "half.pt", half=True)
    next(v for v in checkpoint.stage1.values() if v.is_floating_point()).fill_(float("nan"))
    with pytest.raises(UserInputError, match="stage 1 weights .* hold inf or NaN"):
        save_checkpoint(checkpoint, tmp_path / "nan.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.pt"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path: Path) -> None:
    path = save_checkpoint(random_checkpoint(lite_config()), tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserInputError, match="not a readable"):
        load_checkpoint(path)


def test_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(UserInputError, match="missing keys"):
        load_checkpoint(path)


def test_wrong_format_version(tmp_path: Path) -> None:
    path = save_checkpoint(random_checkpoint(lite_config()), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(UserInputError, match="format version"):
        load_checkpoint(path)


def test_weights_that_do_not_match_config(tmp_path: Path) -> None:
    path = save_checkpoint(random_checkpoint(lite_config()), tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["stage2"]["decoder_channels"] = 24
    torch.save(payload, path)
    with pytest.raises(UserInputError, match="do not match"):
        load_checkpoint(path)
    with pytest.raises(UserInputError, match=f"{path}: weights do not match"):  # the Segmenter's one build
        Segmenter(path, device="cpu")


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "evil": Payload()}, path)
    with pytest.raises(UserInputError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
