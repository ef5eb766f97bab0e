"""Slicer-side helpers of the Liver E2Net Training module: training pairs, export, the child run, the panel."""
