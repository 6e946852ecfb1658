"""Jitted prefill + decode loop over a preallocated KV cache; text generation, loading, serving."""
from rlaif_jax.sampling.completions import Completion
from rlaif_jax.sampling.loading import Policy, load_policy
from rlaif_jax.sampling.logits_processing import SamplingParams
from rlaif_jax.sampling.sampler import Sampler
from rlaif_jax.sampling.state import GenerationOutput, SamplerState

__all__ = ["Completion", "Policy", "load_policy", "SamplingParams", "Sampler", "GenerationOutput",
           "SamplerState"]
