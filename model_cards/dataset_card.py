"""The Mirror dataset card: `DatasetCardData` metadata + the Jinja template, fed with plain data from the build.

The licence is never hard-coded: it follows each record's provenance (`source.dataset`) through `PROVENANCE`.
Unknown provenance is a loud choice, not a guess: the card gets `license: other`, a warning is logged, and the card
says in bold that the licence is unknown and must be settled before publishing (`mirror push` refuses such a card
unless told otherwise; see `model_cards.validate`).
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard

from model_cards.licenses import license_name

TEMPLATE_DIR = Path(__file__).parent / "templates"
DATASET_CARD_TEMPLATE = TEMPLATE_DIR / "dataset_card.md.jinja"
UNKNOWN_PROVENANCE_LICENSE_NAME = "unknown-provenance"
UNKNOWN_DESCRIPTION = "unknown provenance: the licence is not known"

logger = logging.getLogger(__name__)

PAPER_CITATION = """@inproceedings{kim-etal-2025-mirror,
    title = "{MIRROR}: Multimodal Cognitive Reframing Therapy for Rolling with Resistance",
    author = "Kim, Subin and Kim, Hoonrae and Lee, Jihyun and Jeon, Yejin and Lee, Gary",
    booktitle = "Proceedings of the 2025 Conference on Empirical Methods in Natural Language Processing",
    month = nov,
    year = "2025",
    address = "Suzhou, China",
    publisher = "Association for Computational Linguistics",
    pages = "14851--14880",
}"""


@dataclass(frozen=True)
class Provenance:
    """What a `source.dataset` value means for the card."""

    license: str  # Hub licence id the records of this provenance carry
    description: str  # one line for the card
    source_datasets: tuple[str, ...] = ()  # Hub ids for the `source_datasets:` metadata
    celeba_references: bool = False  # the original pipeline drew faces from CelebA references (not redistributed)


# `source.dataset` value -> provenance. The values the pipeline writes:
# - `mirror-sample`: the bundled sample (dataset_builder/sample), and sessions `mirror generate` wrote from its
#   profiles (`profiles: sample`);
# - `cactus`: sessions `mirror generate` wrote from CACTUS profiles (`profiles: hub`, or a CACTUS CSV/JSONL file);
# - `mirror-release`: rows `mirror import` read from the official release (dataset_builder/importer.py).
# Anything else (e.g. the file stem `mirror generate` uses for a custom profile file) is unknown provenance.
PROVENANCE: dict[str, Provenance] = {
    "mirror-sample": Provenance(
        license="cc-by-4.0",
        description="the bundled sample's fictional client profiles, written for this project (no text from the "
        "paper, CACTUS or any other dataset), and sessions written or generated from them",
    ),
    "cactus": Provenance(
        license="gpl-2.0",
        description="sessions generated from CACTUS client profiles (`LangAGI-Lab/cactus`, GPL-2.0); the derived "
        "data carries CACTUS's licence",
        source_datasets=("LangAGI-Lab/cactus",),
    ),
    "mirror-release": Provenance(
        license="gpl-2.0",
        description="rows imported from the official MIRROR release (`multimodal-reframing/mirror`, GPL-2.0, built "
        "on CACTUS); it ships no images",
        source_datasets=("multimodal-reframing/mirror", "LangAGI-Lab/cactus"),
        celeba_references=True,
    ),
}
PROVENANCE_ALIASES = {"multimodal-reframing/mirror": "mirror-release", "LangAGI-Lab/cactus": "cactus"}


def provenance_of(dataset_value: str | None) -> Provenance | None:
    return PROVENANCE.get(PROVENANCE_ALIASES.get(dataset_value, dataset_value))  # None for a missing value too


def licenses_for(dataset_values: Iterable[str | None]) -> tuple[list[str], list[str]]:
    """(licence ids, unknown provenance values) for the records' `source.dataset` values.

    Unknown or missing provenance contributes `other` and is logged as a warning: the card then says the licence is
    unknown instead of guessing one.
    """
    licenses, unknown = set(), set()
    for value in dataset_values:
        provenance = provenance_of(value)
        licenses.add(provenance.license if provenance else "other")
        if provenance is None:
            unknown.add(value or "<missing>")
    if unknown:
        logger.warning(
            "Records with unknown provenance (source.dataset = %s): the dataset card says `license: other` and "
            "flags the licence as unknown. Known values: %s (model_cards/dataset_card.py PROVENANCE).",
            ", ".join(sorted(unknown)),
            ", ".join(sorted(PROVENANCE)),
        )
    return sorted(licenses), sorted(unknown)


# ---------------------------------------------------------------------------------------------------------------------
# Every column of every config, documented. `feature_columns` lists what the parquet holds; a column missing here
# makes `render_dataset_card` fail, so the card cannot silently fall behind the schema.

_SOURCE_DOCS = {
    "source.dataset": "Provenance of the record (`mirror-sample`, `mirror-release`, `cactus`); decides the "
    "licence (see Licence).",
    "source.row": "Row of the seed dataset the client profile comes from.",
    "source.generator": "Model (or author) that wrote the session or profile text.",
    "source.generator_revision": "Revision of the generator model, when known.",
    "source.image_backend": "Backend that rendered the face images (null: images supplied with the raw records).",
    "source.seed": "Random seed of the generation run, when known.",
    "source.prompt_version": "Version of the project's generation prompts.",
}
_CLIENT_DOCS = {
    "client.name": "Fictional client name.",
    "client.age": "Age in years.",
    "client.gender": "Gender as written in the profile.",
    "client.occupation": "Occupation.",
    "client.education": "Education.",
    "client.marital_status": "Marital status.",
    "client.family": "Family situation.",
    "client.personal_info": "Free-text background of the client.",
    "client.reason_for_counseling": "Why the client seeks counselling.",
    "client.distorted_thought": "The distorted thought the session works on.",
    "client.thinking_traps": "Thinking-trap patterns (cognitive distortions) in the thought.",
}
_PROFILE_DOCS = {
    "id": "Record id, e.g. `cactus-12-cognitive`.",
    **_SOURCE_DOCS,
    **_CLIENT_DOCS,
    "resistance": "Resistance style the client is played with: `none`, `emotional`, `cognitive` or `behavioral`.",
    "cbt_technique": "One of the 12 CBT techniques (from CACTUS) the session uses.",
    "cbt_plan": "The therapist's plan for the session.",
    "identity.key": "Identity key of the client's face (one identity per client).",
    "identity.image": "Reference face image of the client (rendered, not a photograph of a real person).",
}
FIELD_DOCS: dict[str, dict[str, str]] = {
    "profiles": _PROFILE_DOCS,
    "sessions": {
        **_PROFILE_DOCS,
        "turns[].speaker": "`therapist` or `client`.",
        "turns[].statement": "What was said; client statements keep their bracketed stage direction out of it.",
        "turns[].stage_direction": "Client's non-verbal behaviour (e.g. `Looks away, arms crossed`); null for "
        "therapist turns. Never shown to the therapist model: it reaches it only through the image.",
        "turns[].image": "Face of the client at this turn, showing the stage direction's emotion (client turns).",
        "turns[].expression": "Facial expression the image was rendered with.",
        "turns[].contrast_expression": "Opposite expression used as a contrast when rendering, if any.",
        "quality.scores[].filter": "Name of a text quality filter.",
        "quality.scores[].score": "That filter's score for the session.",
        "quality.flags": "Filters the session tripped without being dropped.",
    },
    "sft": {
        "id": "Row id: `<session id>/<variant>/<task>/<turn index>`.",
        "session_id": "Session the row comes from.",
        "variant": "SFT variant (`base`, `planning`, `ec_planning`, `text`, ...); each also has its own config "
        "`sft_<variant>`.",
        "task": "`response` (the therapist's next statement), `emotion_caption` (ec_planning: caption the face) or "
        "`plan` (planning variants: write the session plan).",
        "resistance": "Resistance style of the session.",
        "turn_index": "Index of the target turn in the session.",
        "messages[].role": "Chat role (`system`, `user`, `assistant`).",
        "messages[].content[].type": "`text` or `image` (TRL's VLM chat format).",
        "messages[].content[].text": "Text of the block (null for an image block).",
        "images": "Images referenced by the `image` blocks, in order (empty for `text` rows).",
    },
    "filtered": {
        "id": "Record id.",
        "kind": "`session` or `profile`.",
        "kept": "Whether the record made it into the dataset.",
        "source_file": "Raw file the record was read from.",
        "line": "Line of the record in that file.",
        "stage": "`kept`, `validation` (bad input) or `filter` (dropped by a quality filter).",
        "field": "Field that failed validation or the filter that dropped the record.",
        "reason": "Why it was dropped.",
        "scores[].filter": "Name of a text quality filter.",
        "scores[].score": "That filter's score.",
        "record": "The raw record as JSON, so what was removed can be audited.",
    },
}


def feature_columns(features: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted column path, type) for every leaf of a `datasets.Features` tree; lists are marked `[]`."""
    columns = []
    for name, feature in features.items():
        path = f"{prefix}{name}"
        if isinstance(feature, dict):
            columns += feature_columns(feature, f"{path}.")
        elif hasattr(feature, "feature"):  # List / LargeList / Sequence
            inner = feature.feature
            if isinstance(inner, dict):
                columns += feature_columns(inner, f"{path}[].")
            else:
                columns.append((path, f"list[{_type_name(inner)}]"))
        else:
            columns.append((path, _type_name(feature)))
    return columns


def _type_name(feature: Any) -> str:
    return getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else type(feature).__name__.lower()


def summarize(
    sessions: list[dict[str, Any]], profiles: list[dict[str, Any]], filtered: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the card reports about the data (provenance, generation, faces, demographics, filtering), from the rows
    of the `sessions`, `profiles` and `filtered` configs."""
    records = [("sessions", row) for row in sessions] + [("profiles", row) for row in profiles]
    by_dataset: dict[str, Counter] = defaultdict(Counter)
    generation: dict[tuple, dict[str, Any]] = {}
    image_backends: Counter = Counter()
    celeba_faces = 0
    creators = set()
    for config, row in records:
        source = row.get("source") or {}
        hand_written = (source.get("generator") or "").lower().startswith("hand-written")
        creators.add("expert-generated" if hand_written else "machine-generated")
        celeba_faces += is_celeba_reference(row)
        by_dataset[source.get("dataset") or "<missing>"][config] += 1
        key = tuple(source.get(k) for k in ("dataset", "generator", "generator_revision", "prompt_version"))
        entry = generation.setdefault(key, {"records": 0, "seeds": set()})
        entry["records"] += 1
        if source.get("seed") is not None:
            entry["seeds"].add(source["seed"])
        image_backends[source.get("image_backend") or "supplied with the raw records"] += 1
    generators = [
        {
            "dataset": dataset or "<missing>",
            "generator": generator or "unknown",
            "revision": revision or "not recorded",
            "prompt_version": prompt_version or "not recorded",
            "records": entry["records"],
            "seeds": _seed_text(entry["seeds"]),
        }
        for (dataset, generator, revision, prompt_version), entry in sorted(generation.items(), key=str)
    ]
    licenses, unknown = licenses_for(by_dataset)  # "<missing>" is unknown provenance too
    known = {dataset: provenance_of(dataset) for dataset in by_dataset}
    provenance = [
        {
            "dataset": dataset,
            "sessions": counts["sessions"],
            "profiles": counts["profiles"],
            "license": known[dataset].license if known[dataset] else "unknown",
            "description": known[dataset].description if known[dataset] else UNKNOWN_DESCRIPTION,
        }
        for dataset, counts in sorted(by_dataset.items())
    ]
    known_provenance = [p for p in known.values() if p]
    return {
        "provenance": provenance,
        "licenses": licenses,
        "unknown_provenance": unknown,
        "source_datasets": sorted({s for p in known_provenance for s in p.source_datasets}),
        "language_creators": sorted(creators),
        "celeba_references": any(p.celeba_references for p in known_provenance),
        "celeba_reference_faces": celeba_faces,
        "generators": generators,
        "image_backends": dict(sorted(image_backends.items())),
        "demographics": {"sessions": _demographics(sessions), "profiles": _demographics(profiles)},
        "filtering": _filter_stats(filtered),
    }


def is_celeba_reference(row: dict[str, Any]) -> bool:
    """Whether a record's identity face is a CelebA image (`mirror import --celeba_dir`): never publishable."""
    flags = (row.get("quality") or {}).get("flags") or []
    key = (row.get("identity") or {}).get("key") or ""
    return "reference_face:celeba" in flags or key.startswith("celeba-")


def _seed_text(seeds: set[int]) -> str:
    if not seeds:
        return "not recorded"
    ordered = sorted(seeds)
    return str(ordered[0]) if len(ordered) == 1 else f"{len(ordered)} seeds, {ordered[0]}-{ordered[-1]}"


def _demographics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_style: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_style[row["resistance"]].append(row.get("client") or {})
    order = ["none", "emotional", "cognitive", "behavioral"]
    table = []
    for style in sorted(by_style, key=lambda s: (order.index(s) if s in order else len(order), s)):
        clients = by_style[style]
        ages = [c["age"] for c in clients if c.get("age") is not None]
        genders = Counter(c.get("gender") or "not stated" for c in clients)
        table.append(
            {
                "style": style,
                "count": len(clients),
                "genders": ", ".join(f"{g} {n}" for g, n in sorted(genders.items(), key=lambda i: (-i[1], i[0]))),
                "ages": f"{min(ages)}-{max(ages)} (median {statistics.median(ages):g})" if ages else "not stated",
            }
        )
    return table


def _filter_stats(filtered: list[dict[str, Any]]) -> dict[str, Any]:
    stages = Counter((row["kind"], row["stage"]) for row in filtered)
    reasons = Counter(
        (row["stage"], row.get("field") or "<record>") for row in filtered if row["stage"] in ("validation", "filter")
    )
    scores: dict[str, list[float]] = defaultdict(list)
    for row in filtered:
        for score in row.get("scores") or []:
            if score.get("score") is not None:
                scores[score["filter"]].append(float(score["score"]))
    return {
        "examined": len(filtered),
        "by_stage": [{"kind": k, "stage": s, "count": n} for (k, s), n in sorted(stages.items())],
        "reasons": [{"stage": s, "field": f, "count": n} for (s, f), n in reasons.most_common()],
        "scores": [
            {"filter": name, "n": len(v), "min": min(v), "mean": statistics.fmean(v), "max": max(v)}
            for name, v in sorted(scores.items())
        ],
    }


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def render_dataset_card(
    card_data: Any,
    *,
    pretty_name: str,
    summary: dict[str, Any],
    configs: list[dict[str, Any]],
    columns: dict[str, list[tuple[str, str]]],
) -> str:
    """The dataset card as README.md text, from `huggingface_hub.DatasetCard.from_template`.

    `card_data`: a `DatasetCardData` holding `configs:` and `dataset_info:` (licence, names, tags and sources are
    added here); `summary`: `summarize(...)`; `configs`: one dict per config (`name`, `split`, `rows`,
    `description`); `columns`: config -> `feature_columns(features)`, each column documented in `FIELD_DOCS`.
    """
    undocumented = [
        f"{config}.{path}" for config, cols in columns.items() for path, _ in cols if path not in FIELD_DOCS[config]
    ]
    if undocumented:
        raise ValueError(f"Dataset card: no description for column(s) {undocumented}; add them to FIELD_DOCS")
    licenses = summary["licenses"]
    card_data.pretty_name = pretty_name
    card_data.license = licenses[0] if len(licenses) == 1 else licenses
    if summary["unknown_provenance"]:
        card_data.license_name = UNKNOWN_PROVENANCE_LICENSE_NAME
    # Facts `mirror push` checks before publishing (model_cards.validate): never publish CelebA images.
    card_data.mirror = {"celeba_reference_faces": summary["celeba_reference_faces"]}
    card_data.language = ["en"]
    card_data.language_creators = summary["language_creators"]
    card_data.annotations_creators = ["machine-generated"]
    card_data.multilinguality = ["monolingual"]
    card_data.source_datasets = [f"extended|{s}" for s in summary["source_datasets"]] or ["original"]
    card_data.task_categories = ["image-text-to-text"]
    card_data.tags = ["cbt", "psychotherapy", "synthetic", "multimodal", "resistance", "research-only"]
    sessions_rows = next(c["rows"] for c in configs if c["name"] == "sessions")
    card_data.size_categories = [size_category(sessions_rows)]
    documented = {
        config: [(path, kind, FIELD_DOCS[config][path]) for path, kind in cols] for config, cols in columns.items()
    }
    card = DatasetCard.from_template(
        card_data,
        template_path=str(DATASET_CARD_TEMPLATE),
        pretty_name=pretty_name,
        summary=summary,
        configs_table=configs,
        columns=documented,
        license_names={lic: license_name(lic) for lic in licenses},
        citation=PAPER_CITATION,
    )
    return str(card)
