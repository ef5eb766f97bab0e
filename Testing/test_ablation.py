"""benchmarks/ablation.py at a tiny budget on the small real sample CT: its table and results come from real
trainings and measurements, a finished ablation resumes without redoing anything, bad input exits 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from core_helpers import REPO, SAMPLE_CT, SAMPLE_LABEL
from liver_e2net import metrics
from liver_e2net.checkpoint import load_checkpoint, random_checkpoint
from liver_e2net.config import lite_config
from liver_e2net.models import build_network
from liver_e2net.training import read_state
from liver_e2net.training.synthetic_tumors import SyntheticTumorConfig, insert_tumors

sys.path.insert(0, str(REPO / "benchmarks"))
import ablation  # noqa: E402
import ablation_models  # noqa: E402
import ablation_report  # noqa: E402

BUNDLED = REPO / "Resources" / "Models" / "liver_e2net_lite.pt"
TINY_BUDGET = [
    "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--bn-calibration-samples", "2",
    "--tta", "flip", "--robustness-sizes", "12", "--robustness-seeds", "1", "--fp-synthetic-copies", "0",
    "--fp-trees", "8", "--device", "cpu", "--threads", "1",
]  # fmt: skip
VARIANTS = "stage1,baseline,context3"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Cases a and b (training, validation): 16 liver slices of the sample CT; t (test): the same slices with a
    painted 15 mm tumor, so that the tumor metrics are defined."""
    if not BUNDLED.exists():
        pytest.skip(f"{BUNDLED} absent: the ablation shares its stage 1")
    folder = tmp_path_factory.mktemp("data")
    ct, label = (sitk.ReadImage(str(path))[:, :, 36:52] for path in (SAMPLE_CT, SAMPLE_LABEL))
    for name in ("a", "b"):
        sitk.WriteImage(ct, str(folder / f"{name}_ct.nii.gz"))
        sitk.WriteImage(label, str(folder / f"{name}_label.nii.gz"))
    config = SyntheticTumorConfig(
        count_range=(1, 1), size_classes_mm=((15.0, 15.0),), size_class_weights=(1.0,)
    )
    arrays = [sitk.GetArrayFromImage(image) for image in (ct, label)]
    painted_ct, painted_label, _ = insert_tumors(*arrays, ct.GetSpacing(), np.random.default_rng(0), config)
    for array, reference, kind in ((painted_ct, ct, "ct"), (painted_label, label, "label")):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(folder / f"t_{kind}.nii.gz"))
    return folder


def arguments(data, out, *extra):
    cases = ["--data", str(data), "--train-cases", "a", "--val-case", "b", "--test-case", "t"]
    return [*cases, "--out", str(out), "--variants", VARIANTS, *TINY_BUDGET, *extra]


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """The script sets this process's torch threads (--threads 1): later test files keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ablation_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation") / "out"
    return out, ablation.main(arguments(data, out))


def test_results_and_table_come_from_the_real_runs(ablation_run, data):
    out, code = ablation_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = {row["variant"]: row for row in results["variants"]}
    assert [key for key, row in rows.items() if row["status"] == "done"] == VARIANTS.split(",")
    assert {rows[key]["status"] for key in ("edge", "dist", "edge-dcff", "e2net")} == {
        "not run"
    }  # paper rows
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "t_label.nii.gz")))
    for key in VARIANTS.split(","):
        row = rows[key]
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(row["prediction"]))
        assert row["liver_dice"] == pytest.approx(metrics.dice(predicted >= 1, reference >= 1))
        assert row["seconds_per_case"] > 0
    baseline, context = rows["baseline"], rows["context3"]
    assert baseline["tumor_dice"] == pytest.approx(metrics.dice(
        sitk.GetArrayFromImage(sitk.ReadImage(baseline["prediction"])) == 2, reference == 2))  # fmt: skip
    assert rows["stage1"]["tumor_dice"] is None and rows["stage1"]["training_minutes"] is None
    run = out / "runs" / "r2unet"
    assert baseline["training_minutes"] == round(read_state(run)["seconds"] / 60, 2)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["steps"], set(r["train"])) for r in records] == [("stage2", 2, {"s"})]
    assert [r["trials"] for r in baseline["robustness"] if "error" not in r] in ([], [1])
    assert context["tta"] == "flip" and (
        context["fp_filter"] or "could not be trained" in context["notes"][0]
    )

    table = (out / "ablation.md").read_text()
    assert f"| Baseline: stage-2 R2UNet | 96.1 / 71.4 | {baseline['liver_dice']:.3f} | " in table
    assert (
        f"{rows['stage1']['liver_dice']:.3f}" in table
        and "| + dist + DCFF | 97.8 / 74.8 | not run |" not in table
    )
    assert "| + DCFF (= E2Net) | 97.8 / 74.8 | not run |" in table and "| 95.3 / - |" in table
    assert "The second stage is essential" in table and f"{baseline['training_minutes']:.1f}" in table


def test_models_share_the_bundled_stage1_and_context3_widens_it(ablation_run):
    out, _ = ablation_run
    bundled = load_checkpoint(BUNDLED).stage1
    baseline = load_checkpoint(out / "models" / "r2unet.pt")
    assert baseline.config.stage2.arch == "r2unet" and baseline.config.preprocessing.context_slices == 1
    torch.testing.assert_close(baseline.stage1["head.conv.weight"], bundled["head.conv.weight"].float())
    context = load_checkpoint(out / "models" / "e2net-distance-dcff-context3.pt")
    assert context.config.stage2.dcff and context.config.preprocessing.context_slices == 3
    stem = context.stage1["branch.encoder.stem.0.weight"]
    torch.testing.assert_close(stem[:, 1], bundled["branch.encoder.stem.0.weight"][:, 0].float())
    assert not stem[:, [0, 2]].any()


def test_a_finished_ablation_resumes_without_redoing_anything(ablation_run, data, capsys):
    out, _ = ablation_run
    model = out / "models" / "r2unet.pt"
    stamp, before = model.stat().st_mtime_ns, (out / "results.json").read_text()
    assert ablation.main(arguments(data, out)) == 2
    assert "holds an ablation already" in capsys.readouterr().err
    assert ablation.main(arguments(data, out, "--resume-friendly")) == 0
    assert model.stat().st_mtime_ns == stamp
    after = json.loads((out / "results.json").read_text())
    assert after["variants"] == json.loads(before)["variants"]
    assert ablation.main(arguments(data, out, "--resume-friendly", "--epochs", "2")) == 2
    assert "epochs differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (["--variants", "baseline,bogus"], "--variants bogus: choose from"),
        (["--test-case", "a"], "--test-case a is also a training or validation case"),
        (["--val-case", "missing"], "missing_ct.nii.gz not found"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(data, tmp_path, capsys, change, message):
    out = tmp_path / "out"
    assert ablation.main([*arguments(data, out), *change]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_widened_stage1_computes_what_the_single_slice_one_did():
    checkpoint = random_checkpoint(lite_config(), seed=1)
    single = build_network(lite_config().stage1).eval()
    single.load_state_dict(checkpoint.stage1)
    wide_config = ablation.variant_config(lite_config(), ablation.BY_KEY["context3"]).stage1
    wide = build_network(wide_config).eval()
    wide.load_state_dict(ablation_models.widen_input(checkpoint.stage1, 3))
    slices = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(wide(slices), single(slices[:, 1:2]), rtol=1e-4, atol=1e-5)


def test_findings_call_ties_and_reversals():
    rows = [
        {"variant": "baseline", "status": "done", "liver_dice": 0.90, "tumor_dice": 0.0},
        {"variant": "edge", "status": "done", "liver_dice": 0.92, "tumor_dice": 0.0},
        {"variant": "dist", "status": "done", "liver_dice": 0.91, "tumor_dice": 0.001},
    ]
    text = "\n".join(ablation_report.findings(rows))
    assert "0.900 -> 0.920 (+2.0 points, holds)" in text
    assert "0.920 -> 0.910 (-1.0 points, reversed)" in text and "0.000 -> 0.001 (+0.1 points, tie)" in text
    assert "1st stage -> Baseline (2nd stage): paper +0.8 points, here not run" in text
