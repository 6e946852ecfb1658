"""XLA:GPU target descriptions (`GpuTargetConfig` text protos) for compiling without the GPU.

With the CUDA plugin installed (`jax[cuda12]`) and `JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1`,
`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=TEXT,
topology="1x1xN")` gives N compile-only GPUs: XLA:GPU then compiles for them with its own fusion,
scheduling and buffer assignment. The figures are the vendors' public device properties (SM
count, bandwidth, caches, memory as the driver reports it).
"""
from __future__ import annotations

import re

_TEMPLATE = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
runtime_version {{ major: 12 minor: 8 }}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
device_description_str: "{name}"
"""

# name -> (SMs, bytes/s, device memory bytes as the driver reports it, device description)
_GPUS = {
    "h100": (132, 3_352_320_000_000, 84_929_347_584, "NVIDIA H100 80GB HBM3"),
    "h200": (132, 4_800_000_000_000, 150_754_820_096, "NVIDIA H200"),
}


def names() -> tuple[str, ...]:
  return tuple(_GPUS)


def target_config(gpu: str) -> str:
  """The GpuTargetConfig text proto of `gpu` (h100, h200)."""
  sms, bandwidth, memory, name = _GPUS[gpu]
  return _TEMPLATE.format(sms=sms, bandwidth=bandwidth, memory=memory, name=name)


def memory_bytes(target: str) -> int:
  """device_memory_size of a target text proto."""
  return int(re.search(r"device_memory_size:\s*(\d+)", target).group(1))
