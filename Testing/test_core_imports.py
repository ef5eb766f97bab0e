"""The core package never imports Slicer, Qt, CTK or VTK: it must run in any Python, including the child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "LiverE2Net" / "liver_e2net"
FORBIDDEN = ("slicer", "qt", "ctk", "vtk", "PySide6", "PythonQt", "mrml")


def test_no_gui_imports_in_source() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from") and words[1].split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_importing_every_module_loads_no_gui_package() -> None:
    modules = sorted(
        "liver_e2net." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__main__.py",)
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_segment_child_imports_neither_training_nor_the_other_commands() -> None:
    """The panel starts `liver-e2net segment` for every run: its parser holds that command alone, so training,
    evaluation and the lesion matching's sparse graphs stay unimported (start-up time)."""
    code = (
        "import sys\n"
        "from liver_e2net import cli\n"
        "parser = cli.build_parser(['segment', 'ct.nii.gz', '-o', 'x.seg.nrrd'])\n"
        "import liver_e2net.commands.segment, liver_e2net.pipeline, liver_e2net.outputs\n"
        "loaded = [m for m in ('liver_e2net.training', 'liver_e2net.evaluation', 'liver_e2net.commands.train',"
        " 'scipy.sparse.csgraph') if m in sys.modules]\n"
        "choices = parser._subparsers._group_actions[0].choices\n"
        "print(loaded, sorted(choices), len(cli.build_parser(['--help'])._subparsers._group_actions[0].choices) == len(cli.COMMANDS))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "['segment']", "True"]
