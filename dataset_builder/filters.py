"""Quality filters (paper step 4), text and image, with configurable thresholds (the paper's by default).

Each filter returns a `FilterResult` (score, passed, reason). `mirror build` runs `TEXT_FILTERS` on every session;
`mirror generate` runs every filter with the recipe's thresholds and records failures as `failed:<filter>` flags
(see `apply_filters` and README.md for how the two meet). The model-based filters (`ModelFilters`) load real
models by id; one that cannot be loaded raises, or with `on_missing_model="skip"` is recorded as a
`skipped:<filter>: <why>` flag: a filter never passes silently.

The default part-of-speech tagger (`pos_tagger="lexicon"`) is an offline APPROXIMATION: closed-class words plus
suffix rules, `X` for the rest (runs of `X` are not counted), so it can miss runs of open-class words that
`pos_tagger="spacy:<model>"` (a real tagger, Universal POS tags) would catch.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cues import cue_warnings

logger = logging.getLogger(__name__)

MIN_TURNS, MAX_TURNS = 4, 20

_WORD = re.compile(r"[a-z0-9']+")
_FAILURE = re.compile(
    r"^\s*(i don'?t know|i'?m not sure|i cannot help|as an ai\b|i am an ai\b|sorry, i can'?t)", re.IGNORECASE
)
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")
FAILED_FLAG, SKIPPED_FLAG = "failed:", "skipped:"
JUDGED_FLAG = "filters_applied:mirror-generate"  # see apply_filters


@dataclass
class FilterConfig:
    """Thresholds and models of the quality filters; defaults are the paper's values (ARCHITECTURE §4)."""

    min_turns: int = field(default=MIN_TURNS, metadata={"help": "Fewest turns a session may have."})
    max_turns: int = field(default=MAX_TURNS, metadata={"help": "Most turns a session may have."})
    max_speakers: int = field(default=2, metadata={"help": "Most distinct speakers."})
    min_unique_word_ratio: float = field(
        default=0.5, metadata={"help": "Lowest unique/total word ratio of a statement."}
    )
    # Short replies ("no, no, no") are not degenerate generations.
    min_words_for_repetition: int = field(
        default=8, metadata={"help": "Statements shorter than this skip the word check."}
    )
    min_copied_words: int = field(
        default=10, metadata={"help": "A run of this many profile words in a statement is copying."}
    )
    max_pos_run: int = field(default=3, metadata={"help": "Most identical part-of-speech tags in a row."})
    pos_tagger: str = field(
        default="lexicon",
        metadata={"help": "'lexicon' (offline approximation, see module doc) or 'spacy:<model>' (real tagger)."},
    )
    dialogue_safety: bool = field(default=True, metadata={"help": "Screen therapist turns for unsafe content."})
    # Off by default: the crisis classifier is trained on client turns and would flag a therapist's risk-assessment
    # question ("have you thought about ending your life?"), which is good practice, not unsafe.
    safety_embeddings: bool = field(
        default=False, metadata={"help": "Also run the crisis detector's MiniLM crisis classifier on therapist turns."}
    )
    safety_model: str | None = field(
        default=None, metadata={"help": "Optional text-classification model id for dialogue safety."}
    )
    safety_unsafe_labels: tuple[str, ...] = field(
        default=("unsafe", "toxic", "harmful", "needs_intervention", "LABEL_1"),
        metadata={"help": "Labels of safety_model that mean unsafe."},
    )
    safety_threshold: float = field(default=0.5, metadata={"help": "Unsafe probability that fails a turn."})
    clip_model: str | None = field(
        default="openai/clip-vit-large-patch14-336",
        metadata={"help": "CLIP model id for image-text similarity and face presence (None disables, recorded)."},
    )
    clip_prompt: str = field(
        default="A facial photo with {stage_direction}", metadata={"help": "Text compared with each client image."}
    )
    min_clip_similarity: float = field(default=0.2, metadata={"help": "Lowest CLIP cosine similarity."})
    min_face_probability: float = field(
        default=0.5, metadata={"help": "Lowest CLIP zero-shot probability that the image shows a face."}
    )
    age_model: str | None = field(
        default="nateraw/vit-age-classifier", metadata={"help": "Image-classification model id predicting age."}
    )
    max_age_gap: float = field(default=10.0, metadata={"help": "Largest |predicted - profile| age in years."})
    gender_model: str | None = field(
        default="rizvandwiki/gender-classification",
        metadata={"help": "Image-classification model id predicting gender (labels containing male/female)."},
    )
    identity_model: str | None = field(
        default="openai/clip-vit-large-patch14-336",
        metadata={
            "help": "Model id whose image embeddings compare a face with the reference face (any transformers "
            "model with get_image_features; a face-recognition embedding model is the stricter choice)."
        },
    )
    min_identity_similarity: float = field(default=0.2, metadata={"help": "Lowest cosine to the reference face."})
    nsfw_model: str | None = field(
        default="Falconsai/nsfw_image_detection", metadata={"help": "Image-classification model id for NSFW."}
    )
    nsfw_labels: tuple[str, ...] = field(
        default=("nsfw", "porn", "hentai", "sexy"), metadata={"help": "Labels of nsfw_model that mean NSFW."}
    )
    nsfw_threshold: float = field(default=0.5, metadata={"help": "NSFW probability that fails an image."})
    on_missing_model: str = field(
        default="error",
        metadata={"help": "error: a model that cannot be loaded stops the run; skip: record skipped:<filter>."},
    )
    device: str | None = field(default=None, metadata={"help": "Device for the filter models (default: CPU)."})

    def __post_init__(self):
        if self.on_missing_model not in ("error", "skip"):
            raise ValueError(f"on_missing_model must be 'error' or 'skip', got {self.on_missing_model!r}")
        if self.min_turns > self.max_turns:
            raise ValueError(f"min_turns ({self.min_turns}) > max_turns ({self.max_turns})")
        self.safety_unsafe_labels = tuple(self.safety_unsafe_labels)
        self.nsfw_labels = tuple(self.nsfw_labels)


DEFAULT_CONFIG = FilterConfig()


@dataclass(frozen=True)
class FilterResult:
    name: str
    score: float
    passed: bool
    reason: str = ""


def _lowest_turn(name: str, scores, turns: list[int], minimum: float, reason: str) -> FilterResult:
    """The turn with the lowest score decides; `reason` is formatted with that score and `minimum`."""
    worst = int(scores.argmin())
    score = float(scores[worst])
    return FilterResult(name, score, score >= minimum, f"turn {turns[worst]}: " + reason.format(score, minimum))


def _words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


# ---------------------------------------------------------------------------------------------------------------
# Text filters


def turn_count(record: dict, config: FilterConfig = DEFAULT_CONFIG) -> FilterResult:
    n, low, high = len(record["turns"]), config.min_turns, config.max_turns
    return FilterResult("turn_count", float(n), low <= n <= high, f"{n} turns, outside {low}-{high}")


def speaker_count(record: dict, config: FilterConfig = DEFAULT_CONFIG) -> FilterResult:
    n = len({turn["speaker"] for turn in record["turns"]})
    return FilterResult("speaker_count", float(n), n <= config.max_speakers, f"{n} speakers")


def word_repetition(record: dict, config: FilterConfig = DEFAULT_CONFIG) -> FilterResult:
    """Lowest unique/total word ratio over statements long enough to judge; below 0.5 means looping text."""
    ratios = [
        len(set(words)) / len(words)
        for words in (_words(turn["statement"]) for turn in record["turns"])
        if len(words) >= config.min_words_for_repetition
    ]
    worst, minimum = min(ratios, default=1.0), config.min_unique_word_ratio
    reason = f"a statement repeats words (unique/total = {worst:.2f} < {minimum})"
    return FilterResult("word_repetition", worst, worst >= minimum, reason)


def therapist_failure(record: dict, config: FilterConfig = DEFAULT_CONFIG) -> FilterResult:
    """Empty therapist turns and refusals/non-answers ("I don't know", "As an AI ...")."""
    failures = [
        index
        for index, turn in enumerate(record["turns"])
        if turn["speaker"] == "therapist" and (not turn["statement"].strip() or _FAILURE.match(turn["statement"]))
    ]
    reason = f"therapist response failure at turns {failures}"
    return FilterResult("therapist_failure", float(len(failures)), not failures, reason)


def profile_copy(record: dict, config: FilterConfig = DEFAULT_CONFIG) -> FilterResult:
    """Statements that copy a run of `min_copied_words` words from the profile text verbatim."""
    n = config.min_copied_words
    profile_text = " ".join(str(record["client"].get(k) or "") for k in ("personal_info", "reason_for_counseling"))
    profile_words = _words(profile_text)
    profile_ngrams = {tuple(profile_words[i : i + n]) for i in range(len(profile_words) - n + 1)}
    copied = sum(
        any(tuple(words[i : i + n]) in profile_ngrams for i in range(len(words) - n + 1))
        for words in (_words(turn["statement"]) for turn in record["turns"])
    )
    reason = f"{copied} statement(s) copy {n}+ words of the profile verbatim"
    return FilterResult("profile_copy", float(copied), copied == 0, reason)


# The approximate tagger's closed classes (Universal POS tags).
_CLOSED = {
    "DET": "a an the this that these those my your his her its our their some any no every each all both "
    "either".split(),
    "PRON": "i me you he him she it we us they them myself yourself himself herself ourselves themselves mine yours "
    "hers ours theirs who whom what which someone something nobody nothing everyone everything anyone".split(),
    "ADP": "in on at by for with about against between into through during before after above below to from up down "
    "of off over under again near without within along across behind beyond".split(),
    "CCONJ": "and or but nor yet so".split(),
    "SCONJ": "if because although though while whereas unless since until when whether than".split(),
    "AUX": "am is are was were be been being have has had do does did will would shall should can could may might "
    "must i'm you're we're they're it's that's i've i'd i'll don't doesn't didn't can't won't isn't aren't wasn't "
    "haven't wouldn't couldn't shouldn't".split(),
    "PART": "not n't to 's".split(),
    "INTJ": "oh um uh hmm yeah yes okay ok well hi hello wow".split(),
    "ADV": "very really just too also still never always often sometimes maybe perhaps quite rather almost only even "
    "here there now then again soon already yet ever".split(),
    "VERB": "feel feels felt think thinks thought know knows knew want wants wanted say says said go goes went get "
    "gets got make makes made see sees saw try tries tried keep keeps kept tell tells told seem seems need needs "
    "like likes come comes came take takes took give gives gave let lets talk talks look looks work works".split(),
}
_CLOSED_TAGS = {word: tag for tag, words in _CLOSED.items() for word in words}
_SUFFIXES = (("ly", "ADV"), ("ing", "VERB"), ("ed", "VERB"))
_SUFFIXES += tuple((suffix, "ADJ") for suffix in ("ous", "ful", "ive", "able", "ible", "less", "ish"))
_SUFFIXES += tuple((suffix, "NOUN") for suffix in ("tion", "ness", "ment", "ity"))
_POS_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+")


def _lexicon_tag(word: str) -> str:
    if word.isdigit():
        return "NUM"
    suffixed = (tag for suffix, tag in _SUFFIXES if len(word) > len(suffix) + 2 and word.endswith(suffix))
    return _CLOSED_TAGS.get(word) or next(suffixed, "X")


def lexicon_pos_tags(text: str) -> list[str]:
    """Approximate Universal POS tags (closed classes + suffix rules; `X` when unknown). See the module doc."""
    return [_lexicon_tag(token.lower()) for token in _POS_TOKEN.findall(text or "")]


@functools.cache
def _spacy_tagger(model: str) -> Callable[[str], list[str]]:
    try:
        import spacy
    except ImportError as err:
        raise OSError(f"pos_tagger 'spacy:{model}' needs spaCy (pip install spacy) and the model {model!r}") from err
    try:
        nlp = spacy.load(model, disable=["parser", "ner", "lemmatizer"])
    except OSError as err:
        raise OSError(f"pos_tagger 'spacy:{model}': the spaCy model is not installed ({err})") from err
    return lambda text: [t.pos_ for t in nlp(text) if not t.is_punct and not t.is_space]


def get_pos_tagger(name: str) -> Callable[[str], list[str]]:
    if name == "lexicon":
        return lexicon_pos_tags
    if name.startswith("spacy:"):
        return _spacy_tagger(name.removeprefix("spacy:"))
    raise ValueError(f"Unknown pos_tagger {name!r}; expected 'lexicon' or 'spacy:<model>'")


def pos_repetition(record: dict, config: FilterConfig = DEFAULT_CONFIG) -> FilterResult:
    """Longest run of one part-of-speech tag in a statement; more than `max_pos_run` in a row fails (paper: > 3).

    Unknown (`X`) tags never form a run; see the module doc for what the default tagger approximates.
    """
    tagger = get_pos_tagger(config.pos_tagger)
    longest, where = 0, None
    for index, turn in enumerate(record["turns"]):
        run, previous = 0, None
        for tag in tagger(_STAGE_DIRECTION.sub(" ", turn["statement"] or "")):
            run = run + 1 if tag == previous and tag != "X" else 1
            previous = tag
            if run > longest:
                longest, where = run, (index, tag)
    detail = f" ({where[1]} at turn {where[0]})" if where else ""
    most, tagger_name = config.max_pos_run, config.pos_tagger
    reason = f"{longest} identical part-of-speech tags in a row{detail}, more than {most} (tagger: {tagger_name})"
    return FilterResult("pos_repetition", float(longest), longest <= most, reason)


def recorded_failures(record: dict, config: FilterConfig = DEFAULT_CONFIG) -> FilterResult:
    """Failures an earlier stage (generation's image filters) recorded as `failed:<filter>: <reason>` flags."""
    flags = record.get("quality", {}).get("flags", [])
    failed = [flag.removeprefix(FAILED_FLAG) for flag in flags if flag.startswith(FAILED_FLAG)]
    return FilterResult("recorded_failures", float(len(failed)), not failed, "; ".join(failed))


TEXT_FILTERS = (turn_count, speaker_count, word_repetition, therapist_failure, profile_copy, pos_repetition)
# cue_warnings is warning level: never drops, counts therapist lines citing cues the face image lacks (cues.py).
TEXT_FILTERS += (recorded_failures, cue_warnings)


def apply_filters(record: dict, config: FilterConfig | None = None) -> tuple[list[FilterResult], list[FilterResult]]:
    """Run every text filter; return (all results, failed results).

    A record carrying `JUDGED_FLAG` was already judged by `mirror generate` with its recipe's thresholds, whose
    failures it carries as `failed:` flags: only those drop it (the scores are still recomputed), so a recipe
    with non-default thresholds is not overruled by the defaults at build time.
    """
    config = config or DEFAULT_CONFIG
    results = [check(record, config) for check in TEXT_FILTERS]
    judged = JUDGED_FLAG in record.get("quality", {}).get("flags", [])
    return results, [r for r in results if not r.passed and (not judged or r.name == "recorded_failures")]


# ---------------------------------------------------------------------------------------------------------------
# Dialogue safety of therapist turns

# Advice a therapist must never give, written for this project. The crisis detector (inference.safety) adds
# first-person risk language; an optional classifier adds a learned judgement.
_UNSAFE_ADVICE = re.compile(
    r"\b(?:you\s+should|just|go\s+ahead\s+and|why\s+not|try\s+to)\s+(?:hurt|harm|cut|kill|starve|punish)\s+"
    r"(?:yourself|him|her|them)\b"
    r"|\b(?:stop|quit)\s+taking\s+(?:your\s+)?(?:medication|meds|pills|prescription)s?\b"
    r"|\b(?:ignore|don'?t\s+worry\s+about)\s+(?:the\s+|your\s+|that\s+)?(?:chest\s+pain|suicidal|self-harm)"
    r"|\byou\s+(?:deserve|are\s+better\s+off)\s+(?:to\s+)?(?:die|dead|suffer|alone)\b"
    r"|\b(?:drink|alcohol)\s+(?:will|would)\s+help\b",
    re.IGNORECASE,
)


class DialogueSafety:
    """Screens therapist turns: an unsafe-advice lexicon, the crisis detector, and an optional classifier."""

    def __init__(self, config: FilterConfig = DEFAULT_CONFIG, *, detector: Any = None, classifier: Any = None):
        from inference.safety import CrisisDetector, SafetyConfig

        self.config = config
        self.detector = detector or CrisisDetector(SafetyConfig(use_embeddings=config.safety_embeddings))
        self.classifier = classifier
        if self.classifier is None and config.safety_model:
            self.classifier = _load_pipeline("text-classification", config.safety_model, config)

    def __call__(self, record: dict) -> FilterResult:
        indices = [i for i, turn in enumerate(record["turns"]) if turn["speaker"] == "therapist"]
        texts = [record["turns"][i]["statement"] or "" for i in indices]
        problems: list[str] = []
        score = 0.0
        for index, text in zip(indices, texts, strict=True):
            if _UNSAFE_ADVICE.search(text):
                problems.append(f"turn {index}: unsafe advice")
                score = 1.0
        for index, result in zip(indices, self.detector.detect_batch(texts), strict=True):
            if result.is_risk:
                problems.append(f"turn {index}: {result.category} ({result.reason})")
                score = max(score, result.score)
        if self.classifier is not None and texts:
            outputs = self.classifier(texts, top_k=None, truncation=True)
            for index, scores in zip(indices, outputs, strict=True):
                unsafe = sum(s["score"] for s in scores if s["label"] in self.config.safety_unsafe_labels)
                score = max(score, unsafe)
                if unsafe >= self.config.safety_threshold:
                    problems.append(f"turn {index}: classifier unsafe p={unsafe:.2f}")
        return FilterResult("dialogue_safety", float(score), not problems, "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# Model-based image filters


class ModelUnavailable(OSError):
    """A filter model that cannot be loaded (offline without a cached copy, a wrong id, a broken folder)."""


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())


def _load_pipeline(task: str, model: str, config: FilterConfig):
    from transformers import pipeline

    try:
        return pipeline(task, model=model, device=config.device or "cpu")
    except Exception as err:  # transformers raises OSError, ValueError, HF errors... all mean "cannot be had"
        raise ModelUnavailable(f"cannot load {task} model {model!r}: {_one_line(err)}") from err


def _midpoint(label: str) -> float | None:
    """Age of a classifier label: "20-29" -> 24.5, "more than 70" / "70+" -> 75, "34" -> 34."""
    numbers = [float(n) for n in re.findall(r"\d+", label)]
    if not numbers:
        return None
    if len(numbers) >= 2:
        return (numbers[0] + numbers[1]) / 2
    return numbers[0] + (5.0 if re.search(r"more|\+|over|above", label, re.IGNORECASE) else 0.0)


def _gender_of(label: str) -> str | None:
    lowered = label.lower()
    if re.search(r"\b(female|woman|women|girl)\b", lowered):
        return "female"
    if re.search(r"\b(male|man|men|boy)\b", lowered):
        return "male"
    return None


def _features(output):
    """`get_*_features` returns a tensor (transformers 4) or an output with `pooler_output` (transformers 5)."""
    return output if hasattr(output, "norm") else output.pooler_output


class ModelFilters:
    """Image filters over a session's client faces (`{turn index: PIL image}`), each loading its model by id on
    first use."""

    def __init__(self, config: FilterConfig = DEFAULT_CONFIG):
        self.config = config
        self._models: dict[str, Any] = {}

    def _clip(self, model_id: str):
        key = f"clip:{model_id}"
        if key not in self._models:
            from transformers import AutoModel, AutoProcessor

            try:
                processor = AutoProcessor.from_pretrained(model_id)
                model = AutoModel.from_pretrained(model_id).to(self.config.device or "cpu").eval()
            except Exception as err:
                raise ModelUnavailable(f"cannot load CLIP-style model {model_id!r}: {_one_line(err)}") from err
            self._models[key] = (model, processor)
        return self._models[key]

    def _pipeline(self, model_id: str):
        key = f"pipeline:{model_id}"
        if key not in self._models:
            self._models[key] = _load_pipeline("image-classification", model_id, self.config)
        return self._models[key]

    def _image_embeddings(self, model_id: str, images: list):
        import torch

        model, processor = self._clip(model_id)
        with torch.inference_mode():
            inputs = processor(images=images, return_tensors="pt").to(model.device)
            features = _features(model.get_image_features(pixel_values=inputs["pixel_values"]))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def _text_embeddings(self, model_id: str, texts: list[str]):
        import torch

        model, processor = self._clip(model_id)
        tokenizer = getattr(processor, "tokenizer", processor)
        with torch.inference_mode():
            inputs = tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(model.device)
            features = _features(
                model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
            )
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def clip_similarity(self, record: dict, images: dict[int, Any]) -> list[FilterResult]:
        """Cosine similarity of each face with "A facial photo with {stage direction}"; plus face presence."""
        config, model_id = self.config, self.config.clip_model
        indices = [i for i in images if record["turns"][i].get("stage_direction")]
        results = []
        if indices:
            texts = [config.clip_prompt.format(stage_direction=record["turns"][i]["stage_direction"]) for i in indices]
            similarity = (
                self._image_embeddings(model_id, [images[i] for i in indices]) * self._text_embeddings(model_id, texts)
            ).sum(-1)
            reason = "image-text similarity {:.3f} < {}"
            results.append(_lowest_turn("clip_similarity", similarity, indices, config.min_clip_similarity, reason))
        if images:
            order = list(images)
            image_vectors = self._image_embeddings(model_id, [images[i] for i in order])
            text_vectors = self._text_embeddings(model_id, ["a photo of a human face", "a photo with no face in it"])
            model, _ = self._clip(model_id)
            scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
            probability = (scale * image_vectors @ text_vectors.T).softmax(-1)[:, 0]
            reason = "no face found (p={:.2f})"
            results.append(_lowest_turn("face_presence", probability, order, config.min_face_probability, reason))
        return results

    def _classify_images(self, model_id: str, images: dict[int, Any]) -> list[list[dict]]:
        """Scores of every label for each image. The image-classification pipeline's `top_k=None` means its default
        of 5, which would silently drop labels (an NSFW or an age bracket ranked sixth) on larger label sets."""
        pipe = self._pipeline(model_id)
        return pipe([images[i] for i in images], top_k=pipe.model.config.num_labels, batch_size=len(images))

    def age_consistency(self, record: dict, images: dict[int, Any]) -> FilterResult:
        age = record["client"].get("age")
        worst_gap, worst_turn = 0.0, None
        outputs = self._classify_images(self.config.age_model, images)
        for index, scores in zip(images, outputs, strict=True):
            weighted = [(s["score"], _midpoint(s["label"])) for s in scores]
            weighted = [(p, a) for p, a in weighted if a is not None]
            if not weighted or age is None:
                continue
            estimate = sum(p * a for p, a in weighted) / sum(p for p, _ in weighted)
            if abs(estimate - age) >= worst_gap:
                worst_gap, worst_turn = abs(estimate - age), (index, estimate)
        reason = f"turn {worst_turn[0]}: predicted age {worst_turn[1]:.0f} vs profile {age}" if worst_turn else ""
        return FilterResult("age_consistency", worst_gap, worst_gap <= self.config.max_age_gap, reason)

    def gender_consistency(self, record: dict, images: dict[int, Any]) -> FilterResult:
        expected = record["client"].get("gender")
        outputs = self._classify_images(self.config.gender_model, images)
        changed = []
        for index, scores in zip(images, outputs, strict=True):
            top = max(scores, key=lambda s: s["score"])
            predicted = _gender_of(top["label"])
            if expected in ("female", "male") and predicted is not None and predicted != expected:
                changed.append(f"turn {index}: {predicted} (p={top['score']:.2f}) vs profile {expected}")
        return FilterResult("gender_consistency", float(len(changed)), not changed, "; ".join(changed))

    def identity_similarity(self, images: dict[int, Any], reference) -> FilterResult:
        order = list(images)
        vectors = self._image_embeddings(self.config.identity_model, [reference, *(images[i] for i in order)])
        similarity = vectors[1:] @ vectors[0]
        minimum = self.config.min_identity_similarity
        return _lowest_turn("identity_similarity", similarity, order, minimum, "identity similarity {:.3f} < {}")

    def nsfw(self, images: dict[int, Any]) -> FilterResult:
        outputs = self._classify_images(self.config.nsfw_model, images)
        worst, where = 0.0, None
        for index, scores in zip(images, outputs, strict=True):
            probability = sum(s["score"] for s in scores if s["label"].lower() in self.config.nsfw_labels)
            if probability >= worst:
                worst, where = probability, index
        return FilterResult("nsfw", worst, worst < self.config.nsfw_threshold, f"turn {where}: NSFW p={worst:.2f}")

    def score(self, record: dict, images: dict[int, Any], reference=None) -> tuple[list[FilterResult], list[str]]:
        """Run every configured image filter; (results, skipped flags). Raises ModelUnavailable unless skip."""
        results: list[FilterResult] = []
        skipped: list[str] = []
        config = self.config
        identity = None if reference is None else (lambda: [self.identity_similarity(images, reference)])
        checks: list[tuple[str, str | None, Callable[[], list[FilterResult]] | None]] = [
            ("clip_similarity", config.clip_model, lambda: self.clip_similarity(record, images)),
            ("age_consistency", config.age_model, lambda: [self.age_consistency(record, images)]),
            ("gender_consistency", config.gender_model, lambda: [self.gender_consistency(record, images)]),
            ("identity_similarity", config.identity_model, identity),
            ("nsfw", config.nsfw_model, lambda: [self.nsfw(images)]),
        ]
        for name, model_id, run in checks if images else ():
            if not model_id or run is None:
                why = "no reference face" if model_id else "disabled in the config (no model id)"
                skipped.append(f"{SKIPPED_FLAG}{name}: {why}")
                continue
            try:
                results.extend(run())
            except ModelUnavailable as err:
                if config.on_missing_model == "error":
                    raise ModelUnavailable(
                        f"filter {name}: {err}. Give a local model folder or a cached id, or set "
                        f"on_missing_model: skip to record the filter as skipped"
                    ) from err
                logger.warning("filter %s SKIPPED: %s", name, err)
                skipped.append(f"{SKIPPED_FLAG}{name}: {err}")
        return results, skipped
