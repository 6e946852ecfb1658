"""LLM judging: backends, prompts, parsing, the principle-guided judge, the curator, the game.

Modules (import what you need; nothing is imported here, so importing one piece stays cheap):
  backends/         ``LLMBackend`` (async batched chat), ``OpenAIChatBackend``,
                    ``LocalSamplerBackend``, ``make_backend``, ``RetryPolicy``.
  prompts.py        templates in ``prompts/*.txt`` loaded by name, ``render``.
  principles.py     versioned principle sets in ``principles/*.json``, ``load_principles``.
  parsing.py        robust reply parsing into role dataclasses.
  agent.py          template + parser + parse-retries over one batch (``Agent``).
  judge.py          ``PrincipleJudge`` (the paper's Detector).
  reward.py         ``JudgeScorer`` / ``CuratorScorer``: the judge and curator as
                    ``scoring.Scorer``s (RL rewards, evaluation judges).
  scorers.py        ``build_scorer``: any scorer kind from its typed config.
  retrieval.py      BM25 over character n-grams, ``ExampleRetriever``.
  curator.py        ``MultiAgentCurator`` and ``build_preference_pairs``.
  adversarial.py    ``AdversarialGame``; adversarial_run.py its resumable driver.
  judge_report.py; cli.py (flags). Resumable JSON Lines jobs: ``rlaif_jax.jsonl_jobs``.
"""
