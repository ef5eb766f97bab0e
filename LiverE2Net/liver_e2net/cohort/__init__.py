"""Batch (cohort) segmentation: input discovery, a resumable case runner, the cohort table and sharding.

`liver-e2net segment-batch` (commands/segment_batch.py) drives these; they hold no CLI code, so the Slicer
module and scripts can call them directly.
"""
