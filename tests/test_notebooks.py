"""The analysis notebooks are committed without outputs and execute (nbclient, a real kernel)
against a real tiny KL-ablation sweep, showing their tables and figures."""

from __future__ import annotations

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_both_notebooks_exist_and_are_committed_without_outputs():
    assert {p.name for p in NOTEBOOKS} == {"compare_runs.ipynb", "kl_ablation.ipynb"}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_on_a_sweep(path, kl_sweep, monkeypatch):
    monkeypatch.setenv("TBRM_SWEEP_DIR", str(kl_sweep))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert f"{kl_sweep}: 8 jobs in 4 arms" in text
    assert "grpo n=4" in text and "completed" in text
    # compare_runs: learning curves, efficiency, cost; kl_ablation: the beta sweep, learning curves
    assert len(images) == (3 if path.stem == "compare_runs" else 2)
