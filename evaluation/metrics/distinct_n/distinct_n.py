"""Distinct-1 and distinct-2 (Li et al., 2016): unique n-grams over all n-grams across the predictions.

One import per line: evaluate's dependency scanner misreads `import a, b`.
"""

import re

import datasets
import evaluate

_TOKEN = re.compile(r"[a-z0-9']+")
_KWARGS = """
Args:
    predictions: list of strings.
Returns:
    distinct_1, distinct_2: ratio of unique to total unigrams / bigrams over the corpus (None when there are none).
"""


def _ngrams(tokens, n):
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus-level distinct-n: unique n-grams divided by total n-grams.",
            citation="Li, J. et al. (2016). A Diversity-Promoting Objective Function for Neural Conversation Models.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions):
        result = {}
        for n in (1, 2):
            grams = [g for text in predictions for g in _ngrams(_TOKEN.findall((text or "").lower()), n)]
            result[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else None
        return result
