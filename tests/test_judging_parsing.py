"""Parsing of messy LLM replies into the role formats."""
import pytest

from rlaif_jax.judging import parsing
from rlaif_jax.judging.parsing import ParseError

DETECTOR_CASES = [
    ('{"verdict": "Good", "evaluation_explanation": "很好"}', 1, "很好"),
    ('好的，评估如下：\n```json\n{"verdict": "Bad", "evaluation_explanation": "太短"}\n```\n以上。', 0, "太短"),
    ('```\n{"verdict": "good", "evaluation_explanation": "ok"}\n```', 1, "ok"),
    ('评估结果：{"verdict":"Bad","evaluation_explanation":"缺少情感"} 希望有帮助', 0, "缺少情感"),
    ('｛“verdict”：“Good”，“evaluation_explanation”：“语言优美”｝', 1, "语言优美"),
    ('｛“verdict”：“坏”，“evaluation_explanation”：“太短，缺少“情感””｝', 0, "太短，缺少“情感”"),
    ("{'verdict': 'Bad', 'evaluation_explanation': 'it\\'s generic',}", 0, "it's generic"),
    ('{"verdict": "好", "evaluation_explanation": "不错"}', 1, "不错"),
    ('{"verdict": "不好", "evaluation_explanation": "差"}', 0, "差"),
    ('{"verdict": "Bad（坏）", "evaluation_explanation": "x"}', 0, "x"),
    ('{"verdict": "判为Good", "evaluation_explanation": "y"}', 1, "y"),
    ('{"verdict": 1, "evaluation_explanation": "num"}', 1, "num"),
    ('{"verdict": true, "evaluation_explanation": null}', 1, ""),
    ('{verdict: Bad, evaluation_explanation: "unquoted keys"}', 0, "unquoted keys"),
    ('{"verdict": "Good", // comment\n "evaluation_explanation": "c" /* more */}', 1, "c"),
    ('{"VERDICT": "Good", "Explanation": "aliases"}', 1, "aliases"),
    ('{"判断结果": "坏", "理由": "中文键"}', 0, "中文键"),
    ('{"verdict": "Good", "evaluation_explanation": "他说“好”，真不错"}', 1, "他说“好”，真不错"),
    ('{"verdict": "Good", "evaluation_explanation": "line1\nline2"}', 1, "line1\nline2"),
    # An echoed format example first, then the real answer.
    ('格式：{"verdict": "Good 或 Bad", "evaluation_explanation": "..."}\n答案：'
     '{"verdict": "Bad", "evaluation_explanation": "real"}', 0, "real"),
    ('```json\n说明：{"verdict": "Good", "evaluation_explanation": "prose in fence"}\n```', 1,
     "prose in fence"),
    ('{"verdict": "Bad", "evaluation_explanation": "nested", "details": {"a": [1, 2, {"b": "}"}]}}',
     0, "nested"),
]


@pytest.mark.parametrize("reply,verdict,explanation", DETECTOR_CASES)
def test_parse_detector_accepts_messy_replies(reply, verdict, explanation):
  out = parsing.parse_detector(reply)
  assert (out.verdict, out.explanation) == (verdict, explanation)


BAD_DETECTOR_REPLIES = [
    "",
    "   ",
    "我认为这条祝福语还不错。",
    '{"verdict": "Good", "evaluation_explanation": "这条祝福语很',  # cut off
    '```json\n{"verdict": "Bad", "evaluation_',  # cut off inside a fence
    '{"verdict": "Good 或 Bad", "evaluation_explanation": "echo"}',
    '{"verdict": "maybe", "evaluation_explanation": "?"}',
    '{"evaluation_explanation": "no verdict"}',
    '["Good"]',
    '{"verdict": 2}',
]


@pytest.mark.parametrize("reply", BAD_DETECTOR_REPLIES)
def test_parse_detector_rejects_unusable_replies(reply):
  with pytest.raises(ParseError):
    parsing.parse_detector(reply)


def test_cut_off_reply_is_reported_as_cut_off():
  with pytest.raises(ParseError, match="cut off"):
    parsing.parse_detector('{"verdict": "Good", "evaluation_explanation": "很')


@pytest.mark.parametrize("reply,judge", [
    ('{"judge": 0, "reason": "r"}', 0),
    ('```json\n{\n  "judge": 1,\n  "reason": "好"\n}\n```', 1),
    ('{"judge": "1", "reason": "string digit"}', 1),
    ("{'judge': False, 'reason': 'py'}", 0),
    ('｛“judge”：1，“reason”：“全角”｝', 1),
    ('{"判定": "好", "理由": "中文"}', 1),
])
def test_parse_judge(reply, judge):
  assert parsing.parse_judge(reply).judge == judge


@pytest.mark.parametrize("reply", ['{"judge": "0｜1", "reason": "echo"}', '{"reason": "x"}',
                                   '{"judge": 1, "reason": "cut'])
def test_parse_judge_rejects(reply):
  with pytest.raises(ParseError):
    parsing.parse_judge(reply)


def test_parse_generator_reflector_points():
  g = parsing.parse_generator('```json\n{"bad_response": "生日快乐", "explanation_of_flaws": "太短"}\n```')
  assert (g.bad_response, g.explanation) == ("生日快乐", "太短")
  with pytest.raises(ParseError, match="empty"):
    parsing.parse_generator('{"bad_response": "  ", "explanation_of_flaws": "x"}')
  r = parsing.parse_reflector('{"reflection_feedback": "忽略了长度", "suggested_for_D": "加一条"}')
  assert (r.feedback, r.suggestion) == ("忽略了长度", "加一条")
  with pytest.raises(ParseError):
    parsing.parse_reflector('{"other": 1}')
  assert parsing.parse_points('```json\n{\n "流畅": "通顺",\n "创意": ["a", "b"]\n}\n```') == {
      "流畅": "通顺", "创意": '["a", "b"]'}
  assert parsing.parse_points("没有优点：{}") == {}


def test_parse_rules_strips_numbering_and_enforces_limit():
  text = '{"optimized_strategy": "1. 规则一\\n2、规则二\\n- 规则三\\n\\n(4) 规则一"}'
  assert parsing.parse_rules(text) == ("规则一", "规则二", "规则三")
  rules = [f"规则{i}" for i in range(11)]
  with pytest.raises(ParseError, match="11 rules, at most 10"):
    parsing.parse_rules(str({"optimized_strategy": rules}))
  assert len(parsing.parse_rules(str({"optimized_strategy": rules[:10]}))) == 10
  with pytest.raises(ParseError, match="at most 3"):
    parsing.parse_rules(str({"optimized_strategy": rules[:4]}), max_rules=3)
  with pytest.raises(ParseError, match="empty"):
    parsing.parse_rules('{"optimized_strategy": []}')


@pytest.mark.parametrize("value,expected", [
    ("Good", 1), ("BAD", 0), ("好", 1), ("坏", 0), ("合格", 1), ("不合格", 0), (1, 1), (0.0, 0),
    (True, 1), ("'Good'", 1), ("【Bad】", 0), ("Good.", 1), ("1.0", 1), ("0.0", 0),
    ("verdict: good", 1)])
def test_normalise_binary(value, expected):
  assert parsing.normalise_binary(value, "verdict") == expected


@pytest.mark.parametrize("value", ["Good/Bad", "好或坏", None, 0.5, "", [1], "not good", "Not Good.",
                                   "isn't good", "not bad", "不 好", "不 合格", "0.8", "0.5"])
def test_normalise_binary_rejects(value):
  with pytest.raises(ParseError, match="verdict"):
    parsing.normalise_binary(value, "verdict")


def test_the_last_valid_object_wins_over_an_echoed_valid_example():
  # The judge template's own example ({"judge": 0, ...}) is valid; an echo of it comes first.
  reply = ('格式示例：\n```json\n{"judge": 0, "reason": "最终理由"}\n```\n'
           '我的判断：{"judge": 1, "reason": "维持原判"}')
  assert parsing.parse_judge(reply) == parsing.JudgeReply(judge=1, reason="维持原判")
  # A bare answer followed by a fenced example with a placeholder: the answer stands.
  reply = '{"verdict": "Bad", "evaluation_explanation": "x"}\n```json\n{"verdict": "Good 或 Bad"}\n```'
  assert parsing.parse_detector(reply).verdict == 0
  reply = '{"optimized_strategy": ["规则1", "规则2", "..."]}\n答案：{"optimized_strategy": ["甲", "乙"]}'
  assert parsing.parse_rules(reply) == ("甲", "乙")
