"""The notebooks run headless, top to bottom, with a tiny budget (``C4_NOTEBOOK_BUDGET``), and are committed with
the outputs of a full run on the embedded data (``python benchmarks/tools/run_notebook.py notebooks/0*.ipynb``):
figures, no errors, no widget warnings."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TRAINS_NOTHING = {"05_sweep_results"}  # reads the committed sweep results
WIDGET_NOISE = ("IProgress not found", "ipywidgets")
TINY_BUDGET = "20"


def test_the_four_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart",
        "02_cross_covariance",
        "03_lambda_sweep",
        "04_clusters",
        "05_sweep_results",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    outputs = [o for c in code for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: committed without its figures"
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert not any(noise in text for noise in WIDGET_NOISE), f"{path.name}: widget warnings in the outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    assert "BUDGET_STEPS" in params[0].source and "C4_NOTEBOOK_BUDGET" in params[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("C4_NOTEBOOK_BUDGET", TINY_BUDGET)
    monkeypatch.setenv("C4_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Traceback" not in text
    assert not any(noise in text for noise in WIDGET_NOISE), text[-2000:]
    if path.stem not in TRAINS_NOTHING:
        assert list((tmp_path / "runs").rglob("events.out.tfevents.*")), "no TensorBoard run was written"
    expected = {
        "01_quickstart": "normalised score",
        "02_cross_covariance": "final ratio C4 / baseline",
        "03_lambda_sweep": "score mean",
        "04_clusters": "critic-feature partition",
        "05_sweep_results": "decision rule",
    }[path.stem]
    assert expected in text, text[-2000:]
