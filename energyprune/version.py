"""The version of energyprune (one place; `energyprune.__version__` re-exports it)."""

__version__ = "0.2.0"
