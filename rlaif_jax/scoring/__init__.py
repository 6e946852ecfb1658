"""One scoring contract shared by RL rewards and evaluation judges (BUILD_NOTES "Scoring contract").

  contract.py  `Rollout` (what was generated), `Scores` (values, validity, extras), the `Scorer`
               protocol, and the scorers that need nothing above this layer: plain Python
               callables (TRL style), the length baseline, a weighted sum, and `OnMainProcess`
               (multi-host: host-side scorers asked by process 0 only).
  offline.py   `OfflineFileScorer`: the rollout handed to an external batch job through files.
  config.py    the typed scorer configs (ConfigDict -> frozen dataclasses, unknown keys refused)
               and the `--judges` CLI shorthand, which parses into the same dataclasses.

The reward model (`training.reward_scoring`), the principle judge and the curator
(`judging.reward`) implement the protocol in their own layers; `judging.scorers.build_scorer`
builds any of them from its config.
"""
