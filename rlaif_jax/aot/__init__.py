"""Ahead-of-time compiles of a config's jitted functions for TPU/GPU topologies without the
hardware: `topology` (names -> compile-only devices), `stages` / `rl_jobs` (the functions a
config's run executes, on abstract shapes), `analysis` (one compile's memory, cost and
collectives), `report` (the table and the summary line). CLI: `python -m launch.aot_compile`."""
