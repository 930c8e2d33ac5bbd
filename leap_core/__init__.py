"""leap: exit-aware distillation of sentence-embedding students and convergence-based early exit."""

__version__ = "0.1.0"
