"""rlaif_jax: RLAIF for small creative-writing language models in JAX/Flax.

Folders: models/ (decoder, HF bridge), sharding/ (mesh + logical axis rules), tokenizers/, data/,
training/ (trainer skeleton, SFT, reward model), sampling/ (KV-cache sampler), rl/ (GRPO/PPO math,
rollout buffer, reward sources), judging/ (LLM backends, judge, adversarial principles, curator),
evaluation/ (metrics, reports, plots).
"""

__version__ = "0.1.0"
