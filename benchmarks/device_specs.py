"""Memory bandwidth and size of the accelerators the benchmarks know, by JAX `device_kind`.

`benchmarks/sampler.py --hbm_gbps` (the decode roofline) and `benchmarks/step_memory.py
--device_gib` (the 'fits' column) default to these; a device kind not listed needs the flag.
"""
from __future__ import annotations

# (substring of jax.devices()[0].device_kind, HBM GB/s, device memory GiB), vendor figures. The
# first match wins, so the more specific names come first. None: ambiguous, pass the flag.
DEVICE_SPECS: tuple[tuple[str, float | None, float | None], ...] = (
    ("GH200", None, None),  # 96 GB HBM3 (4000 GB/s) or 144 GB HBM3e (4900 GB/s) variants
    ("H100 PCIe", 2000.0, 80.0),
    ("H100 NVL", 3900.0, 94.0),
    ("H100", 3350.0, 80.0),  # SXM5, HBM3: device_kind "NVIDIA H100 80GB HBM3"
    ("H200", 4800.0, 141.0),
)
_FIELDS = {"hbm_gbps": 1, "device_gib": 2}


def spec_for(kind: str, field: str) -> tuple[float, str] | None:
  """(value of `field` for device kind `kind`, the matched table name), None when unknown.

  >>> spec_for("NVIDIA H100 80GB HBM3", "hbm_gbps")
  (3350.0, 'H100')
  >>> spec_for("NVIDIA H100 PCIe", "hbm_gbps")
  (2000.0, 'H100 PCIe')
  >>> spec_for("NVIDIA H200", "device_gib")
  (141.0, 'H200')
  >>> spec_for("NVIDIA GH200 480GB", "hbm_gbps") is None
  True
  """
  for entry in DEVICE_SPECS:
    if entry[0] in kind:
      value = entry[_FIELDS[field]]
      return None if value is None else (value, entry[0])
  return None


def resolve(flag_value: float | None, field: str, backend: str, kind: str,
            cpu_default: float | None = None) -> tuple[float | None, str]:
  """(value, where it came from) of the flag `--<field>`: the flag when given; on CPU
  `cpu_default`; on an accelerator the DEVICE_SPECS entry of its kind. Raises ValueError for an
  accelerator kind not in the table (the caller tells the user to pass the flag).

  >>> resolve(None, "hbm_gbps", "gpu", "NVIDIA H200")
  (4800.0, "default for 'NVIDIA H200' (DEVICE_SPECS 'H200')")
  >>> resolve(1000.0, "hbm_gbps", "gpu", "NVIDIA H200")
  (1000.0, '--hbm_gbps')
  >>> resolve(None, "device_gib", "cpu", "cpu", 80.0)
  (80.0, 'cpu backend default')
  """
  if flag_value is not None:
    return flag_value, f"--{field}"
  if backend == "cpu":
    return cpu_default, "cpu backend default"
  hit = spec_for(kind, field)
  if hit is None:
    raise ValueError(f"no default --{field} for device kind {kind!r} (known: "
                     f"{', '.join(e[0] for e in DEVICE_SPECS if e[1] is not None)}); "
                     f"pass --{field}")
  return hit[0], f"default for {kind!r} (DEVICE_SPECS {hit[1]!r})"
