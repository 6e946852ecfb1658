"""Command-line contracts: stray positional arguments are refused (so `--debias False` is not
silently read as `--debias`), the evaluation always shows a calibrated length baseline, and the
RL progress bar shows tokens/s."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from rlaif_jax.data.greetings import LabeledResponse
from rlaif_jax.evaluation import judges as judges_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every flag a launcher requires (so that absl reaches main() and only the stray argument is
# wrong), then a boolean flag written the wrong way: `--flag False` parses as --flag plus a stray
# positional "False", which used to be dropped, running with the flag switched on.
_ARGS = {
    "launch.score_pairs": ["--workdir=W", "--pairs=P", "--output=O", "--debias", "False"],
    "launch.score": ["--workdir=W", "--input=I", "--output=O", "--debias", "False"],
    "launch.judge": ["--input=I", "--output=O", "--retry_errors", "False"],
    "launch.curate": ["--output_dir=D", "--pairs_only", "False"],
    "launch.optimize_principles": ["--labeled=L", "--queries=Q", "--output_dir=D", "False"],
}


def _run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("OPENAI_API_KEY", None)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module", sorted(_ARGS))
def test_stray_arguments_are_refused(module, tmp_path):
  proc = _run(module, *[a.replace("=", f"={tmp_path}/", 1) for a in _ARGS[module]])
  assert proc.returncode != 0
  assert "unexpected arguments: ['False']" in proc.stderr, proc.stderr[-2000:]
  assert not any(tmp_path.iterdir())  # refused before any work or output


# ---- the length baseline is always evaluated ---------------------------------------------------

LABELLED = [LabeledResponse(q, r, y) for q, r, y in [
    ("新年", "短句", 0),
    ("新年", "新年快乐万事如意", 1),
    ("生日", "祝你生日快乐，天天开心，岁岁平安", 1),
    ("中秋", "平安", 0),
    ("考试", "一帆风顺二龙腾飞三羊开泰", 1),
]]
LLM = "llm:openai@http://127.0.0.1:9/v1#m"  # built only: never called


def test_make_judges_adds_a_calibrated_length_baseline():
  judges = judges_lib.make_judges(LLM, LABELLED)
  assert [(j.name, j.kind) for j in judges] == [("llm_m", "llm"), ("length", "length")]
  length = judges[1]
  assert not length.needs_calibration and length.threshold == 8  # shortest "excellent" one
  verdicts = length.judge([r.query for r in LABELLED], [r.response for r in LABELLED])
  np.testing.assert_array_equal(verdicts.labels, [r.label for r in LABELLED])


def test_make_judges_keeps_a_given_length_judge_and_avoids_name_clashes():
  judges = judges_lib.make_judges(f"{LLM},length?threshold=3", LABELLED)
  assert [(j.name, j.threshold) for j in judges] == [("llm_m", None), ("length", 3)]
  judges = judges_lib.make_judges(f"length={LLM}", LABELLED)
  assert [(j.name, j.kind) for j in judges] == [("length", "llm"), ("length_rule", "length")]
  assert judges_lib.make_judges(LLM, LABELLED, length_baseline=False)[-1].kind == "llm"
  # Without the labelled set nothing can be calibrated: nothing is added (and no error).
  assert [j.kind for j in judges_lib.make_judges(LLM)] == ["llm"]


def test_make_judges_takes_the_rl_judge_block_and_typed_configs():
  """One judge definition: the GRPO config's reward.judge block judges the evaluation, as the
  same typed config the shorthand gives."""
  from configs import grpo_tiny_cpu
  from rlaif_jax.scoring import config as scoring_config
  block = grpo_tiny_cpu.get_config().reward.judge
  with pytest.raises(scoring_config.ScorerConfigError, match="set base_url, model"):
    judges_lib.make_judges([block], LABELLED)
  block.base_url, block.model = "http://127.0.0.1:9/v1", "m"
  (judge, length) = judges_lib.make_judges([block], LABELLED)
  assert (judge.name, judge.kind, length.kind) == ("judge1", "llm", "length")
  (shorthand,) = scoring_config.parse_judge_specs(LLM + "?concurrency=16")
  assert judge.signature == judges_lib.make_judges([shorthand])[0].signature
  typed = scoring_config.LengthConfig(name="len", threshold=3)
  assert [(j.name, j.threshold) for j in judges_lib.make_judges([typed])] == [("len", 3)]
  with pytest.raises(judges_lib.JudgeSpecError, match="weight and config .* are RL reward"):
    judges_lib.make_judges("rm:/runs/rm?config=rm_tiny_cpu&threshold=0")
  with pytest.raises(judges_lib.JudgeSpecError, match="kind 'offline' cannot judge"):
    judges_lib.make_judges([scoring_config.OfflineConfig(name="o", where="x")])


def test_launch_evaluate_help_mentions_the_length_baseline():
  proc = _run("launch.evaluate", "--helpfull")
  assert "length baseline" in proc.stdout + proc.stderr


# ---- RL progress bar -------------------------------------------------------------------------


def test_rl_progress_bar_shows_tokens_per_second(monkeypatch):
  from rlaif_jax.rl import trainer as rl_trainer
  from rlaif_jax.training import loop as loop_lib
  postfixes = []

  class Bar:
    def __init__(self, **kwargs):
      del kwargs

    def update(self, n):
      pass

    def set_postfix(self, **kwargs):
      postfixes.append(kwargs)

    def close(self):
      pass

  monkeypatch.setattr(loop_lib, "tqdm", Bar)
  t = object.__new__(rl_trainer.RLTrainer)
  t.cfg = types.SimpleNamespace(algorithm="grpo", total_steps=2, log_every=1, checkpoint_every=99,
                                updates_per_step=1)
  t.actor = types.SimpleNamespace(step=np.int32(0))  # RLTrainer.step: no step done yet
  t.writer = types.SimpleNamespace(truncate_after=lambda step: None, write=lambda step, row: None)
  t.actor_ckpt = types.SimpleNamespace(wait=lambda: None)
  mask = np.ones((4, 25), np.float32)  # 100 response tokens per step
  t.rollout = lambda step: (types.SimpleNamespace(response_mask=mask),
                            {"reward_mean": 0.5, "t_generate": 1.5, "t_score": 0.5})
  t.update = lambda batch, step: {"loss": 0.1, "grad_norm": 1.0}
  t._kl_to_ref = lambda batch: 0.01
  saved = []
  t.save = saved.append
  monkeypatch.setattr(rl_trainer, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))
  row = t.train()
  assert row["tokens_per_sec"] == pytest.approx(50.0)  # 100 tokens / (1.5 + 0.5 + 0) s
  assert saved == [2]
  assert postfixes == [{"reward": "0.500", "kl": "0.0100", "invalid": "0.00", "tok_s": "50"}] * 2


def test_user_errors_are_one_line_unless_verbose(tmp_path):
  """A malformed data record ends in `error: <file, record, field>` and exit 1, not a traceback
  (launch.common.run, shared by every entry point); --verbosity=1 shows the traceback."""
  pairs = tmp_path / "pairs.json"
  pairs.write_text('[{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p"}]',
                   encoding="utf-8")
  args = [f"--workdir={tmp_path}/W", f"--pairs={pairs}", f"--output={tmp_path}/O"]
  proc = _run("launch.score_pairs", *args)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  error = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(error) == 1 and "pairs.json" in error[0], proc.stderr[-2000:]
  verbose = _run("launch.score_pairs", *args, "--verbosity=1")
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr
  assert "DataFormatError" in verbose.stderr
