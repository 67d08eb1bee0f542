"""Reference metrics on gold sessions, offline: the therapist's next turn given the gold history.

For each therapist turn answering a client turn, the therapist under test gets the gold history, the client's face
(vision strategies) and the gold plan (planning strategies); its reply is compared with the gold one (semantic
similarity, ROUGE-L, corpus distinct-1/2: `evaluation/metrics/`), and an `ec_planning` caption with the gold stage
direction.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)


def reference_examples(
    sessions: list[dict[str, Any]], max_turns_per_session: int | None = None
) -> list[dict[str, Any]]:
    """(history, client turn, gold reply) examples from gold session rows (dataset `sessions` config)."""
    examples = []
    for session in sessions:
        turns = session["turns"]
        speakers = [turn["speaker"] for turn in turns]  # examples: therapist turns that answer a client turn
        answers = [i for i in range(1, len(turns)) if speakers[i - 1 : i + 1] == ["client", "therapist"]]
        for index in answers[:max_turns_per_session]:
            examples.append(
                {
                    "session_id": session["id"],
                    "resistance": session.get("resistance"),
                    "turn_index": index,
                    "client": session["client"],
                    "cbt_technique": session.get("cbt_technique"),
                    "cbt_plan": session.get("cbt_plan"),
                    "history": [
                        {"speaker": t["speaker"], "statement": t["statement"], "stage_direction": t["stage_direction"]}
                        for t in turns[: index - 1]
                    ],
                    "client_statement": turns[index - 1]["statement"] or "",
                    "gold_stage_direction": turns[index - 1].get("stage_direction"),
                    "image": turns[index - 1].get("image"),
                    "reference": turns[index]["statement"],
                }
            )
    return examples


def predict(therapist: Any, examples: list[dict[str, Any]], batch_size: int = 8, progress: bool = True):
    """The therapist's reply (and ec_planning caption) for each example, generated in batches."""
    from tqdm.auto import tqdm

    from inference.therapist import PLANNING_STRATEGIES, VISION_STRATEGIES

    vision = therapist.strategy in VISION_STRATEGIES
    outputs = []
    for start in tqdm(range(0, len(examples), batch_size), desc="Reference turns", disable=not progress):
        batch = examples[start : start + batch_size]
        sessions = []
        for example in batch:
            kwargs = {}
            if therapist.strategy in PLANNING_STRATEGIES and example["cbt_technique"] and example["cbt_plan"]:
                kwargs = {"cbt_technique": example["cbt_technique"], "cbt_plan": example["cbt_plan"]}
            session = therapist.start_sessions([example["client"]], **kwargs)[0]
            session.history = [dict(turn) for turn in example["history"]]
            sessions.append(session)
        images = [example["image"] if vision else None for example in batch]
        if vision and any(image is None for image in images):
            missing = next(e for e, i in zip(batch, images, strict=True) if i is None)
            raise ValueError(
                f"gold session {missing['session_id']}: client turn {missing['turn_index'] - 1} has no "
                f"image, which strategy {therapist.strategy!r} needs"
            )
        replies = therapist.respond_batch(sessions, [e["client_statement"] for e in batch], images)
        outputs += [{"prediction": reply.text, "caption": reply.emotion} for reply in replies]
    return outputs


@functools.cache
def load_metric(name: str) -> Any:
    """A bundled metric module loaded once per process (`evaluate.load` copies and hashes the module each call)."""
    import evaluate

    from .metrics import metric_path

    return evaluate.load(metric_path(name))


def _metrics(predictions: list[str], semantic: list[float], rouge: list[float]) -> dict[str, Any]:
    """Means of the per-pair scores of a subset, and its corpus-level distinct-n."""
    if not predictions:
        return {"n_turns": 0}
    result = {
        "n_turns": len(predictions),
        "semantic_similarity": sum(semantic) / len(semantic),
        "rouge_l": sum(rouge) / len(rouge),
    }
    result.update(load_metric("distinct_n").compute(predictions=predictions))
    return result


def reference_metrics(
    therapist: Any,
    sessions: list[dict[str, Any]],
    *,
    max_turns_per_session: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Overall and per-resistance reference metrics for one therapist, with the predictions for audit."""
    examples = reference_examples(sessions, max_turns_per_session)
    outputs = predict(therapist, examples, batch_size, progress)
    predictions, references = [o["prediction"] for o in outputs], [e["reference"] for e in examples]
    semantic, rouge = [], []
    if predictions:  # per-pair scores once; subsets average them (one embedding pass, not one per subset)
        semantic = load_metric("semantic_similarity").compute(predictions=predictions, references=references)["scores"]
        rouge = load_metric("rouge_l").compute(predictions=predictions, references=references)["scores"]
    result: dict[str, Any] = {"overall": _metrics(predictions, semantic, rouge)}
    by_resistance: dict[str, Any] = {}
    for style in sorted({e["resistance"] for e in examples if e["resistance"]}):
        chosen = [i for i, e in enumerate(examples) if e["resistance"] == style]
        by_resistance[style] = _metrics(
            [predictions[i] for i in chosen], [semantic[i] for i in chosen], [rouge[i] for i in chosen]
        )
    result["by_resistance"] = by_resistance
    if therapist.strategy == "ec_planning":
        pairs = [
            (o["caption"], e["gold_stage_direction"])
            for o, e in zip(outputs, examples, strict=True)
            if o["caption"] and e["gold_stage_direction"]
        ]
        if pairs:
            result["overall"]["caption_similarity"] = load_metric("semantic_similarity").compute(
                predictions=[p for p, _ in pairs], references=[r for _, r in pairs]
            )["semantic_similarity"]
    fields = ("session_id", "turn_index", "prediction", "reference", "caption", "gold_stage_direction")
    merged = [{**example, **output} for example, output in zip(examples, outputs, strict=True)]
    result["predictions"] = [{key: pair[key] for key in fields} for pair in merged]
    return result
