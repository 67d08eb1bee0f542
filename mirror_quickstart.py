"""`mirror quickstart`: the whole chain offline on a CPU with embedded defaults (sample data, tiny random LLaVA)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class QuickstartArguments:
    output: str = field(default="mirror_quickstart", metadata={"help": "Working folder for every output."})
    max_steps: int = field(default=8, metadata={"help": "Training steps for the tiny model."})
    skip_training: bool = field(default=False, metadata={"help": "Stop after building the dataset."})


ARGUMENTS = (QuickstartArguments,)


def main(args: QuickstartArguments) -> int:
    """Sample data -> faces -> Hub-ready dataset folder -> tiny LLaVA fine-tuned with TRL -> one therapist reply."""
    from dataset_builder.build import SAMPLE_DIR, BuildOptions, build_dataset, render_faces

    root = Path(args.output).resolve()
    steps = 2 if args.skip_training else 4
    print(f"[1/{steps}] Rendering client faces for the bundled sample into {root / 'raw'}")
    render_faces(SAMPLE_DIR, root / "raw")
    print(f"[2/{steps}] Building the Hub-ready dataset folder {root / 'dataset'}")
    result = build_dataset(root / "raw", root / "dataset", BuildOptions(pretty_name="Mirror sample"))
    print("Dataset: " + ", ".join(f"{k}={v}" for k, v in sorted(result.num_rows.items())))
    print(f"  load_dataset({str(result.output_dir)!r}, 'sft', split='train')")
    if args.skip_training:
        return 0

    from training.train import train_tiny_model

    print(f"[3/{steps}] Fine-tuning a tiny random LLaVA (built from config, offline) for {args.max_steps} steps")
    model_dir = train_tiny_model(result.output_dir, root / "training", max_steps=args.max_steps)
    print(f"Model folder: {model_dir}\n  AutoModelForImageTextToText.from_pretrained({str(model_dir)!r})")

    from PIL import Image

    from inference.therapist import MirrorTherapist

    print(f"[4/{steps}] Loading the tiny therapist and answering one client turn with a face image")
    profile = json.loads((root / "raw" / "profiles.jsonl").read_text(encoding="utf-8").splitlines()[0])
    face = root / "raw" / profile["identity"]["image"]
    therapist = MirrorTherapist.from_pretrained(str(model_dir))
    session = therapist.start_session(profile["client"])
    print(f"  {session.disclosure}")
    session.respond("", image=Image.open(face))
    statement = "[Shrugs, looks at the floor] I don't really know why I'm here."
    reply = session.respond(statement, image=Image.open(face))
    print(f"  Client ({profile['client']['name']}, face: {face.name}): {statement}")
    print(f"  Therapist (tiny random model, so the words are noise): {reply.text}")
    print("Done. Next: `mirror train --config recipes/llava-1.5-7b/base.yaml` on a GPU, then `mirror chat`.")
    return 0
