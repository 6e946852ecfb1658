r"""python -m launch.serve --hf_dir=runs/sft/export --port=8000

Serves a model over an OpenAI-compatible HTTP API (streaming, logprobs, vLLM sampling
parameters, response_format), e.g.

  curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"messages": [{"role": "user", "content": "写一条新年祝福"}], "n": 2, "max_tokens": 64}'

Endpoints: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics (Prometheus).
Concurrent requests are batched into one sampler call (see rlaif_jax/sampling/server.py). Binds
127.0.0.1 unless --host. --checkpoint=W loads a trainer work directory's export
(rlaif_jax/sampling/loading.py). Sampling fields a request omits take the model's
generation_config.json values (logged at start). --dtype=auto: bfloat16 on accelerators, float32
on CPU. SIGTERM / Ctrl-C: stop accepting, finish the requests in flight (at most
--shutdown_timeout_s), exit.
"""
import dataclasses
import pathlib

from absl import app, flags, logging
from aiohttp import web

from launch import common
from rlaif_jax.sampling import defaults
from rlaif_jax.sampling.loading import load_policy
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.sampling.server import ServerConfig, make_app
from rlaif_jax.sharding import mesh as mesh_lib

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory, or a hub id "
                               "(owner/name[@revision], fetched to the hub cache).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Trainer work directory (uses W/export).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to bind.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Model id in responses (default: the "
                                  "model directory's name).")
_MAX_BATCH_ROWS = flags.DEFINE_integer("max_batch_rows", 64, "Rows (prompts x n) per batch.")
_BATCH_WINDOW_MS = flags.DEFINE_float("batch_window_ms", 5.0, "How long to gather requests.")
_DEFAULT_MAX_TOKENS = flags.DEFINE_integer("default_max_tokens", 256,
                                           "max_tokens when a request gives none (left unset: at "
                                           "most --max_tokens_limit).")
_MAX_TOKENS_LIMIT = flags.DEFINE_integer("max_tokens_limit", 2048, "Largest max_tokens accepted.")
_MAX_PROMPT_TOKENS = flags.DEFINE_integer("max_prompt_tokens", 2048, "Longest prompt accepted.")
_TRUNCATE = flags.DEFINE_integer("truncate_prompt_tokens", None, "Serve a longer prompt from its "
                                 "last N tokens (vLLM's parameter, for every request).")
_SCHEMA_CHARS = flags.DEFINE_integer("max_schema_string_chars", None, "Tighten response_format "
                                     "schemas: every string's maxLength at most N.")
_SCHEMA_ITEMS = flags.DEFINE_integer("max_schema_items", None, "Tighten response_format "
                                     "schemas: every maxItems / maxProperties at most N.")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "Parameter and compute dtype (auto: bfloat16 on accelerators, float32 "
                           "on CPU).")
_MAX_QUEUE = flags.DEFINE_integer("max_queue", 1024, "Requests waiting for a batch beyond which "
                                  "new ones get 429 + Retry-After.")
_RETRY_AFTER_S = flags.DEFINE_integer("retry_after_s", 1, "Retry-After of a 429, seconds.")
_STRUCTURED = flags.DEFINE_bool("structured_output", True, "Honour response_format (xgrammar).")
_SHUTDOWN_TIMEOUT_S = flags.DEFINE_float("shutdown_timeout_s", 120.0, "On SIGTERM, how long to "
                                         "wait for requests in flight.")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Mesh shape data,fsdp,tensor (-1 = rest).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (_HF_DIR.value is None) == (_CHECKPOINT.value is None):
    raise app.UsageError("pass exactly one of --hf_dir or --checkpoint")
  name = _MODEL_NAME.value or pathlib.Path(_HF_DIR.value or _CHECKPOINT.value).resolve().name
  try:  # checked before the (slow) model load
    default_max_tokens = _DEFAULT_MAX_TOKENS.value
    if not flags.FLAGS["default_max_tokens"].present:  # only a lower limit was asked for
      default_max_tokens = min(default_max_tokens, _MAX_TOKENS_LIMIT.value)
    config = ServerConfig(model_name=name, default_max_tokens=default_max_tokens,
                          max_tokens_limit=_MAX_TOKENS_LIMIT.value,
                          max_prompt_tokens=_MAX_PROMPT_TOKENS.value,
                          max_batch_rows=_MAX_BATCH_ROWS.value,
                          batch_window_s=_BATCH_WINDOW_MS.value / 1000.0,
                          max_queue=_MAX_QUEUE.value, retry_after_s=_RETRY_AFTER_S.value,
                          structured_output=_STRUCTURED.value,
                          truncate_prompt_tokens=_TRUNCATE.value,
                          max_schema_string_chars=_SCHEMA_CHARS.value,
                          max_schema_items=_SCHEMA_ITEMS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  mesh = mesh_lib.make_mesh([int(s) for s in _MESH.value])
  dtype = defaults.resolve_dtype(_DTYPE.value)
  policy = load_policy(_HF_DIR.value, _CHECKPOINT.value, mesh, param_dtype=dtype, dtype=dtype)
  config = dataclasses.replace(config,
                               sampling_defaults=defaults.generation_defaults(policy.source))
  logging.info("serving %s from %s on http://%s:%d, dtype %s; request defaults: %s", name,
               policy.source, _HOST.value, _PORT.value, dtype,
               defaults.describe(defaults.effective_sampling(config.sampling_defaults, {})))
  sampler = Sampler(policy.model, policy.tokenizer, mesh=mesh, pow2_prompts=True)
  web.run_app(make_app(sampler, config),
              host=_HOST.value, port=_PORT.value, shutdown_timeout=_SHUTDOWN_TIMEOUT_S.value,
              print=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  common.run(main)
