"""Contact sheets of the embedded face renderer, so a reader can judge the faces at a glance.

Two sheets: one client in eight expressions, and the eight evaluation profiles of the bundled sample in one
expression. Each cell is labelled with what was asked for and the category the renderer parsed from it.

    python tools/contact_sheets.py --output_dir docs/images
    python tools/contact_sheets.py --client eval-02 --expression "small polite smile, tense brows"
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from dataset_builder.build import SAMPLE_DIR
from dataset_builder.images import FaceRequest
from dataset_builder.images.face_renderer import EmbeddedFaceRenderer

# Eight expressions written the way the sample's turns write them, one per look worth telling apart.
EXPRESSIONS = (
    "neutral, eyes on the therapist",
    "sad, brows drawn up, mouth turned down, head down",
    "tearful eyes held back, jaw set, lips pressed",
    "anxious, brows raised and drawn together, biting lip",
    "small polite smile, tense brows",
    "smirk, raised eyebrow, eyes avoiding the therapist",
    "withdrawn, gaze averted, head turned away",
    "relieved, broad smile, relaxed brows",
)
CELL = 192
LABEL_H = 30


def sample_clients(sample_dir: Path = SAMPLE_DIR) -> list[tuple[str, str | None, int | None]]:
    """(identity key, gender, age) of each evaluation profile in the bundled sample, in file order."""
    path = sample_dir / "profiles.jsonl"
    clients = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            record = json.loads(line)
            try:
                clients.append(
                    (record["identity"]["key"], record["client"].get("gender"), record["client"].get("age"))
                )
            except KeyError as err:
                raise ValueError(f"{path}:{n}: profile has no {err.args[0]!r}") from err
    return clients


def _label(draw: ImageDraw.ImageDraw, x: int, y: int, lines: Sequence[str]) -> None:
    for k, text in enumerate(lines):
        text = text if len(text) <= 34 else text[:33] + "…"
        draw.text((x + 4, y + 2 + 13 * k), text, fill=(30, 30, 30))


def sheet(cells: Sequence[tuple[FaceRequest, Sequence[str]]], columns: int = 4) -> Image.Image:
    """Render each request into a labelled grid cell."""
    renderer = EmbeddedFaceRenderer()
    rows = -(-len(cells) // columns)
    image = Image.new("RGB", (columns * CELL, rows * (CELL + LABEL_H)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for k, (request, label) in enumerate(cells):
        x, y = (k % columns) * CELL, (k // columns) * (CELL + LABEL_H)
        face = renderer.render(request).resize((CELL, CELL), Image.Resampling.LANCZOS)
        image.paste(face, (x, y))
        _label(draw, x, y + CELL, [*label[:1], f"-> {renderer.params(request).category}", *label[1:]][:2])
    return image


def client_sheet(client: tuple[str, str | None, int | None], expressions: Sequence[str] = EXPRESSIONS) -> Image.Image:
    """One client in each expression (seeds follow the cell, as turns of a session would)."""
    key, gender, age = client
    return sheet(
        [(FaceRequest(key, text, gender=gender, age=age, seed=k), [text]) for k, text in enumerate(expressions)]
    )


def cast_sheet(clients: Sequence[tuple[str, str | None, int | None]], expression: str) -> Image.Image:
    """Each client in one expression, labelled with who they are."""
    cells = [
        (FaceRequest(key, expression, gender=gender, age=age, seed=1), [f"{key}: {gender}, {age}"])
        for key, gender, age in clients
    ]
    return sheet(cells)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="docs/images", help="Folder for the two PNG sheets.")
    parser.add_argument("--client", default="eval-02", help="Identity key (from the sample) for the client sheet.")
    parser.add_argument("--expression", default=EXPRESSIONS[4], help="The expression of the cast sheet.")
    args = parser.parse_args(argv)
    clients = sample_clients()
    chosen = [c for c in clients if c[0] == args.client]
    if not chosen:
        raise ValueError(
            f"--client {args.client!r} is not in {SAMPLE_DIR / 'profiles.jsonl'}: {[c[0] for c in clients]}"
        )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, image in (
        ("faces-one-client.png", client_sheet(chosen[0])),
        ("faces-eight-clients.png", cast_sheet(clients[:8], args.expression)),
    ):
        tmp = out / f".{name}.tmp"
        image.save(tmp, format="PNG", optimize=True)
        tmp.replace(out / name)
        print(f"wrote {out / name} ({(out / name).stat().st_size // 1024} KB)")
    print(f"{(time.perf_counter() - start) * 1000 / 16:.1f} ms per cell (render and resize)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
