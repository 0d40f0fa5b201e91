"""Execute a notebook in place and keep its outputs (for notebooks committed with outputs):
python benchmarks/tools/run_notebook.py notebooks/05_sweep_results.ipynb"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

for name in sys.argv[1:]:
    path = Path(name)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:  # the kernel's own start-up chatter is not the notebook's output
        if cell.cell_type == "code":
            cell.outputs = [
                o
                for o in cell.outputs
                if not (o.output_type == "stream" and o.get("text", "").startswith("[IPKernelApp]"))
            ]
    nbformat.write(nb, path)
    print(f"executed {path}")
