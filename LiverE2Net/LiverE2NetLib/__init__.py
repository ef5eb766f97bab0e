"""Slicer-side helpers of the Liver E2Net module: child process, node <-> file conversion, panel, STL export."""
