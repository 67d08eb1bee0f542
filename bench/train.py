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
        text = (
            json.dumps(value) if isinstance(value, dict) else str(value).lower() if isinstance(value, bool) else value
        )
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
        _, training_args, _ = parse_args(
            ["--config", str(TINY_RECIPE), "--output_dir", str(work / "baseline"), *common]
        )
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


# ----------------------------------------------------------------------------------------------------------------------
# Real size: settings sweep with a phase profile

# Named settings; `paper` is the baseline every other setting is compared with (speed and loss). A setting may also
# be written inline: "micro=4,ga=8,ckpt=none,compile=1,metrics=0,kernels=0,pad=64" (ckpt: all, none or everyN).
NAMED_SETTINGS = {
    "paper": "ckpt=all,compile=0,metrics=1",  # the recipe as measured before issue 14: full checkpointing, eager
    "paper-nometrics": "ckpt=all,compile=0,metrics=0",
}


def parse_setting(spec: str, batch_size: int) -> dict:
    """A setting name or inline spec -> MirrorSFTConfig keys; micro-batch x accumulation must equal `batch_size`."""
    if spec in ("h100", "h200"):
        proposal = next(v for k, v in proposed_speed_settings().items() if k.lower().startswith(spec))
        ga = min(proposal["gradient_accumulation_steps"], batch_size)  # a smaller effective batch (scale-down)
        if batch_size % ga:
            raise ValueError(f"Setting {spec!r}: effective batch {batch_size} is not a multiple of ga {ga}")
        scaled = {"per_device_train_batch_size": batch_size // ga, "gradient_accumulation_steps": ga}
        return {**proposal, **scaled, "log_token_metrics": False, "name": spec}
    text = NAMED_SETTINGS.get(spec, spec)
    values = dict(item.split("=", 1) for item in text.split(",") if item)
    unknown = set(values) - {"micro", "ga", "ckpt", "compile", "metrics", "kernels", "pad"}
    if unknown:
        raise ValueError(f"Unknown key(s) {sorted(unknown)} in setting {spec!r}")
    ga = int(values.get("ga", 1))
    micro = int(values.get("micro", batch_size // ga))
    if micro * ga != batch_size:
        raise ValueError(f"Setting {spec!r}: micro {micro} x ga {ga} != effective batch {batch_size}")
    ckpt = values.get("ckpt", "all")
    settings = {
        "name": spec,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": ga,
        "activation_checkpointing": ckpt != "none",
        "compile_decoder_layers": values.get("compile", "0") == "1",
        "log_token_metrics": values.get("metrics", "1") == "1",
    }
    if ckpt.startswith("every"):
        settings["activation_checkpointing_kwargs"] = {"every_n_layers": int(ckpt[len("every") :])}
    if "pad" in values:
        settings["pad_to_multiple_of"] = int(values["pad"])
    if values.get("kernels", "0") == "1":
        settings["model_init_kwargs"] = {"use_kernels": True}
    return settings


def phase_profiler(trainer, sync):
    """Wall time per optimizer step in data loading (`get_batch_samples`), forward, backward and optimizer step
    (`on_pre_optimizer_step` -> `on_optimizer_step`); the rest of the step (clipping, scheduler, logging) is "other".
    Each phase boundary synchronises the GPU, so a phase is charged for its own kernels."""
    from transformers import TrainerCallback

    totals = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    per_step: list[dict[str, float]] = []
    marks: dict[str, float] = {}

    def timed(phase, fn):
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                totals[phase] += time.perf_counter() - start

        return wrapper

    trainer.get_batch_samples = timed("data", trainer.get_batch_samples)
    trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
    model = trainer.model

    def before_forward(module, args, kwargs):
        sync()
        marks["forward"] = time.perf_counter()

    def after_forward(module, args, kwargs, output):
        sync()
        totals["forward"] += time.perf_counter() - marks.pop("forward")

    model.register_forward_pre_hook(before_forward, with_kwargs=True)
    model.register_forward_hook(after_forward, with_kwargs=True)

    class Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks["step"] = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            sync()
            marks["optimizer"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            sync()
            totals["optimizer"] += time.perf_counter() - marks.pop("optimizer")

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            per_step.append(dict(totals))
            for key in totals:
                totals[key] = 0.0

    profile = Profile()
    profile.per_step = per_step
    return profile


def summarise_profile(per_step: list[dict[str, float]], skip: int, step_s: float) -> dict[str, float]:
    """Mean seconds per timed step in each phase; `other` is what the step spent elsewhere."""
    timed = per_step[skip:]
    if not timed:
        return {}
    phases = {key: sum(step[key] for step in timed) / len(timed) for key in timed[0]}
    # get_batch_samples runs before on_step_begin: its time is part of the step as StepTimer measures it.
    phases["other"] = max(0.0, step_s - sum(phases.values()))
    return phases


def real_size_run(args, settings: dict, processor, config, rows, peak_tflops: float) -> dict:
    """Train the random LLaVA-1.5-7B layout with one setting; tokens/s, peak memory, MFU, phases, losses."""
    import torch
    from transformers import LlavaForConditionalGeneration
    from trl import ModelConfig

    from training.modeling import MirrorSFTConfig
    from training.train import MirrorScriptArguments, build_trainer

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)  # every setting starts from the same weights
    start = time.perf_counter()
    with torch.device("cuda" if cuda else "cpu"):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    build_s = time.perf_counter() - start
    steps = args.warmup_steps + args.steps
    script_args = MirrorScriptArguments(
        dataset_name="synthetic", variant="base", projector_lr=2e-5, chat_template="llava_eos",
    )  # fmt: skip
    model_args = ModelConfig(
        model_name_or_path="random-llava-1.5-7b", use_peft=True, lora_r=128, lora_alpha=256, lora_dropout=0.0
    )  # dropout 0: the loss over the first steps is then comparable across settings
    loop = {key: value for key, value in settings.items() if key != "name"}
    if loop.get("compile_decoder_layers") and not cuda:
        loop["compile_backend"] = "aot_eager"  # inductor's C++ code generation takes minutes on a CPU
    if loop.pop("model_init_kwargs", None):  # `mirror train` passes it to from_pretrained; here: built from config
        model.set_use_kernels(True)  # Hub kernels (needs the `kernels` package and the Hub on first use)
    training_args = MirrorSFTConfig(
        output_dir=tempfile.mkdtemp(prefix="mirror-bench-real-"),
        max_steps=steps,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        bf16=cuda,
        use_cpu=not cuda,
        max_length=None,
        assistant_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=args.dataloader_workers,
        seed=0,
        **loop,
    )
    timer = step_timer(cuda_sync)
    trainer = build_trainer(script_args, training_args, model_args, model=model, processing_class=processor,
                            train_dataset=rows, callbacks=[timer])  # fmt: skip
    timer.trainer = trainer
    profile = phase_profiler(trainer, cuda_sync)
    trainer.add_callback(profile)
    counts = parameter_counts(trainer.model)
    _, _, peak = peak_memory(trainer.train)
    seconds, _, measured_steps, tokens = timer.steady(skip=args.warmup_steps)
    sequences = measured_steps * args.batch_size  # one image per row
    mean_tokens = tokens / sequences  # real tokens (attention mask) counted by TRL over the timed steps
    flops = model_flops(counts, config.text_config, config.vision_config, [mean_tokens] * sequences, sequences)
    step_s = seconds / measured_steps
    result = {
        "setting": settings,
        "model_build_s": build_s,
        "measured_steps": measured_steps,
        "mean_tokens_per_sequence": mean_tokens,
        "parameters": counts,
        "step_s": step_s,
        "tokens_per_s": tokens / seconds,
        "samples_per_s": sequences / seconds,
        "peak_memory_gib": peak / 2**30,
        "model_tflops_per_step": flops / measured_steps / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / (peak_tflops * 1e12),
        "profile_s_per_step": summarise_profile(profile.per_step, args.warmup_steps, step_s),
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "vision_towers_without_graph": trainer.mirror_speedups["vision_towers_without_graph"],
    }
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def real_size(args) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.scale_down:
        raise SystemExit("--real-size needs a CUDA GPU (a 7B model); use --scale-down to exercise it on CPU")
    settings = [parse_setting(spec, args.batch_size) for spec in args.settings.split(";") if spec]
    processor = real_size_processor()
    tokenizer = processor.tokenizer
    config = llava_7b_config(tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id, args.scale_down)
    rows = synthetic_rows(processor, (args.warmup_steps + args.steps) * args.batch_size, args.seq_len)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak_tflops = args.peak_tflops
    if peak_tflops is None:
        peak_tflops = H100_BF16_DENSE_TFLOPS
        if cuda and not any(name in device_name for name in ("H100", "H200")):
            print(f"warning: {device_name} is not an H100/H200; MFU uses 989 TFLOP/s unless --peak-tflops is given")
    print(f"{'real size' + (' (scaled down)' if args.scale_down else '')} LLaVA-1.5-7B layout on {device_name}, "
          f"LoRA r=128 + projector, effective batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup_steps} warm-up, ~{args.seq_len} tokens/row (576 image tokens)")  # fmt: skip
    runs = []
    for setting in settings:
        try:
            run = real_size_run(args, setting, processor, config, rows, peak_tflops)
        except torch.OutOfMemoryError as error:  # a setting that does not fit is a result too
            run = {"setting": setting, "error": f"out of memory: {str(error).splitlines()[0]}"}
            gc.collect()
            torch.cuda.empty_cache()
        runs.append(run)
        print_run(run, runs[0])
    report = {
        "mode": "real-size" + (" (scaled down)" if args.scale_down else ""),
        "device": device_name,
        "dtype": "torch.bfloat16" if cuda else "torch.float32",
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup_steps,
        "timed_steps": args.steps,
        "peak_tflops": peak_tflops,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "RSS growth",
        "runs": runs,
    }
    print("\n| setting | micro x ga | checkpointing | compile | metrics | tokens/s | peak GiB | MFU "
          "| fwd/bwd/opt/data/other s | max loss diff vs first |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(markdown_row(run, runs[0]))
    return report


def _checkpointing(setting: dict) -> str:
    if not setting.get("activation_checkpointing"):
        return "none"
    every = (setting.get("activation_checkpointing_kwargs") or {}).get("every_n_layers", 1)
    return "every layer" if every == 1 else f"every {every}th layer"


def loss_difference(run: dict, baseline: dict) -> float | None:
    """Largest relative difference of the logged losses over the common first steps (same seed, same rows)."""
    if "losses" not in run or "losses" not in baseline:
        return None
    pairs = list(zip(run["losses"], baseline["losses"], strict=False))
    return max((abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), default=None)


def markdown_row(run: dict, baseline: dict) -> str:
    setting = run["setting"]
    micro, ga = setting["per_device_train_batch_size"], setting["gradient_accumulation_steps"]
    head = (f"| {setting['name']} | {micro} x {ga} | {_checkpointing(setting)} | {'regional' if setting.get('compile_decoder_layers') else 'eager'} "
            f"| {'on' if setting.get('log_token_metrics', True) else 'off'} ")  # fmt: skip
    if "error" in run:
        return head + f"| — | {run['error']} | — | — | — |"
    phases = run["profile_s_per_step"]
    profile = "/".join(f"{phases.get(k, 0):.2f}" for k in ("forward", "backward", "optimizer", "data", "other"))
    diff = loss_difference(run, baseline)
    return head + (f"| {run['tokens_per_s']:,.0f} | {run['peak_memory_gib']:.1f} | {100 * run['mfu']:.1f} % "
                   f"| {profile} | {'—' if diff is None else f'{diff:.1e}'} |")  # fmt: skip


def print_run(run: dict, baseline: dict) -> None:
    setting = run["setting"]
    if "error" in run:
        print(f"  {setting['name']}: {run['error']}")
        return
    phases = ", ".join(f"{key} {value:.3f} s" for key, value in run["profile_s_per_step"].items())
    losses = ", ".join(f"{loss:.4f}" for loss in run["losses"])
    diff = loss_difference(run, baseline)
    versus = "" if diff is None or run is baseline else f"; max rel. diff vs {baseline['setting']['name']} {diff:.1e}"
    print(f"  {setting['name']}: {run['step_s']:.3f} s/step  {run['tokens_per_s']:,.0f} tokens/s  "
          f"peak {run['peak_memory_gib']:.2f} GiB  MFU {100 * run['mfu']:.1f} %")  # fmt: skip
    print(f"    per step: {phases}")
    print(f"    losses: {losses}{versus}")


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
    parser.add_argument(
        "--settings",
        default="paper",
        help="Real size: ';'-separated settings, compared with the first: a name (paper, paper-nometrics, h100, "
        "h200: the recipe's proposals) or an inline spec 'micro=4,ga=8,ckpt=none|all|every2,compile=1,metrics=0,"
        "kernels=1,pad=64'. Micro-batch x ga must equal --batch-size.",
    )
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
