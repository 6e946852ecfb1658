"""The layer contracts of `.importlinter` (BUILD_NOTES "Layers"), checked by `lint-imports`:
pipeline > rl, evaluation > judging > training > sampling > data, models > tokenizers, sharding
> metrics, storage, distributed; nothing in rlaif_jax imports launch/, configs/ or benchmarks/.
Function-local imports count."""
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def test_import_layers_hold():
  proc = subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "0 broken" in proc.stdout


def test_stage_config_names_are_resolved_by_launch():
  import ml_collections
  import pytest
  from launch import common
  from rlaif_jax.rl import run
  cfg = run.stage_config("sft_tiny_cpu", common.stage_config, "policy.sft_config")
  assert isinstance(cfg, ml_collections.ConfigDict) and "optim" in cfg
  same = ml_collections.ConfigDict({"a": 1})
  assert run.stage_config(same, None, "x") is same
  with pytest.raises(ValueError, match="policy.sft_config='sft_tiny_cpu' names a config module"):
    run.stage_config("sft_tiny_cpu", None, "policy.sft_config")


def _third_party_imports(folders):
  import ast
  names = set()
  for folder in folders:
    for path in (REPO_ROOT / folder).rglob("*.py"):
      for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
          names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
          names.add(node.module.split(".")[0])
  return names - set(sys.stdlib_module_names) - {"rlaif_jax", "launch", "configs", "__future__"}


def test_every_third_party_import_is_declared_in_setup_cfg():
  import configparser
  import importlib.metadata
  import re
  cfg = configparser.ConfigParser()
  cfg.read(REPO_ROOT / "setup.cfg")
  lines = cfg["options"]["install_requires"].split("\n")
  lines += [l for extra in cfg["options.extras_require"].values() for l in extra.split("\n")]
  declared = {re.split(r"[<>=!\[ ;]", l.strip())[0].lower().replace("_", "-")
              for l in lines if l.strip()}
  dists = importlib.metadata.packages_distributions()
  undeclared = {m: dists.get(m) for m in _third_party_imports(["rlaif_jax", "launch", "configs"])
                if not {d.lower().replace("_", "-") for d in dists.get(m, [m])} & declared}
  assert not undeclared, f"imported but not in setup.cfg: {undeclared}"
