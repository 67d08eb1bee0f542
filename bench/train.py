"""Training benchmark: `mirror train` against a plain TRL `SFTTrainer`, and a LLaVA-1.5-7B-sized run on a GPU.

Default mode (CPU, minutes): the tiny random LLaVA (training/tiny.py) on the sample `sft` rows, `base` variant,
trained the same number of steps with the same `SFTConfig` and the same LoRA adapter twice in this process:

- ours: `training.train.build_trainer` + `trainer.train()` exactly as `mirror train` runs them (recipe
  recipes/tiny/base.yaml: data checks, chat-template checks, LoRA regex, projector param group);
- baseline: `trl.SFTTrainer(model=path, processing_class=processor, peft_config=LoraConfig(...))` on the same rows,
  one param group, nothing else.

Runs alternate (ours, baseline, ours, ...) after one warm-up each, so drift and other load hit both alike. Reported:
training samples/s over the steps after the first (the first step pays one-off costs), end-to-end wall time
(building the trainer included), and peak memory growth (RSS on CPU, `max_memory_allocated` on CUDA).

    python bench/train.py                          # tiny model on CPU
    python bench/train.py --real-size              # LLaVA-1.5-7B-sized random model, bf16, LoRA r=128, on CUDA
    python bench/train.py --real-size --scale-down # the same code path with shrunk dims, on CPU (a smoke test)

`--real-size` builds a random LLaVA-1.5-7B from its config (CLIP ViT-L/14-336 + Llama-2-7B dims, 576 image
tokens) and trains it with `mirror train`'s own trainer (LoRA r=128/alpha=256 on the language model, projector at
its own learning rate, TRL's collator, gradient checkpointing, bf16) on synthetic Mirror-format rows of
`--seq-len` tokens. It prints tokens/s, peak GPU memory and model FLOPs utilisation (MFU):

    model FLOPs per step = sum over sequences of  T * (4 * N_frozen + 6 * N_lora) + 6 * L * d * T^2
                           + images * [ P * 2 * N_vision + L_v * 4 * d_v * P^2 + 576 * 4 * N_projector ]
    MFU = model FLOPs per step / step time / peak FLOP/s

T: real (unpadded) tokens of a sequence, image tokens included; N_frozen: frozen language-model matmul weights
(decoder linears + LM head, not the input embedding); N_lora: LoRA A and B weights. Forward costs 2N per token;
the backward computes activation gradients through every frozen layer (2N: LoRA sits in every layer and the
projector below them all needs gradients) and weight gradients only for LoRA (2 N_lora), hence 4 N_frozen +
6 N_lora. Causal attention: forward 2 * d * T^2 per layer (QK^T and AV), backward twice that, hence 6 L d T^2.
The frozen CLIP tower runs forward only (P = 577 patch tokens incl. CLS, non-causal attention 4 d_v P^2 per
layer); the trainable projector costs 4 N_projector per image token (forward + weight gradient). Recomputation by
gradient checkpointing and padding are not counted (MFU, not hardware FLOPs utilisation). Peak: 989 TFLOP/s, the
dense bf16 peak of an H100 SXM / H200 (override with --peak-tflops).

Results are printed and written to bench/out/train.json (or train_real_size.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import measure  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0
IMAGE_SIZE, PATCH_SIZE = 336, 14
SPEED_RECIPE = REPO / "recipes" / "llava-1.5-7b" / "base.yaml"
_BLOCK_START, _BLOCK_END = "# >>> proposed speed settings:", "# <<<"


# ----------------------------------------------------------------------------------------------------------------------
# Training-speed settings


def proposed_speed_settings(recipe: str | Path = SPEED_RECIPE) -> dict[str, dict]:
    """The `# >>> proposed speed settings: <GPU> (...)` blocks of a recipe, commented out there until measured:
    {GPU name: {key: value}}. The recipe is the one place they are written; the bench and the tests read them."""
    import yaml

    blocks: dict[str, dict] = {}
    name, lines = None, []
    for line in Path(recipe).read_text(encoding="utf-8").splitlines():
        if line.startswith(_BLOCK_START):
            name, lines = line[len(_BLOCK_START) :].split("(")[0].strip(), []
        elif line.startswith(_BLOCK_END) and name is not None:
            blocks[name] = yaml.safe_load("\n".join(lines)) or {}
            name = None
        elif name is not None:
            lines.append(line.removeprefix("#").removeprefix(" "))
    return blocks


def settings_argv(settings: dict) -> list[str]:
    """`mirror train` flags for a settings mapping (booleans as true/false, mappings as JSON)."""
    argv = []
    for key, value in settings.items():
        text = json.dumps(value) if isinstance(value, dict) else str(value).lower() if isinstance(value, bool) else value
        argv += [f"--{key}", str(text)]
    return argv


# ----------------------------------------------------------------------------------------------------------------------
# Timing


def step_timer(sync):
    """A TrainerCallback recording wall time and this process's CPU time at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends: list[tuple[float, float]] = []
            self.tokens: list[int] = []
            self.trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            self.ends = [(time.perf_counter(), time.process_time())]
            self.tokens = [0]

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.ends.append((time.perf_counter(), time.process_time()))
            if self.trainer is not None:
                self.tokens.append(self.trainer._total_train_tokens)

        def steady(self, skip: int = 1) -> tuple[float, float, int, int]:
            """(wall seconds, CPU seconds, steps, tokens) over the steps after the first `skip` ones."""
            wall = self.ends[-1][0] - self.ends[skip][0]
            cpu = self.ends[-1][1] - self.ends[skip][1]
            tokens = self.tokens[-1] - self.tokens[skip] if len(self.tokens) == len(self.ends) else 0
            return wall, cpu, len(self.ends) - 1 - skip, tokens

    return StepTimer()


def cuda_sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory(fn):
    """Run fn; return (result, seconds, peak bytes): CUDA allocator peak on a GPU, RSS growth otherwise."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        cuda_sync()
        return result, time.perf_counter() - start, torch.cuda.max_memory_allocated()
    gc.collect()
    return measure(fn)


# ----------------------------------------------------------------------------------------------------------------------
# Tiny: mirror train vs plain TRL


def tiny_comparison(args) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoProcessor
    from trl import SFTTrainer

    from training.modeling import default_lora_target_regex, set_chat_template
    from training.tiny import build_tiny_llava, load_chat_template
    from training.train import TINY_RECIPE, build_trainer, parse_args

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mirror-bench-train-"))
    if args.dataset:
        dataset_dir = Path(args.dataset)
    else:
        from dataset_builder.build import build_sample_dataset

        dataset_dir = build_sample_dataset(work / "dataset")
    model_dir = build_tiny_llava(work / "tiny-llava")
    common = [
        "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--save_strategy", "no", "--logging_steps", str(args.steps), "--report_to", "none",
        "--disable_tqdm", "true", "--seed", "0",
    ]  # fmt: skip

    def ours():
        script_args, training_args, model_args = parse_args(
            ["--config", str(TINY_RECIPE), "--model_name_or_path", str(model_dir), "--dataset_name", str(dataset_dir),
             "--output_dir", str(work / "ours"), *common]
        )  # fmt: skip
        timer = step_timer(cuda_sync)
        trainer = build_trainer(script_args, training_args, model_args, callbacks=[timer])
        trainer.train()
        return timer

    # The same LoRA adapter as ours (the regex mirror train derives), computed once from the model.
    from transformers import AutoModelForImageTextToText

    target = default_lora_target_regex(AutoModelForImageTextToText.from_pretrained(model_dir))

    def baseline():
        # The same SFTConfig, resolved from the same recipe; plain TRL from here on.
        _, training_args, _ = parse_args(["--config", str(TINY_RECIPE), "--output_dir", str(work / "baseline"), *common])
        rows = datasets.load_dataset(str(dataset_dir), "sft", split="train")
        rows = rows.filter(lambda v: v == "base", input_columns="variant").select_columns(["messages", "images"])
        processor = AutoProcessor.from_pretrained(model_dir)
        set_chat_template(processor, load_chat_template("llava_eos"))
        timer = step_timer(cuda_sync)
        trainer = SFTTrainer(
            model=str(model_dir),
            args=training_args,
            train_dataset=rows,
            processing_class=processor,
            peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=target,
                                   modules_to_save=["model.multi_modal_projector"], task_type="CAUSAL_LM"),
            callbacks=[timer],
        )  # fmt: skip
        trainer.train()
        return timer

    results = {"ours": [], "baseline": []}
    runs = [("ours", ours), ("baseline", baseline)]
    for _name, fn in runs:  # warm-up: imports, kernels, dataset caches
        fn()
    for rep in range(args.reps):
        for name, fn in runs if rep % 2 == 0 else runs[::-1]:  # alternate who goes first: no order bias
            timer, wall, peak = peak_memory(fn)
            seconds, cpu_seconds, steps, _ = timer.steady()
            results[name].append(
                {
                    "samples_per_s": steps * args.batch_size / seconds,
                    "samples_per_cpu_s": steps * args.batch_size / cpu_seconds,
                    "wall_s": wall,
                    "peak_mb": peak / 2**20,
                }
            )
    # On a shared machine other load only ever slows a run down: the best run is the least disturbed one, and CPU
    # time (this process's own) is far less sensitive to other processes than wall time.
    summary = {
        name: {
            "best_samples_per_s": max(run["samples_per_s"] for run in runs_),
            "median_samples_per_s": statistics.median(run["samples_per_s"] for run in runs_),
            "best_samples_per_cpu_s": max(run["samples_per_cpu_s"] for run in runs_),
            "median_wall_s": statistics.median(run["wall_s"] for run in runs_),
            "median_peak_mb": statistics.median(run["peak_mb"] for run in runs_),
        }
        for name, runs_ in results.items()
    }
    ratio = summary["ours"]["best_samples_per_s"] / summary["baseline"]["best_samples_per_s"]
    cpu_ratio = summary["ours"]["best_samples_per_cpu_s"] / summary["baseline"]["best_samples_per_cpu_s"]
    report = {
        "mode": "tiny",
        "model": "tiny random LLaVA (training/tiny.py), LoRA r=8 + projector",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "reps": args.reps,
        "runs": results,
        "summary": summary,
        "samples_per_s_ratio_ours_over_baseline": ratio,
        "samples_per_cpu_s_ratio_ours_over_baseline": cpu_ratio,
        "wall_ratio_ours_over_baseline": summary["ours"]["median_wall_s"] / summary["baseline"]["median_wall_s"],
        "peak_memory_ratio_ours_over_baseline": summary["ours"]["median_peak_mb"]
        / max(summary["baseline"]["median_peak_mb"], 1e-9),
    }
    memory = "peak GPU alloc" if torch.cuda.is_available() else "peak RSS growth"
    print(f"tiny LLaVA, {args.steps} steps x batch {args.batch_size}, {args.reps} alternating runs each "
          f"({report['device']}, {report['torch_threads']} threads); samples/s: best (median)")  # fmt: skip
    for name in ("ours", "baseline"):
        s = summary[name]
        label = "mirror train" if name == "ours" else "plain TRL SFTTrainer"
        print(f"  {label:22s} {s['best_samples_per_s']:6.2f} ({s['median_samples_per_s']:5.2f}) samples/s  "
              f"{s['best_samples_per_cpu_s']:6.2f} samples/CPU-s  wall {s['median_wall_s']:5.1f} s  "
              f"{memory} {s['median_peak_mb']:6.1f} MiB")  # fmt: skip
    verdict = "not slower" if min(ratio, cpu_ratio) >= 0.95 else "SLOWER"
    print(
        f"  ratio ours/baseline: samples/s {ratio:.3f}, samples/CPU-s {cpu_ratio:.3f} ({verdict}; 5 % is noise here)"
    )
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Real size: LLaVA-1.5-7B dims, random weights


def llava_7b_config(image_token_id: int, pad_token_id: int, scale_down: bool):
    """LlavaConfig with LLaVA-1.5-7B's dims (CLIP ViT-L/14-336 + Llama-2-7B), or shrunk ones for a CPU smoke test."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if scale_down:
        vision = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
        text = {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 4}  # fmt: skip
    else:
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}
        text = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 32}  # fmt: skip
    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            **vision, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=768, hidden_act="quick_gelu"
        ),
        text_config=LlamaConfig(
            **text, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=pad_token_id,
            tie_word_embeddings=False,
        ),
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )  # fmt: skip


def real_size_processor():
    """LLaVA-1.5's processor shape (336 px CLIP, 576 image tokens) around the tiny tokenizer (no download)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    from training.tiny import build_tiny_tokenizer, load_chat_template

    tokenizer = build_tiny_tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=True
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=load_chat_template("llava_eos"),
    )  # fmt: skip


def synthetic_rows(processor, n_rows: int, seq_len: int, seed: int = 0):
    """Mirror-format `sft` rows (one 336 px face image, a user turn, a therapist reply) of about `seq_len` tokens."""
    import datasets
    import numpy as np
    from PIL import Image
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from inference.prompts import therapist_messages

    rng = np.random.default_rng(seed)
    words = ("the client looks away and says it is fine but the therapist notices tension in the jaw and a quiet "
             "voice so the session slows down to name the distance and invite an honest answer").split()  # fmt: skip
    client = {"name": "Dana", "age": 34, "gender": "female", "occupation": "technician"}
    reply = "It sounds like part of you is unsure, and that is okay to say."
    collator = DataCollatorForVisionLanguageModeling(processor=processor)

    def row(n_words: int):
        history = [{"speaker": "client", "statement": " ".join(rng.choice(words, size=n_words))}]
        pixels = rng.integers(0, 255, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        return therapist_messages(client, history, "base", reply=reply), [Image.fromarray(pixels)]

    def length(n_words: int) -> int:
        messages, images = row(n_words)
        return int(collator([{"messages": messages, "images": images}])["attention_mask"].sum())

    # Tokens grow linearly with the words of the history: fit it on two probes, solve for seq_len.
    short, long = length(50), length(250)
    n_words = max(1, round(50 + (seq_len - short) * 200 / (long - short)))
    rows = {"messages": [], "images": []}
    for _ in range(n_rows):
        messages, images = row(n_words)
        rows["messages"].append(messages)
        rows["images"].append(images)
    features = datasets.Features(
        {
            "messages": datasets.List(
                {"role": datasets.Value("string"),
                 "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})}
            ),
            "images": datasets.List(datasets.Image()),
        }
    )  # fmt: skip
    return datasets.Dataset.from_dict(rows, features=features)


def parameter_counts(model) -> dict[str, int]:
    """Matmul weights by role, for the MFU formula (the input embedding is a lookup and is left out)."""
    counts = {"lm_frozen": 0, "lora": 0, "vision": 0, "projector": 0, "trainable": 0, "total": 0}
    for name, param in model.named_parameters():
        counts["total"] += param.numel()
        counts["trainable"] += param.numel() if param.requires_grad else 0
        if ".lora_" in name:
            counts["lora"] += param.numel()
        elif "multi_modal_projector" in name:
            if "original_module" not in name:  # the frozen copy peft keeps does not run
                counts["projector"] += param.numel()
        elif "vision_tower" in name:
            if param.dim() > 1:
                counts["vision"] += param.numel()
        elif ("language_model" in name or "lm_head" in name) and "embed_tokens" not in name and param.dim() > 1:
            counts["lm_frozen"] += param.numel()
    return counts


def model_flops(counts, text_config, vision_config, sequence_lengths: list[float], n_images: int) -> float:
    """Model FLOPs of the given sequences and images (formula in the module docstring)."""
    layers, hidden = text_config.num_hidden_layers, text_config.hidden_size
    patches = (vision_config.image_size // vision_config.patch_size) ** 2 + 1
    lm = sum(
        t * (4 * counts["lm_frozen"] + 6 * counts["lora"]) + 6 * layers * hidden * t * t for t in sequence_lengths
    )
    vision = n_images * (
        patches * 2 * counts["vision"]
        + vision_config.num_hidden_layers * 4 * vision_config.hidden_size * patches * patches
        + (patches - 1) * 4 * counts["projector"]
    )
    return float(lm + vision)


def real_size(args) -> dict:
    import torch
    from transformers import LlavaForConditionalGeneration
    from trl import ModelConfig, SFTConfig

    from training.train import MirrorScriptArguments, build_trainer

    cuda = torch.cuda.is_available()
    if not cuda and not args.scale_down:
        raise SystemExit("--real-size needs a CUDA GPU (a 7B model); use --scale-down to exercise it on CPU")
    processor = real_size_processor()
    tokenizer = processor.tokenizer
    config = llava_7b_config(tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id, args.scale_down)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device("cuda" if cuda else "cpu"):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    build_s = time.perf_counter() - start
    steps = args.warmup_steps + args.steps
    rows = synthetic_rows(processor, steps * args.batch_size, args.seq_len)

    script_args = MirrorScriptArguments(
        dataset_name="synthetic", variant="base", projector_lr=2e-5, chat_template="llava_eos",
    )  # fmt: skip
    model_args = ModelConfig(
        model_name_or_path="random-llava-1.5-7b", use_peft=True, lora_r=128, lora_alpha=256, lora_dropout=0.05
    )
    training_args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="mirror-bench-real-"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        bf16=cuda,
        use_cpu=not cuda,
        activation_checkpointing=True,
        max_length=None,
        assistant_only_loss=True,
        logging_steps=max(1, steps),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=args.dataloader_workers,
        seed=0,
    )
    timer = step_timer(cuda_sync)
    trainer = build_trainer(script_args, training_args, model_args, model=model, processing_class=processor,
                            train_dataset=rows, callbacks=[timer])  # fmt: skip
    timer.trainer = trainer
    counts = parameter_counts(trainer.model)
    _, _, peak = peak_memory(trainer.train)
    seconds, _, measured_steps, tokens = timer.steady(skip=args.warmup_steps)
    sequences = measured_steps * args.batch_size  # one image per row
    mean_tokens = tokens / sequences  # real tokens (attention mask) counted by TRL over the timed steps
    flops = model_flops(counts, config.text_config, config.vision_config, [mean_tokens] * sequences, sequences)
    peak_tflops = args.peak_tflops
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    if peak_tflops is None:
        peak_tflops = H100_BF16_DENSE_TFLOPS
        if cuda and not any(name in device_name for name in ("H100", "H200")):
            print(f"warning: {device_name} is not an H100/H200; MFU uses 989 TFLOP/s unless --peak-tflops is given")
    achieved = flops / seconds
    report = {
        "mode": "real-size" + (" (scaled down)" if args.scale_down else ""),
        "device": device_name,
        "dtype": str(dtype),
        "model_build_s": build_s,
        "batch_size": args.batch_size,
        "measured_steps": measured_steps,
        "warmup_steps": args.warmup_steps,
        "mean_tokens_per_sequence": mean_tokens,
        "parameters": counts,
        "step_s": seconds / measured_steps,
        "tokens_per_s": tokens / seconds,
        "samples_per_s": measured_steps * args.batch_size / seconds,
        "peak_memory_gib": peak / 2**30,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "RSS growth",
        "model_tflops_per_step": flops / measured_steps / 1e12,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak_tflops,
        "mfu": achieved / (peak_tflops * 1e12),
    }
    print(f"{report['mode']} LLaVA-1.5-7B layout on {device_name} ({report['dtype']}), LoRA r=128 + projector, "
          f"batch {args.batch_size}, ~{report['mean_tokens_per_sequence']:.0f} tokens/sequence "
          f"(576 image tokens), {measured_steps} timed steps after {args.warmup_steps} warm-up")  # fmt: skip
    print(f"  parameters: total {counts['total'] / 1e9:.3f} B, trainable {counts['trainable'] / 1e6:.1f} M "
          f"(LoRA {counts['lora'] / 1e6:.1f} M)")  # fmt: skip
    print(f"  {report['step_s']:.3f} s/step  {report['tokens_per_s']:.0f} tokens/s  {report['samples_per_s']:.2f} "
          f"samples/s  peak memory {report['peak_memory_gib']:.2f} GiB ({report['peak_memory_kind']})")  # fmt: skip
    print(f"  model FLOPs/step {report['model_tflops_per_step']:.2f} TFLOP, achieved {report['achieved_tflops']:.1f} "
          f"TFLOP/s, MFU {100 * report['mfu']:.1f} % of {peak_tflops:.0f} TFLOP/s")  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-size", action="store_true", help="LLaVA-1.5-7B-sized random model (CUDA).")
    parser.add_argument("--scale-down", action="store_true", help="With --real-size: shrunk dims, runs on CPU.")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (default: 8 tiny, 10 real size).")
    parser.add_argument("--warmup-steps", type=int, default=2, help="Real size: untimed first steps.")
    parser.add_argument("--batch-size", type=int, default=None, help="Per-device batch (default: 2 tiny, 8 real).")
    parser.add_argument("--seq-len", type=int, default=1024, help="Real size: tokens per row, 576 image tokens incl.")
    parser.add_argument("--reps", type=int, default=5, help="Tiny: timed repetitions of each trainer.")
    parser.add_argument("--dataset", help="Tiny: a Mirror dataset folder (default: the sample, built now).")
    parser.add_argument("--workdir", help="Scratch folder (default: a temp dir).")
    parser.add_argument("--peak-tflops", type=float, default=None, help="Real size: peak FLOP/s for MFU (989).")
    parser.add_argument("--dataloader-workers", type=int, default=None, help="Real size: collator workers.")
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default: bench/out/train*.json).")
    args = parser.parse_args(argv)

    import torch

    if args.real_size:
        args.steps = args.steps or (3 if args.scale_down else 10)
        args.batch_size = args.batch_size or (2 if args.scale_down else 8)
        if args.dataloader_workers is None:
            args.dataloader_workers = 4 if torch.cuda.is_available() else 0
        report = real_size(args)
        default_output = REPO / "bench" / "out" / "train_real_size.json"
    else:
        args.steps = args.steps or 8
        args.batch_size = args.batch_size or 2
        report = tiny_comparison(args)
        default_output = REPO / "bench" / "out" / "train.json"
    output = args.output or default_output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
