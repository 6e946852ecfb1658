r"""python -m launch.human_eval export --generations=sft=E/generations/sft.jsonl,grpo=E/generations/grpo.jsonl \
  --n=50 --output=sheet.csv

python -m launch.human_eval import --key=sheet.key.json --sheets=ann1.csv,ann2.csv,ann3.csv \
  --signals=rm=E/judgements/grpo/rm.jsonl --output_dir=human

Human evaluation with a blinded annotation sheet (rlaif_jax/evaluation/human_eval.py).

export: samples --n generations per checkpoint (--seed), shuffles them under opaque item ids
  and writes --output (CSV, UTF-8 with BOM: opens in Excel; save back as "CSV UTF-8"), the key
  --key (default OUTPUT minus .csv + .key.json; keep it from the annotators) and the rubric
  text beside the sheet (OUTPUT minus .csv + .rubric.md). Generation files: launch.generate
  output or the evaluation's generations/<checkpoint>.jsonl.
import: reads every annotator's filled copy (--sheets; the annotator's name is the file name),
  refuses a bad sheet naming file, row and column before writing anything, and writes
  OUTPUT_DIR/human_eval.{md,json}: excellence rate per checkpoint (majority verdict, Wilson
  95% CI), inter-annotator agreement (pairwise Cohen's kappa, Fleiss' kappa, Krippendorff's
  alpha; per rubric dimension), and each --signals NAME=FILE's agreement with the majority
  verdict (JSONL {item_id | checkpoint+id | query+response, verdict | label}).

The rubric (default greetings_v1: five 1-5 scores + an excellent 1/0 verdict) is the
project's own: the paper's exact annotation rubric is not public.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags

from rlaif_jax import storage
from rlaif_jax.evaluation import human_eval, human_eval_report

FLAGS = flags.FLAGS
flags.DEFINE_list("generations", [], "export: NAME=FILE generation JSONL per checkpoint.")
flags.DEFINE_integer("n", 50, "export: generations sampled per checkpoint.")
flags.DEFINE_string("output", None, "export: the annotation sheet (.csv).")
flags.DEFINE_string("key", None, "export: key path (default OUTPUT.key.json); import: the key.")
flags.DEFINE_integer("seed", 0, "export: seeds the sampling, item ids and row order.")
flags.DEFINE_string("rubric", human_eval.DEFAULT_RUBRIC,
                    "export: packaged rubric name or a rubric JSON path. "
                    + human_eval.NOT_PUBLIC)
flags.DEFINE_list("sheets", [], "import: filled sheets, one per annotator.")
flags.DEFINE_list("signals", [], "import: NAME=FILE automatic verdicts (JSONL) to compare.")
flags.DEFINE_string("output_dir", None, "import: where human_eval.{md,json} go.")


def _stem(path: str) -> str:
  return path[:-4] if path.lower().endswith(".csv") else path


def export() -> None:
  if not FLAGS.generations or not FLAGS.output:
    raise app.UsageError("export needs --generations and --output")
  rubric = human_eval.load_rubric(FLAGS.rubric)
  key_path = FLAGS.key or _stem(FLAGS.output) + ".key.json"
  key = human_eval.export_sheet(human_eval.parse_named(FLAGS.generations, "--generations"),
                                FLAGS.n, FLAGS.seed, FLAGS.output, key_path, rubric)
  storage.write_text(_stem(FLAGS.output) + ".rubric.md", rubric.markdown)
  print(f"wrote {len(key['items'])} items to {FLAGS.output}; key (keep from annotators): "
        f"{key_path}; rubric: {_stem(FLAGS.output)}.rubric.md")


def import_() -> None:
  if not FLAGS.key or not FLAGS.sheets or not FLAGS.output_dir:
    raise app.UsageError("import needs --key, --sheets and --output_dir")
  key = human_eval.load_key(FLAGS.key)
  rubric = human_eval.rubric_of(key, FLAGS.key)
  names = [_stem(p.replace("\\", "/").rsplit("/", 1)[-1]) for p in FLAGS.sheets]
  if len(set(names)) != len(names):
    names = list(FLAGS.sheets)
  if len(set(names)) != len(names):
    raise human_eval.SheetError(f"--sheets names a file twice: {FLAGS.sheets}")
  sheets = {n: human_eval.read_sheet(p, key, rubric) for n, p in zip(names, FLAGS.sheets)}
  signals = {n: human_eval.read_signal(p, key)
             for n, p in human_eval.parse_named(FLAGS.signals, "--signals").items()}
  summary = human_eval_report.summarise(key, rubric, sheets, signals)
  md_path, json_path = human_eval_report.write_summary(summary, FLAGS.output_dir)
  print(human_eval_report.render_markdown(summary))
  print(f"wrote {md_path} and {json_path}")


def main(argv: list[str]) -> int:
  if len(argv) != 2 or argv[1] not in ("export", "import"):
    raise app.UsageError("usage: python -m launch.human_eval export|import --flags "
                         "(see --helpfull)")
  try:
    export() if argv[1] == "export" else import_()
  except human_eval.SheetError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
