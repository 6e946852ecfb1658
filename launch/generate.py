r"""python -m launch.generate --hf_dir=runs/sft/export --prompts=in.jsonl --output=out.jsonl --n=4

Samples completions for a JSONL file of prompts with the jitted sampler.

  --hf_dir=DIR       a Hugging Face model directory (config.json + safetensors + tokenizer), or
  --checkpoint=W     a trainer work directory; its HF export W/export is loaded
                     (convention: rlaif_jax/sampling/loading.py).

IN lines: {"id": ..., "prompt": "..."} (no id -> the 0-based line number; "prompt" may also be
a chat message list). OUT lines: {"id", "prompt", "completion", "completion_token_ids",
"finish_reason"} (+ "sample_index" with --n > 1). Rerunning the same command resumes: ids
already in OUT are skipped, a cut last line is repaired. String prompts go through the
tokenizer's chat template as one user message unless --no_chat_template. Sampling flags left
unset take the model's generation_config.json values (temperature, top_p, top_k, min_p,
repetition_penalty), else temperature 1 with no filtering; the effective values are logged.
--dtype=auto: bfloat16 on accelerators, float32 on CPU.
"""
from absl import app, flags, logging

from launch import common
from rlaif_jax import distributed
from rlaif_jax.sampling import defaults, jsonl_job
from rlaif_jax.sampling.loading import load_policy
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.sharding import host, mesh as mesh_lib

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory, or a hub id "
                               "(owner/name[@revision], fetched to the hub cache).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Trainer work directory (uses W/export).")
_PROMPTS = flags.DEFINE_string("prompts", None, "Input JSONL of {id, prompt}.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output JSONL (appended; resumable).",
                              required=True)
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 256, "New tokens per completion.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature (0 = greedy); "
                                  "default: generation_config.json, else 1.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus mass in (0, 1]; 1 = off (default: "
                            "generation_config.json, else 1).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens; 0 = off (default: "
                              "generation_config.json, else 0).")
_MIN_P = flags.DEFINE_float("min_p", None, "Min-p in [0, 1]; 0 = off (default: "
                            "generation_config.json, else 0).")
_REPETITION_PENALTY = flags.DEFINE_float("repetition_penalty", None, "> 0, 1 = off (default: "
                                         "generation_config.json, else 1).")
_N = flags.DEFINE_integer("n", 1, "Samples per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed; prompt i of the file (0-based) draws with a key "
                             "from (seed, i), whatever batch it lands in, so a resumed run "
                             "regenerates what an uninterrupted one would.")
_GREEDY = flags.DEFINE_bool("greedy", False, "Greedy decoding (overrides --temperature).")
_NO_CHAT_TEMPLATE = flags.DEFINE_bool("no_chat_template", False,
                                      "Feed string prompts verbatim, without the chat template.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Prompts per sampler call.")
_STOP = flags.DEFINE_multi_string("stop", [], "Stop string (repeatable).")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "Parameter and compute dtype (auto: bfloat16 on accelerators, float32 "
                           "on CPU).")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Mesh shape data,fsdp,tensor (-1 = rest).")
distributed.define_flags()  # several processes sample one sharded model; process 0 writes


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (_HF_DIR.value is None) == (_CHECKPOINT.value is None):
    raise app.UsageError("pass exactly one of --hf_dir or --checkpoint")
  for name, value in (("n", _N.value), ("batch_size", _BATCH_SIZE.value),
                      ("max_new_tokens", _MAX_NEW_TOKENS.value)):
    if value < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {value}")
  overrides = dict(temperature=0.0 if _GREEDY.value else _TEMPERATURE.value, top_k=_TOP_K.value,
                   top_p=_TOP_P.value, min_p=_MIN_P.value,
                   repetition_penalty=_REPETITION_PENALTY.value, stop=tuple(_STOP.value))
  try:
    SamplingParams(**{k: v for k, v in overrides.items() if v is not None})
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  distributed.initialize_from_flags()
  mesh = mesh_lib.make_mesh([int(s) for s in _MESH.value])
  dtype = defaults.resolve_dtype(_DTYPE.value)
  policy = load_policy(_HF_DIR.value, _CHECKPOINT.value, mesh, param_dtype=dtype, dtype=dtype)
  sampling = defaults.effective_sampling(defaults.generation_defaults(policy.source), overrides)
  logging.info("loaded %s (%.1fM params, %s) from %s; sampling: %s",
               policy.model.cfg.architecture, policy.model.cfg.num_params / 1e6, dtype,
               policy.source, defaults.describe(sampling))
  sampler = Sampler(policy.model, policy.tokenizer, mesh=mesh)

  stats = jsonl_job.run(sampler, _PROMPTS.value, _OUTPUT.value,
                        max_new_tokens=_MAX_NEW_TOKENS.value, sampling=sampling, n=_N.value,
                        seed=_SEED.value, batch_size=_BATCH_SIZE.value,
                        use_chat_template=not _NO_CHAT_TEMPLATE.value, progress=True)
  if not host.is_main():
    return
  print(f"wrote {stats['prompts']} prompts x {_N.value} samples to {_OUTPUT.value} "
        f"({stats['skipped']} already done), {stats['tokens']} tokens in "
        f"{stats['seconds']:.1f}s")


if __name__ == "__main__":
  common.run(main)
