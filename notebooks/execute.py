"""Execute a notebook in place with the venv's kernel, so it is committed with its outputs.

    .venv/bin/python notebooks/execute.py notebooks/quickstart.ipynb

Fails (exit 1) if any cell raises.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(path: str) -> int:
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    nbformat.write(nb, path)
    print(f"{path}: executed in {time.time() - start:.0f} s, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
