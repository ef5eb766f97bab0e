"""STL surfaces: closed, outward-facing, in LPS millimetres (checked with VTK from slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from liver_e2net.surfaces import segment_meshes, write_stl

vtk = pytest.importorskip("vtk")
openEdgeCount = pytest.importorskip("LiverE2NetLib.Surfaces").openEdgeCount  # the check the module's self-test uses


def _read(path):
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


@pytest.mark.parametrize(
    "direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, 1)]
)
def test_sphere_surface_is_closed_outward_and_in_mm(tmp_path, direction) -> None:
    zz, yy, xx = np.mgrid[:30, :40, :40]
    spacing = (0.8, 0.8, 2.0)
    radius_mm = 12.0
    sphere = ((xx - 20) * 0.8) ** 2 + ((yy - 20) * 0.8) ** 2 + ((zz - 15) * 2.0) ** 2 <= radius_mm**2
    label = sphere.astype(np.uint8)
    label[15, 20, 20] = 2
    label[0, 0, 0] = 1  # a one-voxel speck at the border must not break the surface
    reference = sitk.GetImageFromArray(label)
    reference.SetSpacing(spacing)
    reference.SetOrigin((10.0, -5.0, 3.0))
    reference.SetDirection(direction)
    paths = [write_stl(tmp_path / name, vertices, faces, title)
             for name, title, vertices, faces in segment_meshes(label, reference, smoothing_mm=1.0)]
    assert [p.name for p in paths] == ["Liver_LPS.stl"]  # the 1-voxel 'tumor' is a speck: no surface
    mesh = _read(paths[0])
    assert openEdgeCount(paths[0]) == 0
    mass = vtk.vtkMassProperties()
    mass.SetInputData(mesh)
    mass.Update()
    assert mass.GetVolume() == pytest.approx(4 / 3 * np.pi * radius_mm**3, rel=0.1)
    centre = np.asarray(reference.TransformContinuousIndexToPhysicalPoint((20.0, 20.0, 15.0)))
    assert np.allclose(np.asarray(mesh.GetCenter()), centre, atol=1.0)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(mesh)
    normals.ComputeCellNormalsOn()
    normals.AutoOrientNormalsOff()
    normals.ConsistencyOff()
    normals.Update()
    cells = normals.GetOutput()
    cell_normals = np.array(
        [cells.GetCellData().GetNormals().GetTuple3(i) for i in range(cells.GetNumberOfCells())]
    )
    centers = vtk.vtkCellCenters()
    centers.SetInputData(cells)
    centers.Update()
    points = np.array([centers.GetOutput().GetPoint(i) for i in range(cells.GetNumberOfCells())])
    outward = np.einsum("ij,ij->i", cell_normals, points - centre)
    assert (outward > 0).mean() > 0.99
