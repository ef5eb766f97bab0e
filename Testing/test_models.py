"""Networks: output shapes for both configs, the Res2Net-50 parameter count, and the DCFF wiring."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from liver_e2net.config import (
    BackboneConfig,
    ModelConfig,
    NetworkConfig,
    base_config,
    lite_config,
    paper_config,
)
from liver_e2net.models import E2NetOutput, Res2Net, build_network, segmentation_logits


@pytest.mark.parametrize("config", [lite_config(), base_config(), paper_config()], ids=["lite", "base", "paper"])
def test_output_shapes(config: ModelConfig) -> None:
    x = torch.randn(2, 1, 96, 128)
    with torch.inference_mode():
        stage1 = build_network(config.stage1).eval()(x)
        stage2 = build_network(config.stage2).eval()(x)
    assert stage1.shape == (2, 1, 96, 128)
    assert isinstance(stage2, E2NetOutput)
    for logits in stage2:
        assert logits.shape == (2, 2, 96, 128)


def test_inference_predicts_what_the_full_forward_predicts() -> None:
    """predict (the pipeline's: E2Net without its side heads) gives the forward's prediction exactly."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 96)
    with torch.inference_mode():
        for config in (lite_config().stage1, lite_config().stage2):
            network = build_network(config).eval()
            assert torch.equal(network.predict(x), segmentation_logits(network(x)))


def test_res2net50_matches_published_architecture() -> None:
    encoder = Res2Net(BackboneConfig(), in_channels=3)
    parameters = sum(p.numel() for p in encoder.parameters())
    assert abs(parameters / 1e6 - 23.65) < 0.05  # timm res2net50_26w_4s without its 1000-class fc
    assert encoder.channels == [64, 256, 512, 1024, 2048]
    features = encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]  # strides 2..32
    assert [info["reduction"] for info in encoder.feature_info] == [2, 4, 8, 16, 32]


def test_edge_branch_changes_fused_output_only_through_dcff() -> None:
    """With DCFF, perturbing the edge branch's encoder changes s1 (refined by edge features) and s2."""
    torch.manual_seed(0)
    config = lite_config().stage2
    results = {}
    for dcff in (True, False):
        network = build_network(dataclasses.replace(config, dcff=dcff)).eval()
        x = torch.randn(1, 1, 64, 64)
        with torch.inference_mode():
            before = network(x)
            for parameter in network.edge_branch.encoder.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
            after = network(x)
        results[dcff] = (before, after)
    before, after = results[True]
    assert not torch.allclose(before.s2, after.s2)
    assert not torch.allclose(before.s1, after.s1)  # DCFF feeds edge features into the segmentation branch
    before, after = results[False]
    assert not torch.allclose(before.s2, after.s2)  # the fusion head still sees the edge branch
    assert torch.equal(before.s1, after.s1)  # without DCFF the segmentation branch is independent of it


def test_r2unet_baseline_has_no_edge_branch() -> None:
    network = build_network(
        NetworkConfig(arch="r2unet", out_channels=2, backbone=lite_config().stage1.backbone)
    )
    assert not hasattr(network, "edge_branch")


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network(NetworkConfig(arch="vnet"))  # type: ignore[arg-type]


def test_config_json_round_trip_and_typos() -> None:
    config = lite_config()
    assert ModelConfig.from_dict(config.to_dict()) == config
    data = config.to_dict()
    data["stage2"]["decoder_chanels"] = 8
    with pytest.raises(ValueError, match="decoder_chanels"):
        ModelConfig.from_dict(data)


def test_batchnorm_fusion_keeps_the_output() -> None:
    from liver_e2net.models.fusion import fuse_batchnorm

    torch.manual_seed(1)
    network = build_network(lite_config().stage2)
    network.train()
    with torch.no_grad():  # a few training-mode passes give BatchNorm non-trivial running statistics
        for _ in range(3):
            network(torch.randn(4, 1, 64, 64))
    network.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        expected = network(x).s2
        fused = fuse_batchnorm(network)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert torch.allclose(fused(x).s2, expected, atol=1e-4)
