"""Convert a GEOM-DRUGS release into molconf's cache (streaming, resumable).

Run from the repository root (same as ``molconf prepare geom_drugs …``)::

    python datasets/geom_drugs/prepare.py --root /data/geom --split-dir /data/DRUGS/split.npy --workers 8

See ``python datasets/geom_drugs/prepare.py --help`` and :mod:`molconf.data.geom_prepare`.
"""

from molconf.data.geom_prepare import main

if __name__ == "__main__":
    main()
