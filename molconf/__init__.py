"""molconf: ground-state conformation prediction from 2D molecular graphs."""

__version__ = "0.1.0"
