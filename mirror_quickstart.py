"""`mirror quickstart`: the whole chain offline on a CPU with embedded defaults (sample data, tiny random LLaVA).

Sample records -> rendered faces -> Hub-ready dataset folder -> a tiny LLaVA fine-tuned with TRL and merged -> one
therapist reply -> evaluation on the held-out profiles (report + plots) -> model card with the results -> both cards
validated offline -> the exact `mirror push` commands. Every number it produces is noise (a random tiny model, a
scripted client and judge): it shows the chain works, not that a model is good.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from model_cards import check_card, render_model_card
from model_cards.validate import hub_reachable

MARKER = ".mirror-quickstart"
DATASET_FOLDER = "mirror"  # so that `load_dataset("mirror")` works from the output folder
MODEL_FOLDER = "mirror-tiny-therapist"
# Folders a previous quickstart made here and a new run replaces (the dataset folder rebuilds itself safely).
OWN_FOLDERS = ("training", MODEL_FOLDER, "evaluation")


@dataclass
class QuickstartArguments:
    output: str = field(default="mirror_quickstart", metadata={"help": "Working folder for every output."})
    max_steps: int = field(default=8, metadata={"help": "Training steps for the tiny model."})
    skip_training: bool = field(default=False, metadata={"help": "Stop after building the dataset."})


ARGUMENTS = (QuickstartArguments,)


def _prepare(root: Path) -> None:
    """Use a new or empty folder, or one a previous quickstart made (its own outputs are replaced, nothing else)."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"--output {root} is a file; choose a folder")
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise FileExistsError(
                f"--output {root} is not empty and was not made by `mirror quickstart`; choose a new or empty folder"
            )
        for name in OWN_FOLDERS:
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `mirror quickstart`; a new run replaces its outputs\n", encoding="utf-8")


def main(args: QuickstartArguments) -> int:
    """Run the whole chain offline: sample data to a tiny evaluated therapist with Hub-ready folders and cards."""
    with warnings.catch_warnings():
        # peft and TRL read `model.is_gradient_checkpointing`, which transformers 5 deprecates; our code does not.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return _run(args)


def _run(args: QuickstartArguments) -> int:
    from dataset_builder.build import SAMPLE_DIR, BuildOptions, build_dataset, render_faces

    root = Path(args.output).resolve()
    _prepare(root)
    total = 2 if args.skip_training else 6
    stage = iter(range(1, total + 1))

    def announce(text: str) -> None:
        print(f"[{next(stage)}/{total}] {text}", flush=True)

    announce(f"Rendering client faces for the bundled sample into {root / 'raw'}")
    render_faces(SAMPLE_DIR, root / "raw")
    announce(f"Building the Hub-ready dataset folder {root / DATASET_FOLDER}")
    result = build_dataset(root / "raw", root / DATASET_FOLDER, BuildOptions(pretty_name="Mirror sample"))
    print("  rows: " + ", ".join(f"{k}={v}" for k, v in sorted(result.num_rows.items())))
    print(f"  in {root}: load_dataset({DATASET_FOLDER!r}), load_dataset({DATASET_FOLDER!r}, 'sft_planning')")
    if args.skip_training:
        _check_cards(root / DATASET_FOLDER, None)
        _print_summary(root, None, None)
        return 0

    from evaluation.quickstart import run_quickstart_evaluation
    from training.merge import merge_adapter
    from training.train import train_tiny_model

    announce(f"Fine-tuning a tiny random LLaVA (built from config, offline) with TRL for {args.max_steps} steps")
    adapter_dir = train_tiny_model(result.output_dir, root / "training", max_steps=args.max_steps, merge=False)
    model_dir = merge_adapter(adapter_dir, root / MODEL_FOLDER)
    print(f"  model folder (LoRA merged): {model_dir}")

    announce("Loading the tiny therapist and answering one client turn with a face image")
    _one_reply(root, model_dir)

    announce("Evaluating it on the held-out profiles (scripted client and judge: the scores are noise)")
    report_dir = Path(run_quickstart_evaluation(model_dir, result.output_dir, root / "evaluation"))

    announce("Rendering the model card with the evaluation results and validating both cards offline")
    _add_results_to_card(model_dir, report_dir)
    _check_cards(result.output_dir, model_dir)
    _print_summary(root, model_dir, report_dir)
    return 0


def _one_reply(root: Path, model_dir: Path) -> None:
    from PIL import Image

    from inference.therapist import MirrorTherapist

    profile = json.loads((root / "raw" / "profiles.jsonl").read_text(encoding="utf-8").splitlines()[0])
    face = root / "raw" / profile["identity"]["image"]
    therapist = MirrorTherapist.from_pretrained(str(model_dir))
    session = therapist.start_session(profile["client"])
    print(textwrap.indent(session.disclosure.strip(), "  "))
    statement = "[Shrugs, looks at the floor] I don't really know why I'm here."
    with Image.open(face) as image:
        reply = session.respond(statement, image=image.convert("RGB"))
    print(f"  Client ({profile['client']['name']}, face: {face.name}): {statement}")
    # A random tiny model emits arbitrary tokens: show them printable and on one line.
    text = " ".join("".join(c if c.isprintable() and c != "\ufffd" else " " for c in reply.text).split())
    print(f"  Therapist (tiny random model, so the words are noise): {text[:100]}")


def _add_results_to_card(model_dir: Path, report_dir: Path) -> None:
    """Re-render the model card from the training record, adding the report's results as `model-index`."""
    from evaluation.report import model_index_results
    from training.train import TRAINING_RECORD

    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    record = json.loads((model_dir / TRAINING_RECORD).read_text(encoding="utf-8"))
    therapist = next(iter(report["therapists"]))
    results = model_index_results(report, therapist)
    card = dict(
        record["card"],
        evaluation_report="report.json (kept next to the model folder, not uploaded)",
        evaluation_notes=list(report["run"].get("notes") or []),
        eval_results=results,
    )
    (model_dir / "README.md").write_text(render_model_card(card), encoding="utf-8")
    print(f"  {len(results)} result(s) of {therapist!r} added to the model card's model-index")


def _check_cards(dataset_dir: Path, model_dir: Path | None) -> None:
    check_card(dataset_dir / "README.md", "dataset", folder=dataset_dir)
    if model_dir is not None:
        check_card(model_dir / "README.md", "model", folder=model_dir)
    where = "the Hub checks them again when you push" if hub_reachable() else "offline: the Hub's check runs at push"
    print(f"  cards valid: YAML metadata, licence ids, required sections, data files ({where})")


def _print_summary(root: Path, model_dir: Path | None, report_dir: Path | None) -> None:
    rows = [("Dataset folder", root / DATASET_FOLDER)]
    if model_dir is not None:
        rows.append(("Model folder", model_dir))
    if report_dir is not None:
        rows.append(("Evaluation report", report_dir / "report.json"))
        rows += [("Plot", plot) for plot in sorted(report_dir.glob("*.png"))]
    width = max(len(label) for label, _ in rows)
    print("\nDone. Outputs:")
    for label, path in rows:
        print(f"  {label:<{width}}  {path}")
    push = f"mirror push --dataset_dir {root / DATASET_FOLDER}"
    if model_dir is not None:
        push += f" --model_dirs {model_dir}"
    print("Publish (private by default; check what would be uploaded first):")
    print(f"  {push} --dry_run")
    print(f"  {push}")
    # Absolute paths and a bundled recipe name: these lines work from any folder.
    print("Next: talk to the tiny therapist, then train a real one on a GPU:")
    if model_dir is not None:
        profile = json.loads((root / "raw" / "profiles.jsonl").read_text(encoding="utf-8").splitlines()[0])
        print(f"  mirror chat --model {model_dir} --image {root / 'raw' / profile['identity']['image']}")
    print(f"  mirror train --config llava-1.5-7b/planning --dataset_name {root / DATASET_FOLDER}")
