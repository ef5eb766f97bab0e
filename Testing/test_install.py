"""The core installs like a library: pyproject.toml states ranges, so `pip install` into 3D Slicer's Python keeps
Slicer's own numpy and SimpleITK; the exact versions CI runs with live only in constraints.txt."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
SLICER_OWNS = {"numpy": "2.0.2", "simpleitk": "2.4.1"}  # older than our pins, inside our ranges


def requirements() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in listed if canonicalize_name(Requirement(r).name) != "liver-e2net"]


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pairs = [line.split("#")[0].strip().split("==") for line in lines if line.split("#")[0].strip()]
    return {canonicalize_name(name): version for name, version in pairs}


def test_pyproject_states_ranges_and_constraints_pin_every_named_package() -> None:
    named = {canonicalize_name(r.name): r for r in requirements()}
    assert not [str(r) for r in named.values() if any(s.operator in ("==", "===") for s in r.specifier)]
    constraints = pins()
    assert set(named) <= set(constraints), set(named) - set(constraints)
    assert constraints["torch"] == "2.13.0"  # the CPU build here; unpinned, pip may pull a 5.4 GB CUDA build
    assert "vtk" not in constraints  # slicer-core pins its own
    for name, requirement in named.items():
        assert requirement.specifier.contains(constraints[name]), f"{name}: pin outside its range"
    for name, version in SLICER_OWNS.items():
        assert named[name].specifier.contains(version)


def test_install_keeps_the_numpy_and_simpleitk_already_there(tmp_path) -> None:
    """A fresh Python with other numpy/SimpleITK releases (as Slicer's): pip's install plan leaves them alone.
    torch stays pinned, so the resolver never looks at a CUDA build; skips when no package registry answers."""
    target = tmp_path / "slicer-python"
    venv.create(target, with_pip=True)
    pip = [str(target / "bin" / "python"), "-m", "pip"]
    present = [f"{name}=={version}" for name, version in SLICER_OWNS.items()]
    installed = subprocess.run([*pip, "install", "-q", "--no-deps", *present], capture_output=True, text=True)
    if installed.returncode != 0:
        pytest.skip(f"no package registry with {present}: {installed.stderr.strip()[-300:]}")
    others = tmp_path / "constraints.txt"  # ours, less what the host Python brings
    others.write_text("".join(f"{n}=={v}\n" for n, v in pins().items() if n not in SLICER_OWNS))
    report = tmp_path / "report.json"
    plan = subprocess.run(
        [*pip, "install", "-q", "--dry-run", "--report", str(report), "-c", str(others), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    planned = {canonicalize_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert "liver-e2net" in planned and "torch" in planned
    assert not planned & set(SLICER_OWNS), f"pip would replace {planned & set(SLICER_OWNS)}"


def test_optional_packages_are_named_with_their_extra(monkeypatch) -> None:
    from liver_e2net.errors import UserInputError
    from liver_e2net.extras import require

    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed
    with pytest.raises(UserInputError, match=r"pip install 'liver-e2net\[dicom\]'"):
        require("highdicom", "DICOM SEG output")
