"""Metrics computed on models and measurements: semantic fidelity, FLOPs, the Landauer bound, the
hardware floor, information concentration, efficiency and semantic entropy.

Import from the submodules (`energyprune.metrics.hardware_floor`, ...); this package imports nothing, so
that loading one metric does not load them all.
"""
