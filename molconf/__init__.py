"""molconf: ground-state conformation prediction from 2D molecular graphs."""

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """See :func:`molconf.predict.predict` (imported lazily: torch and RDKit load on first use)."""
    from molconf.predict import predict as _predict

    return _predict(*args, **kwargs)
