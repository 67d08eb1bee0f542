"""Quality filters on validated sessions (paper step 4, the text filters).

Each filter returns a score and whether the session passes. A session failing any filter is dropped from
`sessions`/`sft` and listed in the `filtered` config with the reason, so users can audit what was removed.
Image filters (CLIP similarity, face/identity checks, NSFW) need model weights and run in the generation
pipeline; they record their scores in the raw record's `quality.scores`, which the builder keeps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_TURNS, MAX_TURNS = 4, 20
MIN_UNIQUE_WORD_RATIO = 0.5
MIN_WORDS_FOR_REPETITION = 8  # short replies ("no, no, no") are not degenerate generations
MIN_COPIED_WORDS = 10  # a shared run of this many words counts as copying the profile

_WORD = re.compile(r"[a-z0-9']+")
_FAILURE = re.compile(
    r"^\s*(i don'?t know|i'?m not sure|i cannot help|as an ai\b|i am an ai\b|sorry, i can'?t)", re.IGNORECASE
)


@dataclass(frozen=True)
class FilterResult:
    name: str
    score: float
    passed: bool
    reason: str = ""


def _words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def turn_count(record: dict) -> FilterResult:
    n = len(record["turns"])
    return FilterResult("turn_count", float(n), MIN_TURNS <= n <= MAX_TURNS,
                        f"{n} turns, outside {MIN_TURNS}-{MAX_TURNS}")


def speaker_count(record: dict) -> FilterResult:
    speakers = {turn["speaker"] for turn in record["turns"]}
    return FilterResult("speaker_count", float(len(speakers)), len(speakers) <= 2, f"{len(speakers)} speakers")


def word_repetition(record: dict) -> FilterResult:
    """Lowest unique/total word ratio over statements long enough to judge; below 0.5 means looping text."""
    ratios = [
        len(set(words)) / len(words)
        for words in (_words(turn["statement"]) for turn in record["turns"])
        if len(words) >= MIN_WORDS_FOR_REPETITION
    ]
    worst = min(ratios, default=1.0)
    return FilterResult("word_repetition", worst, worst >= MIN_UNIQUE_WORD_RATIO,
                        f"a statement repeats words (unique/total = {worst:.2f} < {MIN_UNIQUE_WORD_RATIO})")


def therapist_failure(record: dict) -> FilterResult:
    """Empty therapist turns and refusals/non-answers ("I don't know", "As an AI ...")."""
    failures = [
        index for index, turn in enumerate(record["turns"])
        if turn["speaker"] == "therapist" and (not turn["statement"].strip() or _FAILURE.match(turn["statement"]))
    ]
    return FilterResult("therapist_failure", float(len(failures)), not failures,
                        f"therapist response failure at turns {failures}")


def profile_copy(record: dict) -> FilterResult:
    """Longest run of words a statement copies from the profile text (generators sometimes paste it in)."""
    profile_words = _words(" ".join(str(record["client"].get(k) or "") for k in ("personal_info", "reason_for_counseling")))
    profile_ngrams = {tuple(profile_words[i:i + MIN_COPIED_WORDS]) for i in range(len(profile_words))}
    copied = 0
    for turn in record["turns"]:
        words = _words(turn["statement"])
        if any(tuple(words[i:i + MIN_COPIED_WORDS]) in profile_ngrams for i in range(len(words) - MIN_COPIED_WORDS + 1)):
            copied += 1
    return FilterResult("profile_copy", float(copied), copied == 0,
                        f"{copied} statement(s) copy {MIN_COPIED_WORDS}+ words of the profile verbatim")


TEXT_FILTERS = (turn_count, speaker_count, word_repetition, therapist_failure, profile_copy)


def apply_filters(record: dict) -> tuple[list[FilterResult], list[FilterResult]]:
    """Run every text filter; return (all results, failed results)."""
    results = [check(record) for check in TEXT_FILTERS]
    return results, [result for result in results if not result.passed]
