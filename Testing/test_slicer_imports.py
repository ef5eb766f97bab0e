"""One door between the Slicer side and the core: the modules and their helpers import only `liver_e2net.protocol`,
`errors` and `report`; models, devices and checkpoints come from the `liver-e2net` child. And the door itself
(protocol) is standard library only, so Slicer's process never loads PyTorch or numpy through it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLICER_SIDE = [
    REPO / "LiverE2Net" / "LiverE2Net.py",
    *sorted((REPO / "LiverE2Net" / "LiverE2NetLib").rglob("*.py")),
    *sorted((REPO / "LiverE2NetTraining").rglob("*.py")),
]
ALLOWED = {"liver_e2net", "liver_e2net.protocol", "liver_e2net.errors", "liver_e2net.report"}


def core_imports(path: Path) -> set[str]:
    """Every liver_e2net module a file imports, at any depth (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "liver_e2net"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("liver_e2net"):
            found |= {node.module} if node.module != "liver_e2net" else {f"liver_e2net.{a.name}" for a in node.names}
    return found


def test_slicer_side_imports_only_protocol_errors_and_report() -> None:
    assert len(SLICER_SIDE) > 10
    offenders = [
        f"{path.relative_to(REPO).as_posix()}: {module}"
        for path in SLICER_SIDE
        for module in sorted(core_imports(path) - ALLOWED)
    ]
    assert not offenders, offenders


def test_the_check_sees_lazy_and_package_imports(tmp_path) -> None:
    source = tmp_path / "x.py"
    source.write_text("from liver_e2net import protocol, io\ndef f():\n    import liver_e2net.checkpoint\n")
    assert core_imports(source) == {"liver_e2net.protocol", "liver_e2net.io", "liver_e2net.checkpoint"}


def test_protocol_loads_no_torch_or_numpy() -> None:
    code = (
        "import sys, liver_e2net.protocol as p\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'SimpleITK', 'scipy'})\n"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
