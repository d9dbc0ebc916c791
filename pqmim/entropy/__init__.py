"""Entropy coding of code grids: the reveal schedule (schedule), the machine-independent
probability tables (grid, pmf), the replay of the coding steps (replay) and the range coder
driven by the MIM transformer (coder). Submodules load on first use: the file format imports the
grid's constants without torch or constriction."""

__all__ = ["MIMCoder"]


def __getattr__(name: str):
    if name == "MIMCoder":
        from .coder import MIMCoder

        return MIMCoder
    raise AttributeError(f"module 'pqmim.entropy' has no attribute {name!r}")
