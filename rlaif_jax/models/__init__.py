"""Qwen2/Llama-family decoders: config, NNX module, HF checkpoint bridge."""
from rlaif_jax.models.config import ModelConfig, RopeScaling, from_hf_config, preset, to_hf_config
from rlaif_jax.models.decoder import Decoder, KVCache, positions_from_mask

__all__ = ["ModelConfig", "RopeScaling", "from_hf_config", "preset", "to_hf_config", "Decoder",
           "KVCache", "positions_from_mask"]
