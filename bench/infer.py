"""Inference overhead benchmark: `MirrorTherapist` against raw `model.generate`, and batched against sequential.

Why: the therapist wraps generation in prompt rendering, the processor, the safety layer and reply cleaning. This
measures what that costs, in the same process, on the same model and prompt, with greedy decoding so both paths
generate the same tokens. The target is an overhead ratio (therapist latency / raw generate latency) <= 1.1.

    python bench/infer.py                       # tiny random LLaVA built on the fly (CPU, seconds)
    python bench/infer.py --model path/or/id    # a real checkpoint (use --device cuda)

Raw `generate` is timed on inputs prepared beforehand (the model's cost alone); the therapist is timed end to end
(`session.respond`: prompt, processor, safety screening, generate, decode, safety filter). Results are printed and
written to bench/out/infer.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLIENT = {
    "name": "Dana Whitfield",
    "age": 34,
    "gender": "female",
    "occupation": "pharmacy technician",
    "personal_info": "Dana works long shifts and rarely sees friends.",
    "reason_for_counseling": "She feels she is failing as a parent.",
}


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Model folder or Hub id (default: a tiny random LLaVA built now).")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps.")
    parser.add_argument("--dtype", help="float32, bfloat16, ... (default: float32 on CPU, the checkpoint's else).")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="Tokens per reply (the paper's 128).")
    parser.add_argument("--reps", type=int, default=10, help="Timed repetitions after one warm-up.")
    parser.add_argument("--batch-size", type=int, default=8, help="Sessions answered at once in the batch test.")
    parser.add_argument(
        "--no-safety-embeddings", action="store_true", help="Lexicon-only safety screening (embeddings off)."
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "out" / "infer.json")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from inference.backends.base import GenerationConfig
    from inference.backends.transformers_backend import TransformersBackend, attach_images
    from inference.safety import SafetyConfig
    from inference.therapist import MirrorTherapist

    model_path = args.model
    if model_path is None:
        from training.tiny import build_tiny_llava

        model_path = str(build_tiny_llava(Path(tempfile.mkdtemp(prefix="mirror-bench-")) / "tiny-llava"))
    backend = TransformersBackend.from_pretrained(model_path, device=args.device, dtype=args.dtype)
    generation = GenerationConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    safety = SafetyConfig(use_embeddings=not args.no_safety_embeddings)
    strategy = "base" if backend.supports_images else "text"
    therapist = MirrorTherapist(backend, strategy, generation, safety)
    image = Image.new("RGB", (336, 336), (150, 90, 80))
    images = [image] if backend.supports_images else None
    statement = "[looks away] I guess it's fine. I don't really know why I'm here."

    def sync():
        if backend.model.device.type == "cuda":
            torch.cuda.synchronize()

    def therapist_reply():
        session = therapist.start_session(CLIENT)  # a fresh session: the same prompt every repetition
        sync()
        start = time.perf_counter()
        reply = session.respond(statement, image=image)
        sync()
        return time.perf_counter() - start, reply, backend.last_usage.completion_tokens

    # The exact inputs the therapist builds, prepared once, for raw generate.
    _, warm_reply, _ = therapist_reply()
    prepared = attach_images(warm_reply.messages, images or [])
    template_owner = backend.processor if backend.supports_images else backend.tokenizer
    inputs = template_owner.apply_chat_template(
        [prepared] if backend.supports_images else [backend_messages(warm_reply.messages)],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        **({"processor_kwargs": {"add_special_tokens": False}} if backend.supports_images else {}),
    ).to(backend.model.device)
    hf_generation = backend.generation_config(generation)

    def raw_generate():
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            output = backend.model.generate(**inputs, generation_config=hf_generation)
        sync()
        return time.perf_counter() - start, output.shape[1] - inputs["input_ids"].shape[1]

    raw_generate()
    raw, wrapped = [], []
    for rep in range(args.reps):  # ABBA order, so drift (thermal, other load) hits both paths alike
        pair = [raw_generate, therapist_reply] if rep % 2 == 0 else [therapist_reply, raw_generate]
        for step in pair:
            result = step()
            if step is raw_generate:
                raw.append(result)
            else:
                wrapped.append((result[0], result[2]))
    raw_tokens, wrapped_tokens = raw[0][1], wrapped[0][1]
    assert raw_tokens == wrapped_tokens, f"raw generated {raw_tokens} tokens, the therapist {wrapped_tokens}"
    # The minimum is the least noise-sensitive estimate of a fixed cost (as timeit recommends); medians shown too.
    raw_latency, wrapped_latency = min(s for s, _ in raw), min(s for s, _ in wrapped)
    raw_median = statistics.median(s for s, _ in raw)
    wrapped_median = statistics.median(s for s, _ in wrapped)

    # Batched vs sequential replies: B fresh sessions answered in one respond_batch, or one after another.
    sessions = therapist.start_sessions([dict(CLIENT, name=f"Client {i}") for i in range(args.batch_size)])
    therapist.respond_batch(sessions, [statement] * len(sessions), [image] * len(sessions))  # warm-up
    batch_times, sequential_times = [], []
    for _ in range(max(1, args.reps // 3)):
        sessions = therapist.start_sessions([dict(CLIENT, name=f"Client {i}") for i in range(args.batch_size)])
        seconds, batch_replies = timed(
            therapist.respond_batch, sessions, [statement] * len(sessions), [image] * len(sessions)
        )
        batch_times.append(seconds)
        sessions = therapist.start_sessions([dict(CLIENT, name=f"Client {i}") for i in range(args.batch_size)])
        start = time.perf_counter()
        sequential_replies = [session.respond(statement, image=image) for session in sessions]
        sequential_times.append(time.perf_counter() - start)
    assert [r.text for r in batch_replies] == [r.text for r in sequential_replies], "greedy batch != sequential"
    batch_latency, sequential_latency = statistics.median(batch_times), statistics.median(sequential_times)

    device = str(backend.model.device)
    if backend.model.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(backend.model.device)})"
    results = {
        "model": backend.name if args.model else "tiny random LLaVA (training/tiny.py)",
        "device": device,
        "dtype": str(backend.model.dtype),
        "torch_threads": torch.get_num_threads(),
        "max_new_tokens": args.max_new_tokens,
        "reps": args.reps,
        "safety_embeddings": not args.no_safety_embeddings,
        "raw_generate": {
            "latency_s": raw_latency,
            "median_s": raw_median,
            "tokens": raw_tokens,
            "tokens_per_s": raw_tokens / raw_latency,
        },
        "therapist": {
            "latency_s": wrapped_latency,
            "median_s": wrapped_median,
            "tokens": wrapped_tokens,
            "tokens_per_s": wrapped_tokens / wrapped_latency,
        },
        "overhead_ratio": wrapped_latency / raw_latency,
        "overhead_ratio_median": wrapped_median / raw_median,
        "overhead_ms": 1000 * (wrapped_latency - raw_latency),
        "batch": {
            "batch_size": args.batch_size,
            "batched_s": batch_latency,
            "sequential_s": sequential_latency,
            "speedup": sequential_latency / batch_latency,
            "batched_replies_per_s": args.batch_size / batch_latency,
            "sequential_replies_per_s": args.batch_size / sequential_latency,
        },
    }
    print(f"model {results['model']} on {device}, {results['dtype']}, {args.max_new_tokens} new tokens, greedy")
    print(f"  raw model.generate   {1000 * raw_latency:8.1f} ms/reply (median {1000 * raw_median:.1f})"
          f"  {raw_tokens / raw_latency:8.1f} tok/s")  # fmt: skip
    print(f"  MirrorTherapist      {1000 * wrapped_latency:8.1f} ms/reply (median {1000 * wrapped_median:.1f})"
          f"  {wrapped_tokens / wrapped_latency:8.1f} tok/s")  # fmt: skip
    verdict = "OK" if results["overhead_ratio"] <= 1.1 else "ABOVE TARGET"
    print(f"  overhead ratio       {results['overhead_ratio']:.3f} best-of-{args.reps} (target <= 1.1: {verdict}), "
          f"{results['overhead_ratio_median']:.3f} median, {results['overhead_ms']:.1f} ms/reply")  # fmt: skip
    print(f"  batch of {args.batch_size}: batched {batch_latency:.2f} s vs sequential {sequential_latency:.2f} s "
          f"(x{results['batch']['speedup']:.2f})")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def backend_messages(messages):
    from inference.backends.transformers_backend import flatten_text_content

    return flatten_text_content(messages)


if __name__ == "__main__":
    main()
