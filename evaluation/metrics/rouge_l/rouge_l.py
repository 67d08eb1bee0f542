"""ROUGE-L F-measure (longest common subsequence), computed offline.

`evaluate.load("rouge")` needs the Hub; this module implements ROUGE-L as in Lin (2004) with the `rouge_score`
default tokenisation (lower-case, runs of letters and digits, no stemming).
One import per line: evaluate's dependency scanner misreads `import a, b`.
"""

import re

import datasets
import evaluate

_TOKEN = re.compile(r"[a-z0-9]+")
_KWARGS = """
Args:
    predictions: list of strings.
    references: list of strings, same length.
Returns:
    rouge_l: mean F-measure of the longest common subsequence; scores: one per pair.
"""


def _lcs(a, b):
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f(prediction, reference):
    p, r = (_TOKEN.findall((text or "").lower()) for text in (prediction, reference))
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE-L F-measure between each prediction and its reference.",
            citation="Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scores = [rouge_l_f(p, r) for p, r in zip(predictions, references, strict=True)]
        return {"rouge_l": sum(scores) / len(scores) if scores else None, "scores": scores}
