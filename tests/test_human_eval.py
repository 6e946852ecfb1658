"""Human evaluation: export a blinded sheet, fill it as simulated annotators, import, and check
the figures against NumPy references; every kind of bad sheet is refused before any write."""
import csv
import io
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rlaif_jax.evaluation import human_eval, interrater

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUBRIC = human_eval.load_rubric()


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "launch.human_eval", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def _generations(tmp_path: pathlib.Path) -> dict[str, str]:
  """Two checkpoints: launch.generate format (one chat-list prompt) and the harness format."""
  gen = tmp_path / "gen_a.jsonl"
  with gen.open("w", encoding="utf-8") as f:
    for i in range(10):
      prompt = [{"role": "user", "content": f"给老师的祝福 {i}"}] if i == 0 else f"给老师的祝福 {i}"
      f.write(json.dumps({"id": i, "prompt": prompt, "completion": f"老师您好，祝您{i}号快乐！",
                          "finish_reason": "eos"}, ensure_ascii=False) + "\n")
  harness = tmp_path / "gen_b.jsonl"
  with harness.open("w", encoding="utf-8") as f:
    for i in range(8):
      f.write(json.dumps({"id": i, "query": f"春节祝福 {i}", "prompt": f"请只生成一条祝福语：春节祝福 {i}",
                          "response": f"新春快乐，万事如意 {i}", "finish_reason": "eos"},
                         ensure_ascii=False) + "\n")
  return {"sft": str(gen), "grpo": str(harness)}


def _read(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
  raw = path.read_bytes()
  assert raw.startswith(b"\xef\xbb\xbf"), "the sheet must start with a UTF-8 BOM"
  rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
  return rows[0], rows[1:]


def _write(path: pathlib.Path, header: list[str], rows: list[list[str]]) -> None:
  buffer = io.StringIO(newline="")
  csv.writer(buffer).writerows([header] + rows)
  path.write_bytes(buffer.getvalue().encode("utf-8-sig"))


def _fill(sheet: pathlib.Path, out: pathlib.Path, verdicts: dict[str, int],
          scores: dict[str, list[int]]) -> None:
  header, rows = _read(sheet)
  col = {c: header.index(c) for c in header}
  for row in rows:
    for k, c in enumerate(RUBRIC.score_columns):
      row[col[c]] = str(scores[row[0]][k])
    row[col[RUBRIC.verdict_column]] = str(verdicts[row[0]])
  _write(out, header, rows)


@pytest.fixture()
def exported(tmp_path):
  gens = _generations(tmp_path)
  sheet = tmp_path / "sheet.csv"
  r = _cli("export", f"--generations=sft={gens['sft']},grpo={gens['grpo']}", "--n=6",
           f"--output={sheet}", "--seed=3")
  assert r.returncode == 0, r.stderr
  key = json.loads((tmp_path / "sheet.key.json").read_text(encoding="utf-8"))
  return tmp_path, sheet, key


def _simulate(key: dict, seed: int = 0):
  """Three annotators: A = truth, B = truth with 2 flips, C = truth with 4 flips."""
  ids = sorted(key["items"])
  rng = np.random.default_rng(seed)
  truth = np.array([1 if key["items"][i]["checkpoint"] == "grpo" else 0 for i in ids])
  truth[:2] = 1 - truth[:2]  # not a pure checkpoint indicator
  flips = {"A": [], "B": [3, 7], "C": [1, 4, 8, 10]}
  verdicts, scores = {}, {}
  for name, flip in flips.items():
    v = truth.copy()
    v[flip] = 1 - v[flip]
    verdicts[name] = dict(zip(ids, v.tolist()))
    s = np.clip(3 + 2 * (v[:, None] - 0.5) + rng.integers(-1, 2, (len(ids), 5)), 1, 5).astype(int)
    scores[name] = {i: s[k].tolist() for k, i in enumerate(ids)}
  return ids, verdicts, scores


def _cohen_reference(x: np.ndarray, y: np.ndarray) -> float:
  po = float((x == y).mean())
  pe = x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean())
  return (po - pe) / (1 - pe)


def test_round_trip_figures_match_numpy(exported):
  tmp_path, sheet, key = exported
  header, rows = _read(sheet)
  assert header == list(RUBRIC.columns) and len(rows) == 12
  assert all(not row[0].isdigit() and row[0] in key["items"] for row in rows)
  assert {v["checkpoint"] for v in key["items"].values()} == {"sft", "grpo"}
  assert (tmp_path / "sheet.rubric.md").read_text(encoding="utf-8").count("not** the paper") == 1
  ids, verdicts, scores = _simulate(key)
  for name in verdicts:
    _fill(sheet, tmp_path / f"{name}.csv", verdicts[name], scores[name])
  signal = tmp_path / "signal.jsonl"
  truth_majority = {i: int(sum(verdicts[a][i] for a in "ABC") >= 2) for i in ids}
  signal_verdict = {i: (1 - truth_majority[i] if k in (0, 5) else truth_majority[i])
                    for k, i in enumerate(ids)}
  with signal.open("w", encoding="utf-8") as f:
    for k, i in enumerate(ids):
      item = key["items"][i]
      record = ({"item_id": i} if k % 2 else {"query": item["request"], "response": item["greeting"]})
      f.write(json.dumps({**record, "label": signal_verdict[i]}, ensure_ascii=False) + "\n")
    f.write(json.dumps({"query": "不在表里", "response": "x", "label": 1}) + "\n")
  out = tmp_path / "out"
  r = _cli("import", f"--key={tmp_path / 'sheet.key.json'}",
           f"--sheets={tmp_path / 'A.csv'},{tmp_path / 'B.csv'},{tmp_path / 'C.csv'}",
           f"--signals=rm={signal}", f"--output_dir={out}")
  assert r.returncode == 0, r.stderr
  summary = json.loads((out / "human_eval.json").read_text(encoding="utf-8"))
  assert "Fleiss" in (out / "human_eval.md").read_text(encoding="utf-8")
  v = np.array([[verdicts[a][i] for i in ids] for a in "ABC"])
  for pair in summary["verdict_agreement"]["pairwise"]:
    a, b = "ABC".index(pair["a"]), "ABC".index(pair["b"])
    assert pair["cohen_kappa"] == pytest.approx(_cohen_reference(v[a], v[b]))
    assert pair["agreement"] == pytest.approx((v[a] == v[b]).mean())
  # Fleiss by hand: P_i from the count of 1s per item, p_j from the pooled ratings.
  yes = v.sum(axis=0)
  p_i = (yes * (yes - 1) + (3 - yes) * (2 - yes)) / 6
  p1 = v.mean()
  expected = p1 ** 2 + (1 - p1) ** 2
  assert summary["verdict_agreement"]["fleiss_kappa"] == pytest.approx(
      (p_i.mean() - expected) / (1 - expected))
  majority = (yes >= 2).astype(int)
  ckpt = np.array([key["items"][i]["checkpoint"] for i in ids])
  for c in ("sft", "grpo"):
    row = summary["checkpoints"][c]
    assert row["n"] == 6 and row["rate"] == pytest.approx(majority[ckpt == c].mean())
    assert row["ci_low"] <= row["rate"] <= row["ci_high"]
  rm = summary["signals"]["rm"]
  assert rm["items_compared"] == 12 and rm["unmatched_lines"] == 1
  assert rm["agreement"]["accuracy"] == pytest.approx(10 / 12)
  s = np.array([signal_verdict[i] for i in ids])
  assert rm["agreement"]["cohen_kappa"] == pytest.approx(_cohen_reference(majority, s))
  creativity = np.array([[scores[a][i][1] for i in ids] for a in "ABC"], float)
  dim = summary["dimension_agreement"]["creativity"]
  assert dim["krippendorff_alpha_interval"] == pytest.approx(
      interrater.krippendorff_alpha(creativity, "interval"))
  assert dim["exact_agreement"] == pytest.approx(np.mean(
      [(creativity[a] == creativity[b]).mean() for a, b in ((0, 1), (0, 2), (1, 2))]))


def test_interrater_statistics_against_published_examples():
  # Fleiss (1971) as in Wikipedia: 10 items, 14 raters, 5 categories -> kappa 0.210.
  counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
  ratings = np.array([[c for c, k in enumerate(row) for _ in range(k)] for row in counts]).T
  assert interrater.fleiss_kappa(ratings) == pytest.approx(0.2099, abs=1e-4)
  # Krippendorff (2011), 4 observers x 12 units with missing values.
  nan = np.nan
  data = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
                   [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
                   [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
                   [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]])
  assert interrater.krippendorff_alpha(data, "nominal") == pytest.approx(0.743, abs=1e-3)
  assert interrater.krippendorff_alpha(data, "ordinal") == pytest.approx(0.815, abs=1e-3)
  assert interrater.krippendorff_alpha(data, "interval") == pytest.approx(0.849, abs=1e-3)
  assert np.isnan(interrater.fleiss_kappa(np.ones((3, 4))))


def _bad(header, rows, kind):
  rows = [list(r) for r in rows]
  if kind == "unknown id":
    rows[2][0] = "g000000x"
  elif kind == "missing cell":
    rows[2][header.index(RUBRIC.score_columns[1])] = ""
  elif kind == "out of range":
    rows[2][header.index(RUBRIC.score_columns[0])] = "6"
  elif kind == "edited greeting":
    rows[2][2] += "！"
  elif kind == "duplicated id":
    rows[3][0] = rows[2][0]
  elif kind == "missing column":
    drop = header.index(RUBRIC.verdict_column)
    header = header[:drop] + header[drop + 1:]
    rows = [r[:drop] + r[drop + 1:] for r in rows]
  elif kind == "bad verdict":
    rows[2][header.index(RUBRIC.verdict_column)] = "2"
  return header, rows


@pytest.mark.parametrize("kind,expect", [
    ("unknown id", ("row 4", "'item_id'", "unknown item id")),
    ("missing cell", ("row 4", f"'{RUBRIC.score_columns[1]}'", "empty score")),
    ("out of range", ("row 4", f"'{RUBRIC.score_columns[0]}'", "[1, 5]")),
    ("edited greeting", ("row 4", "'greeting'", "edited")),
    ("duplicated id", ("row 5", "'item_id'", "repeats row 4")),
    ("missing column", ("row 1", f"missing column '{RUBRIC.verdict_column}'")),
    ("bad verdict", ("row 4", f"'{RUBRIC.verdict_column}'", "[0, 1]")),
])
def test_bad_sheets_are_refused_before_writing(exported, kind, expect):
  tmp_path, sheet, key = exported
  ids, verdicts, scores = _simulate(key)
  _fill(sheet, tmp_path / "A.csv", verdicts["A"], scores["A"])
  header, rows = _read(tmp_path / "A.csv")
  header, rows = _bad(header, rows, kind)
  bad = tmp_path / "bad.csv"
  _write(bad, header, rows)
  with pytest.raises(human_eval.SheetError) as e:
    human_eval.read_sheet(str(bad), key, RUBRIC)
  assert str(bad) in str(e.value)
  for text in expect:
    assert text in str(e.value)
  out = tmp_path / "out"
  r = _cli("import", f"--key={tmp_path / 'sheet.key.json'}",
           f"--sheets={tmp_path / 'A.csv'},{bad}", f"--output_dir={out}")
  assert r.returncode == 1 and str(bad) in r.stderr
  assert not out.exists()


def test_export_refuses_too_few_generations(tmp_path):
  gens = _generations(tmp_path)
  with pytest.raises(human_eval.SheetError, match="fewer than n=9"):
    human_eval.export_sheet({"grpo": gens["grpo"]}, 9, 0, str(tmp_path / "s.csv"),
                            str(tmp_path / "k.json"), RUBRIC)
  assert not (tmp_path / "s.csv").exists()
