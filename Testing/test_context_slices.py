"""Inter-slice context (2.5D input of 1, 3 or 5 adjacent slices) and the plain edge target of the ablation."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from core_helpers import REPO, SAMPLE_CT, SAMPLE_LABEL
from liver_e2net import cli
from liver_e2net.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint
from liver_e2net.config import ModelConfig, lite_config, with_context_slices
from liver_e2net.errors import UserInputError
from liver_e2net.io import read_ct
from liver_e2net.pipeline import Segmenter, TestTimeAugmentation
from liver_e2net.preprocessing import Box, context_stack, normalize_hu, resize, to_network_frame
from liver_e2net.progress import null_reporter
from liver_e2net.training import CasePaths, TrainConfig
from liver_e2net.training import samples as samples_module
from liver_e2net.training.cache import prepare_cases
from liver_e2net.training.samples import Stage1Samples, Stage2Samples
from liver_e2net.training.targets import edge_distance_map, edge_targets
from test_training import TINY

TINY3 = with_context_slices(TINY, 3)
PLAIN = TrainConfig(augment=dataclasses.replace(TrainConfig().augment, enabled=False))


def numbered_volume(depth: int = 6) -> np.ndarray:
    """[z, y, x] int16 volume whose slice z holds the value z: channels show which slice they came from."""
    return np.broadcast_to(np.arange(depth, dtype=np.int16)[:, None, None], (depth, 3, 4)).copy()


# -- the stacking function and the config ---------------------------------------------------------------


def test_context_stack_orders_channels_and_repeats_the_end_slices():
    volume = numbered_volume()
    stack = context_stack(volume, [0, 1, 3, 5], 5)
    assert stack.shape == (4, 5, 3, 4) and stack.dtype == np.int16
    np.testing.assert_array_equal(
        stack[:, :, 0, 0], [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [1, 2, 3, 4, 5], [3, 4, 5, 5, 5]]
    )
    np.testing.assert_array_equal(context_stack(volume, range(6), 3)[:, :, 1, 2], [
        [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 5]
    ])  # fmt: skip
    np.testing.assert_array_equal(context_stack(volume, [2, 4], 1), volume[[2, 4]][:, None])
    one_slice = np.zeros((1, 2, 2), np.int16)
    assert context_stack(one_slice, [0], 5).shape == (1, 5, 2, 2)  # a single slice repeats into every channel
    with pytest.raises(UserInputError, match="use one of 1, 3, 5"):
        context_stack(volume, [0], 2)
    with pytest.raises(IndexError, match="outside a volume of 6 slices"):
        context_stack(volume, [6], 3)


def test_config_records_context_and_old_configs_load_as_a_single_slice():
    config = with_context_slices(lite_config(), 5)
    assert config.preprocessing.context_slices == config.stage1.in_channels == config.stage2.in_channels == 5
    assert ModelConfig.from_dict(config.to_dict()) == config
    old = lite_config().to_dict()
    del old["preprocessing"]["context_slices"]  # as written before the option existed
    assert ModelConfig.from_dict(old).preprocessing.context_slices == 1
    bundled = load_checkpoint(REPO / "Resources" / "Models" / "liver_e2net_lite.pt")
    assert bundled.config.preprocessing.context_slices == 1
    with pytest.raises(UserInputError, match="--context-slices 2: use one of 1, 3, 5"):
        with_context_slices(lite_config(), 2)
    with pytest.raises(UserInputError, match="stage2 in_channels 1 differs from context_slices 5"):
        dataclasses.replace(config, stage2=lite_config().stage2)


def test_checkpoint_whose_weights_disagree_with_its_context_is_refused_by_name(tmp_path):
    two_d = random_checkpoint(lite_config())
    mixed = dataclasses.replace(two_d, config=with_context_slices(lite_config(), 3))
    path = save_checkpoint(mixed, tmp_path / "mixed.pt")
    with pytest.raises(UserInputError, match="context_slices 3") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "stage1" in str(error.value)
    assert "1 input channel" in str(error.value)
    # A stored config whose stages disagree with its own context_slices names the file as well.
    payload = torch.load(save_checkpoint(two_d, tmp_path / "edited.pt"), weights_only=True)
    payload["config"]["preprocessing"]["context_slices"] = 3
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(UserInputError, match="edited.pt: the stored model config is invalid"):
        load_checkpoint(tmp_path / "edited.pt")


# -- inference --------------------------------------------------------------------------------------------


def test_stage2_neighbours_come_from_the_volume_beyond_the_box(monkeypatch):
    segmenter = Segmenter(random_checkpoint(TINY3), device="cpu", threads=1, stage2_batch=4)
    volume, _ = to_network_frame(read_ct(SAMPLE_CT))
    depth, height, width = volume.array.shape
    inputs = []
    run = segmenter._run
    monkeypatch.setattr(segmenter, "_run", lambda network, batch: inputs.append(batch) or run(network, batch))

    def network_input(z: int) -> torch.Tensor:
        hu = torch.from_numpy(volume.array[z, 10:60, 20:90].copy())[None, None]
        return resize(normalize_hu(hu, (-100.0, 240.0)), (64, 64))[0, 0]

    with torch.inference_mode():  # as segment() runs it
        probabilities = segmenter._stage2(volume, Box(10, 14, 10, 60, 20, 90), null_reporter)
    assert probabilities.shape == (2, 4, 50, 70) and len(inputs) == 1 and inputs[0].shape == (4, 3, 64, 64)
    torch.testing.assert_close(inputs[0][0, 0], network_input(9))  # below the box, not the box's first slice
    torch.testing.assert_close(inputs[0][3, 2], network_input(14))  # above the box
    inputs.clear()
    with torch.inference_mode():
        segmenter._stage2(volume, Box(depth - 2, depth, 10, 60, 20, 90), null_reporter)
    torch.testing.assert_close(inputs[0][1, 2], network_input(depth - 1))  # the top slice repeated
    torch.testing.assert_close(inputs[0][1, 1], network_input(depth - 1))


# -- training samples -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_cases(tmp_path_factory):
    return prepare_cases([CasePaths("sample", SAMPLE_CT, SAMPLE_LABEL)], tmp_path_factory.mktemp("cache"))


def test_samples_stack_context_slices_around_the_same_slice(sample_cases):
    for samples_class in (Stage1Samples, Stage2Samples):
        single, context = samples_class(sample_cases, TINY, PLAIN), samples_class(sample_cases, TINY3, PLAIN)
        for index in range(3):
            image, *targets = context[index]
            reference, *reference_targets = single[index]
            assert image.shape[0] == 3 and image.shape[1:] == reference.shape[1:]
            torch.testing.assert_close(image[1:2], reference)  # the middle channel is the sample's slice
            for target, expected in zip(targets, reference_targets):
                torch.testing.assert_close(target, expected)
        assert len(context.calibration()[0][0]) == 3  # BatchNorm calibration sees the same input


def test_synthetic_tumor_neighbours_come_from_the_painted_slab(sample_cases, monkeypatch):
    painted = []

    def paint(ct, label, spacing, rng, config, donors=()):
        """Stand-in painter: slab slice k becomes 10 k HU everywhere, so each channel shows its slab slice."""
        slab = np.broadcast_to((10 * np.arange(len(ct)))[:, None, None], ct.shape).astype(np.int16)
        painted.append(len(ct))
        return slab, np.array(label), []

    monkeypatch.setattr(samples_module, "insert_tumors_slab", paint)
    config = dataclasses.replace(PLAIN, synthetic_tumors=1.0)
    samples = Stage2Samples(sample_cases, with_context_slices(TINY, 5), config)
    for index in range(4):
        count = len(painted)
        image = samples[index][0]
        if len(painted) == count:
            continue  # no liver on this slice: the real slab is kept
        hu = normalize_hu_inverse(image.mean(dim=(1, 2)).numpy())
        centre, length = int(round(hu[2] / 10)), painted[-1]
        expected = 10 * np.clip(centre + np.arange(-2, 3), 0, length - 1)
        np.testing.assert_allclose(hu, expected, atol=0.05)
    assert painted, "no sample was painted"


def normalize_hu_inverse(value: np.ndarray, window=(-100.0, 240.0)) -> np.ndarray:
    return (value + 1.0) / 2.0 * (window[1] - window[0]) + window[0]


# -- edge targets ----------------------------------------------------------------------------------------


def test_plain_edge_target_is_the_binary_border_band_of_the_mask():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    tumor = np.zeros((9, 9), bool)
    tumor[4, 4] = True
    plain, distance = edge_targets(np.stack([mask, tumor]), "plain"), edge_targets(np.stack([mask, tumor]))
    ring = mask.copy()
    ring[3:6, 3:6] = False  # the square's 1-pixel border
    np.testing.assert_array_equal(plain[0], ring.astype(np.float32))
    np.testing.assert_array_equal(plain[1], tumor.astype(np.float32))  # a one-pixel mask is all edge
    assert set(np.unique(plain).tolist()) == {0.0, 1.0} and plain.dtype == np.float32
    np.testing.assert_array_equal(distance[0], edge_distance_map(mask))
    np.testing.assert_array_equal(plain[0], (distance[0] == 1).astype(np.float32))  # where distance peaks
    assert 0 < distance[0][3, 3] < 1 and plain[0][3, 3] == 0
    with pytest.raises(ValueError, match="use one of distance, plain"):
        edge_targets(np.stack([mask]), "thick")
    with pytest.raises(UserInputError, match="--edge-target 'thick'"):
        TrainConfig(edge_target="thick")


def test_stage2_samples_with_plain_edges(sample_cases):
    samples = Stage2Samples(sample_cases, TINY, dataclasses.replace(PLAIN, edge_target="plain"))
    _, masks, edges = samples[0]
    assert set(torch.unique(edges).tolist()) == {0.0, 1.0}
    assert edges[masks == 0].abs().max() == 0  # the band lies inside the mask
    eroded = torch.nn.functional.max_pool2d(1 - masks[None], 3, stride=1, padding=1)[0] == 0
    assert not (edges.bool() & eroded).any()  # ... and on its border


# -- command line: train, serve, info, refusals ---------------------------------------------------------


def test_train_with_context_3_records_it_and_serves_it(tmp_path, capsys):
    """Two steps per stage with 3 context slices on the small real sample CT (a copy validates)."""
    for name in ("a", "b"):
        shutil.copy(SAMPLE_CT, tmp_path / f"{name}_ct.nii.gz")
        shutil.copy(SAMPLE_LABEL, tmp_path / f"{name}_label.nii.gz")
    pairs = [str(tmp_path / f"{n}_{kind}.nii.gz") for n in ("a", "b") for kind in ("ct", "label")]
    options = "--epochs 1 --steps-per-epoch 2 --batch-size 2 --bn-calibration-samples 2 --val-cases b".split()
    runtime = ["--device", "cpu", "--threads", "1", "--cache", str(tmp_path / "cache"), "--progress", "none"]
    arguments = ["train", "--case", *pairs[:2], "--case", *pairs[2:], "-o", str(tmp_path / "run")]
    code = cli.main([*arguments, "--context-slices", "3", "--edge-target", "plain", *options, *runtime])
    assert code == 0, capsys.readouterr().err
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert checkpoint.config == with_context_slices(lite_config(), 3)
    assert checkpoint.stage2["seg_branch.encoder.stem.0.weight"].shape[1] == 3
    assert checkpoint.metadata["train_config"]["edge_target"] == "plain"

    checkpoint.stage1["head.conv.bias"] = torch.tensor([4.0])  # find 'liver' so that stage 2 runs
    image = read_ct(SAMPLE_CT)[:, :, 20:30]
    tta = TestTimeAugmentation.from_mode("flip")
    result = Segmenter(checkpoint, device="cpu", threads=1, tta=tta).segment(image, probabilities=True)
    assert result.label.shape == sitk.GetArrayViewFromImage(image).shape
    assert np.isfinite(result.probabilities).all() and result.seconds["stage2"] > 0

    assert cli.main(["info", "--model", str(tmp_path / "run" / "best.pt"), "--device", "cpu"]) == 0
    assert "3 adjacent slices per input (z-1..z+1)" in capsys.readouterr().out


def test_init_from_a_single_slice_model_starts_a_3_slice_one_that_computes_the_same(tmp_path):
    """--init a 1-slice checkpoint with --context-slices 3: the neighbour channels start at zero, so the widened
    networks give the checkpoint's outputs until training moves them."""
    from liver_e2net.models import build_network, segmentation_logits
    from liver_e2net.training import Trainer
    from liver_e2net.training.resolve import inflate_context
    from test_training import QUICK, phantom

    single = random_checkpoint(TINY, seed=2)
    old, new = build_network(TINY.stage2).eval(), build_network(TINY3.stage2).eval()
    old.load_state_dict(single.stage2)
    new.load_state_dict(inflate_context(single.stage2, new.state_dict()))
    slices = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            segmentation_logits(new(slices)), segmentation_logits(old(slices[:, 1:2])), rtol=0, atol=1e-5
        )
    with pytest.raises(UserInputError, match="only more context slices"):
        inflate_context(new.state_dict(), old.state_dict())

    path = save_checkpoint(single, tmp_path / "single.pt")
    cases = [phantom("a"), phantom("b", 1)]
    result = Trainer(cases, tmp_path / "run", dataclasses.replace(QUICK, stages=(2,)), init=path,
                     model_config=TINY3, device="cpu", cache=tmp_path / "cache").run()
    tuned = load_checkpoint(result.last)
    assert tuned.config == TINY3 and tuned.stage1["branch.encoder.stem.0.weight"].shape[1] == 3
    torch.testing.assert_close(tuned.stage1["branch.encoder.stem.0.weight"][:, 1:2], single.stage1["branch.encoder.stem.0.weight"])
    assert not tuned.stage1["branch.encoder.stem.0.weight"][:, [0, 2]].any()  # stage 1 not trained: still zero


@pytest.mark.parametrize(
    "option, value, message",
    [("--context-slices", "2", "use one of 1, 3, 5"), ("--edge-target", "thick", "invalid choice: 'thick'")],
)
def test_bad_values_exit_2_with_a_message(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", str(tmp_path), "-o", str(tmp_path / "run"), option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and message in err
