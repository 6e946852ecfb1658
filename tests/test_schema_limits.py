"""Schema tightening for a throwaway judge (`grammar.limit_schema`, `ServerConfig`) and the
`strict` flag the OpenAI backend sends with a reply schema."""
import json

import pytest

from rlaif_jax.judging import parsing
from rlaif_jax.judging.backends import openai_http
from rlaif_jax.sampling import grammar, server_requests


def test_limit_schema_caps_strings_items_and_properties():
  schema = {"type": "object", "properties": {
      "reason": {"type": "string", "maxLength": 400, "minLength": 50},
      "short": {"type": "string", "maxLength": 3},
      "tags": {"type": "array", "items": {"type": "string"}, "minItems": 4},
      "verdict": {"enum": ["Good", "a much longer enum value"]}},
      "required": ["reason", "short", "verdict"], "additionalProperties": False}
  out = grammar.limit_schema(schema, 10, 2)
  props = out["properties"]
  assert props["reason"] == {"type": "string", "maxLength": 10, "minLength": 10}
  assert props["short"]["maxLength"] == 3  # tighter already
  assert props["tags"]["maxItems"] == 2 and props["tags"]["minItems"] == 2
  assert props["tags"]["items"] == {"type": "string", "maxLength": 10}
  assert props["verdict"] == schema["properties"]["verdict"]  # values are not schemas
  assert out["maxProperties"] == 3  # the 3 required properties stay allowed
  assert grammar.limit_schema(schema, None, None) == schema
  assert schema["properties"]["reason"]["maxLength"] == 400  # the input is not modified
  points = grammar.limit_schema(parsing.POINTS_SCHEMA, 8, 2)
  assert points["propertyNames"]["maxLength"] == 8
  assert points["additionalProperties"]["maxLength"] == 8 and points["maxProperties"] == 2


def test_server_config_applies_the_limits_to_response_format():
  body = {"response_format": {"type": "json_schema", "json_schema": {
      "name": "j", "schema": parsing.JUDGE_SCHEMA}}}
  kind, text = server_requests.response_format(body, server_requests.ServerConfig(
      max_schema_string_chars=12))
  assert kind == "json_schema"
  assert json.loads(text)["properties"]["reason"]["maxLength"] == 12
  _, text = server_requests.response_format(body, server_requests.ServerConfig())
  assert json.loads(text) == parsing.JUDGE_SCHEMA
  with pytest.raises(ValueError, match="max_schema_items"):
    server_requests.ServerConfig(max_schema_items=0)


def test_strict_only_for_closed_schemas():
  backend = openai_http.OpenAIChatBackend(base_url="http://127.0.0.1:9/v1", model="m",
                                          structured_output=True)
  strict = {name: backend.with_response_schema(name, schema).response_format[
      "json_schema"]["strict"] for name, schema in (("judge", parsing.JUDGE_SCHEMA),
                                                    ("points", parsing.POINTS_SCHEMA))}
  assert strict == {"judge": True, "points": False}


@pytest.mark.parametrize("name", ["DETECTOR_SCHEMA", "ADVERSARIAL_DETECTOR_SCHEMA", "JUDGE_SCHEMA",
                                  "POINTS_SCHEMA", "GENERATOR_SCHEMA", "REFLECTOR_SCHEMA",
                                  "rules_schema"])
def test_every_reply_schema_compiles_whole_and_limited(name):
  """Every agent's reply schema is a grammar xgrammar compiles, as sent and as a throwaway
  judge tightens it."""
  xgr = pytest.importorskip("xgrammar")
  schema = getattr(parsing, name)
  schema = schema() if callable(schema) else schema
  info = xgr.TokenizerInfo(list('{}[]":,ab 0123456789GoBdlx') + ["Good", "Bad"],
                           xgr.VocabType.RAW, vocab_size=30, stop_token_ids=[29])
  compiler = xgr.GrammarCompiler(info)
  for s in (schema, grammar.limit_schema(schema, 8, 2)):
    compiler.compile_json_schema(json.dumps(s), any_whitespace=False)
