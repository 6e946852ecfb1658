"""Hugging Face hub ids wherever a model directory is taken: resolved offline from a
pre-populated hub cache (HF_HUB_OFFLINE=1), never downloaded in tests."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from rlaif_jax import hub
from tests import tiny_hf

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPO = "tiny-org/tiny-qwen"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hub_cache(cache: pathlib.Path, repo: str = REPO) -> pathlib.Path:
  """Lays out a hub cache as huggingface_hub writes it: models--o--n/{refs/main, snapshots/SHA},
  with the weights, configs and tokenizer of a tiny random Qwen2 checkpoint."""
  model_dir = tiny_hf.make_tiny_hf_checkpoint(cache.parent / "src")
  repo_dir = cache / ("models--" + repo.replace("/", "--"))
  snapshot = repo_dir / "snapshots" / COMMIT
  snapshot.mkdir(parents=True)
  for f in model_dir.iterdir():
    (snapshot / f.name).write_bytes(f.read_bytes())
  (repo_dir / "refs").mkdir()
  (repo_dir / "refs" / "main").write_text(COMMIT)
  return snapshot


def _env(cache):
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
              HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf_home"))


def test_parse_hub_id():
  assert hub.parse_hub_id("Qwen/Qwen2.5-7B-Instruct") == ("Qwen/Qwen2.5-7B-Instruct", None)
  assert hub.parse_hub_id("meta-llama/Llama-3.1-8B@main") == ("meta-llama/Llama-3.1-8B", "main")
  for bad in ("Qwen2.5-7B", "/abs/dir", "a/b/c", "a--b/c", "./x/y", ""):
    assert hub.parse_hub_id(bad) is None, bad


def test_local_path_wins(tmp_path):
  d = tmp_path / "owner" / "name"
  d.mkdir(parents=True)
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    assert hub.resolve_model_dir("owner/name") == pathlib.Path("owner/name")
  finally:
    os.chdir(cwd)


def test_not_a_path_nor_an_id_is_named(tmp_path):
  with pytest.raises(hub.HubResolveError, match="not a Hugging Face hub id"):
    hub.resolve_model_dir(str(tmp_path / "missing" / "deep" / "dir"))


def test_generate_cli_takes_a_hub_id_offline(tmp_path):
  """`launch.generate --hf_dir=owner/name` loads weights, config and tokenizer from the cache."""
  cache = tmp_path / "hub"
  snapshot = populate_hub_cache(cache)
  prompts, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  prompts.write_text(json.dumps({"id": "a", "prompt": "新年快乐"}) + "\n", encoding="utf-8")
  proc = subprocess.run([sys.executable, "-m", "launch.generate", f"--hf_dir={REPO}",
                         f"--prompts={prompts}", f"--output={out}", "--max_new_tokens=4",
                         "--greedy"], cwd=ROOT, env=_env(cache), capture_output=True,
                        text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
  # The same greedy generation as from the snapshot directory itself.
  proc2 = subprocess.run([sys.executable, "-m", "launch.generate", f"--hf_dir={snapshot}",
                          f"--prompts={prompts}", f"--output={tmp_path / 'out2.jsonl'}",
                          "--max_new_tokens=4", "--greedy"], cwd=ROOT, env=_env(cache),
                         capture_output=True, text=True, timeout=240)
  assert proc2.returncode == 0, proc2.stderr[-3000:]
  want = json.loads((tmp_path / "out2.jsonl").read_text(encoding="utf-8").splitlines()[0])
  assert got["completion"] == want["completion"] and got["completion_token_ids"] == want["completion_token_ids"]


def test_missing_hub_id_offline_says_so(tmp_path):
  cache = tmp_path / "hub"
  cache.mkdir()
  code = ("from rlaif_jax.models import checkpoint_bridge\n"
          "checkpoint_bridge.load_hf_checkpoint('nobody/nothing')\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(cache),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "HubResolveError" in proc.stderr and "HF_HUB_OFFLINE is set" in proc.stderr, proc.stderr


def test_sft_config_takes_a_hub_id(tmp_path, monkeypatch):
  """config.model.hf_checkpoint=owner/name: the model config and tokenizer come from the cache."""
  cache = tmp_path / "hub"
  snapshot = populate_hub_cache(cache)
  import huggingface_hub
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
  from configs import sft_tiny_cpu
  from rlaif_jax.training import sft
  config = sft_tiny_cpu.get_config()
  config.model.hf_checkpoint = REPO
  tok, tok_path = sft.prepare_tokenizer(config, tmp_path / "w", tmp_path)
  assert tok_path.resolve() == snapshot.resolve()
  cfg = sft.model_config(config, tok)
  assert cfg.vocab_size == json.loads((snapshot / "config.json").read_text())["vocab_size"]
