"""The Colab demo notebook runs top to bottom on CPU at micro size (nbclient, a real kernel)."""
import os
import pathlib

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_colab_notebook_runs_on_cpu(data_dir, tmp_path):
  nb = nbformat.read(ROOT / "notebooks" / "colab_tpu_demo.ipynb", as_version=4)
  env = {"RLAIF_DATA_DIR": str(data_dir), "RLAIF_NOTEBOOK_WORKDIR": str(tmp_path / "run"),
         "RLAIF_NOTEBOOK_MICRO": "1", "JAX_PLATFORMS": "cpu"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  results = (tmp_path / "run" / "results.md").read_text()
  for checkpoint in ("initial", "SFT", "SFT+GRPO(A)", "SFT+GRPO(B)"):  # the paper's rows
    assert f"| {checkpoint} |" in results
  assert "longer response wins (baseline)" in results
  assert "length_baseline" in results
  assert (tmp_path / "run" / "eval" / "plots" / "excellence.png").stat().st_size > 1000
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
             for o in outputs)
  # The TPU check: the config's SFT step compiled for Colab's v2-8 (4 chips, 8 cores) and fits.
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "aot topology=v2-8 chips=4 hosts=1 " in text and "fits=yes" in text
