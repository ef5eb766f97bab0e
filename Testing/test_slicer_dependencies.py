"""Installing what Slicer's Python lacks (LiverE2NetLib/Dependencies.py), with the stand-ins of
slicer_standins/packages.py in place of pip, PyTorch Utils and the message boxes: an "install" makes a module
importable in a temporary folder, so the real code sees it appear. Then the panels' hooks: a declined install runs
nothing. These check the logic and wiring, not Slicer's dialogs or a real download."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tomllib

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture
def packages(mrmlScene, qtApplication, tmp_path, monkeypatch):
    from slicer_standins.packages import PackageStandIns

    standIns = PackageStandIns(tmp_path / "site-packages", torchModule="standin_torch").install(monkeypatch)
    yield standIns
    for path in standIns.sitePackages.glob("*.py"):  # "uninstalled" again for the next test
        sys.modules.pop(path.stem, None)


def missing(name: str, optional: bool = False):
    """A requirement nothing here provides (torch: imported as `standin_torch`, which the stand-in installs)."""
    from LiverE2NetLib.Dependencies import Requirement

    return Requirement(name, ">=2.3" if name == "torch" else ">=1.0", optional,
                       module="standin_torch" if name == "torch" else "")


def test_requirements_are_pyprojects_dependencies():
    from liver_e2net import protocol

    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    assert list(protocol.RUNTIME_REQUIREMENTS) == pyproject["project"]["dependencies"]
    assert list(protocol.PLOT_REQUIREMENTS) == pyproject["project"]["optional-dependencies"]["plots"]


def test_nothing_missing_asks_nothing(packages):
    from LiverE2NetLib.Dependencies import NOTHING, DependencyInstaller, missingMessage

    outcome = DependencyInstaller().ensure()  # the real list: everything is installed in this environment
    assert (outcome.status, outcome.message, outcome.ready) == (NOTHING, "", True)
    assert packages.questions == packages.pipCalls == packages.torchCalls == [] and missingMessage() == ""


def test_a_missing_package_is_installed_under_constraints_that_keep_slicers_own(packages):
    import importlib.metadata

    from LiverE2NetLib.Dependencies import INSTALLED, DependencyInstaller, missingRequirements

    calls = []
    installer = DependencyInstaller([*missingRequirements(), missing("scikit-standin")], onInstalled=lambda: calls.append(1))
    outcome = installer.ensure()
    assert outcome.status == INSTALLED and outcome.ready and outcome.message == "Installed scikit-standin."
    assert len(packages.questions) == 1 and "scikit-standin" in packages.questions[0][0]
    assert packages.questions[0][1] == "- scikit-standin>=1.0"
    # Only what is missing goes to pip, under a constraints file.
    assert len(packages.pipCalls) == 1 and packages.pipCalls[0][0] == "--constraint"
    assert packages.pipCalls[0][2:] == ["scikit-standin>=1.0"]
    pins = packages.constraints[0].split()
    for name in ("numpy", "SimpleITK", "torch"):
        assert f"{name}=={importlib.metadata.version(name)}" in pins  # Slicer's own, as installed
    assert "scipy==1.17.1" in pins and "tqdm==4.70.1" in pins  # the tested versions, from constraints.txt
    assert sum(pin.lower().startswith("torch") for pin in pins) == 1
    assert __import__("scikit_standin").INSTALLED_BY_STAND_IN and calls == [1]
    assert packages.messages == [("info", "Installed scikit-standin.")]
    assert installer.ensure().status == "nothing" and len(packages.questions) == 1  # not asked again


def test_declined_installs_nothing_and_says_so(packages):
    from LiverE2NetLib.Dependencies import DECLINED, DependencyInstaller

    packages.answer = False
    outcome = DependencyInstaller([missing("scikit-standin")]).ensure()
    assert outcome.status == DECLINED and not outcome.ready
    assert outcome.message == ("Nothing was installed, so nothing was run: scikit-standin is needed. Click again to be "
                               "asked again.")
    assert packages.pipCalls == [] and packages.messages == []
    assert not (packages.sitePackages / "scikit_standin.py").exists()


def test_a_failed_pip_names_the_package_and_pips_error(packages):
    from LiverE2NetLib.Dependencies import FAILED, DependencyInstaller

    packages.failures["scikit-standin"] = ["Collecting scikit-standin>=1.0",
                                           "ERROR: No matching distribution found for scikit-standin>=1.0"]
    outcome = DependencyInstaller([missing("scikit-standin")]).ensure()
    assert outcome.status == FAILED and not outcome.ready
    assert outcome.message.startswith("Installing scikit-standin failed: ERROR: No matching distribution found for "
                                      "scikit-standin>=1.0 Check the internet connection")
    assert "Collecting scikit-standin" in outcome.details
    # The tested versions first, then any version in the range; Slicer's numpy stays pinned in both.
    assert len(packages.pipCalls) == 2 and all("numpy==" in text for text in packages.constraints)
    assert "scipy==" in packages.constraints[0] and "scipy==" not in packages.constraints[1]
    assert packages.messages == [("error", outcome.message)]


def test_torch_comes_from_pytorch_utils_and_the_rest_from_pip(packages):
    from LiverE2NetLib.Dependencies import INSTALLED, DependencyInstaller

    outcome = DependencyInstaller([missing("torch"), missing("scikit-standin")]).ensure()
    assert outcome.status == INSTALLED and outcome.message == "Installed PyTorch, scikit-standin."
    assert len(packages.questions) == 1 and "PyTorch, scikit-standin" in packages.questions[0][0]
    assert "CUDA build" in packages.questions[0][0]
    assert packages.torchCalls == [{"askConfirmation": False, "torchVersionRequirement": ">=2.3"}]
    assert [call[2:] for call in packages.pipCalls] == [["scikit-standin>=1.0"]]  # never torch through pip
    assert (packages.sitePackages / "standin_torch.py").exists()


@pytest.mark.parametrize("result, expected", [
    ("none", "Installing PyTorch failed: PyTorch Utils installed nothing. Install PyTorch>=2.3 in the PyTorch Utils"),
    ("error", "Installing PyTorch failed: ERROR: Could not find a version that satisfies the requirement torch>=2.3"),
    ("no module", "Installing PyTorch failed: the PyTorch Utils module is missing: install the PyTorch extension"),
])
def test_a_failed_pytorch_install_says_what_to_do(packages, monkeypatch, result, expected):
    from LiverE2NetLib.Dependencies import FAILED, DependencyInstaller

    if result == "no module":
        monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    packages.torchResult = result
    outcome = DependencyInstaller([missing("torch"), missing("scikit-standin")]).ensure()
    assert outcome.status == FAILED and outcome.message.startswith(expected) and not outcome.ready
    assert packages.pipCalls == []  # stops at the first failure


def test_an_optional_package_declined_is_not_offered_again(packages):
    from LiverE2NetLib.Dependencies import DECLINED, NOTHING, DependencyInstaller

    packages.answer = False
    installer = DependencyInstaller([missing("plot-standin", optional=True)])
    assert installer.noteMissing(pytest.fail) == ""
    outcome = installer.ensure()
    assert outcome.status == DECLINED and outcome.ready and outcome.message == "Not installed: plot-standin (optional)."
    assert installer.ensure().status == NOTHING and len(packages.questions) == 1


def test_the_logic_refuses_with_the_one_click_fix(packages):
    from LiverE2NetLib.Dependencies import DependencyInstaller, missingMessage

    assert missingMessage([missing("scikit-standin")]).startswith(
        "Slicer's Python lacks scikit-standin: click the Liver E2Net panel's Segment (or Start training) button")
    shown = []
    note = DependencyInstaller([missing("scikit-standin")]).noteMissing(shown.append)
    assert shown == [note] and note.startswith("Slicer's Python lacks scikit-standin: the Run button offers to install")


def test_segment_click_offers_the_install_and_a_decline_runs_nothing(packages, sampleCt, liteModel, monkeypatch):
    from slicer_standins import moduleWidget

    import LiverE2Net

    monkeypatch.setenv("LIVER_E2NET_MODEL", str(liteModel))
    widget = moduleWidget(LiverE2Net.LiverE2NetWidget)
    try:
        assert widget.batchPanel.dependencies is widget.panel.dependencies  # one offer for the module
        widget.panel.dependencies.requirements = [missing("scikit-standin")]
        widget.enter()
        assert widget.ui.statusLabel.text().startswith("Slicer's Python lacks scikit-standin: the Run button offers")
        widget.logic.getParameterNode().inputVolume = sampleCt
        packages.answer = False
        widget.ui.applyButton.click()
        assert widget.panel.state == "idle" and not widget.logic.isBusy() and len(packages.questions) == 1
        assert widget.ui.statusLabel.text().startswith("Nothing was installed, so nothing was run")
        widget.ui.batchRunButton.click()
        assert len(packages.questions) == 2 and widget.batchPanel.state == "idle"
        assert widget.ui.batchStatusLabel.text().startswith("Nothing was installed, so nothing was run")
    finally:
        widget.cleanup()


def test_start_training_offers_the_install_and_a_decline_runs_nothing(packages, monkeypatch, tmp_path):
    from slicer_standins import moduleWidget

    import LiverE2NetTraining

    monkeypatch.setattr("liver_e2net.protocol.default_model_path", lambda: None)
    widget = moduleWidget(LiverE2NetTraining.LiverE2NetTrainingWidget)
    try:
        dependencies = widget.panel.dependencies
        assert [requirement.name for requirement in dependencies.requirements][-1] == "matplotlib"
        dependencies.requirements = [missing("scikit-standin")]
        packages.answer = False
        widget.panel.onStartButton()
        assert widget.panel.run is None and len(packages.questions) == 1
        assert widget.ui.statusLabel.text().startswith("Nothing was installed, so nothing was run")
    finally:
        widget.cleanup()
