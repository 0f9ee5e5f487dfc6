"""Metrics computed on models: semantic fidelity of a pruned model against its original."""
