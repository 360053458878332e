"""Print one efficiency table for every registered patch model: params, GMACs, latency, throughput, peak memory.

Each model runs in its own subprocess, so peak memory is that model's alone: CUDA max allocated on a GPU, and
on CPU the rise of the process's peak RSS over its level after imports (weights plus the batch-32 pass).
Latency and throughput come from `cmamil.evaluation.speed.measure_speed` (the figures `cmamil evaluate`
reports: eval mode, no grad, float32); MACs from torch.utils.flop_counter (FLOPs / 2).

    python benchmarks/models.py --device cpu --threads 1 --repeats 4 --model-option s4d:patch_size=4
    python benchmarks/models.py --device cuda --models deit_small,mscvit_t,s4d
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import yaml


def parse_model_options(items: list[str]) -> dict[str, dict[str, object]]:
    """'s4d:patch_size=4' items → {'s4d': {'patch_size': 4}} (values read as YAML scalars)."""
    options: dict[str, dict[str, object]] = {}
    for item in items:
        name, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        if not (name and key and value):
            raise SystemExit(f"--model-option must look like NAME:KEY=VALUE, got '{item}'")
        options.setdefault(name, {})[key] = yaml.safe_load(value)
    return options


def measure(name: str, args: argparse.Namespace, options: dict[str, object]) -> dict[str, object]:
    """Build `name` and measure it (runs inside the worker subprocess)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cmamil import registry
    from cmamil.environment import peak_memory_mb
    from cmamil.models import count_macs, count_parameters, create_model
    from cmamil.evaluation.speed import measure_speed

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    registry.models.load(name)  # import the plugin, timm and the FLOP counter before the memory baseline
    with FlopCounterMode(display=False):
        torch.ones(2, 2) @ torch.ones(2, 2)
    baseline = peak_memory_mb(device) if device.type == "cpu" else 0.0
    if args.input_size:
        options = {"img_size": args.input_size, **options}
    torch.manual_seed(0)
    model = create_model(name, num_classes=args.num_classes, **options).to(device).eval()
    size = tuple(model.data_config.input_size)
    macs = count_macs(model)
    speed = measure_speed(model, torch.randn(*size), batch_size=args.batch, device=device, repeats=args.repeats)
    return {
        "model": name,
        "options": options,
        "input": "×".join(str(v) for v in size),
        "params_m": count_parameters(model) / 1e6,
        "gmacs": macs / 1e9,
        "latency_ms": speed["latency_ms_per_image"],
        "throughput": speed["throughput_images_per_s"],
        "memory_mib": peak_memory_mb(device) - baseline,
    }


def run_worker(name: str, argv: list[str]) -> dict[str, object]:
    """Measure one model in a fresh interpreter; a failure becomes a row with the error."""
    command = [sys.executable, __file__, *argv, "--worker", name]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": name, "error": reason}
    return json.loads(lines[-1])


def format_table(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    """Markdown table of the measured rows."""
    memory = "peak CUDA alloc (MiB)" if args.device == "cuda" else "peak RSS rise (MiB)"
    header = (
        f"| model | options | input | params (M) | GMACs | latency b1 (ms) | throughput b{args.batch} (img/s) "
        f"| {memory} |"
    )
    lines = [header, "|" + "---|" * 8]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: {row['error']} | | | | | | |")
            continue
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "defaults"
        lines.append(
            f"| {row['model']} | {options} | {row['input']} | {row['params_m']:.2f} | {row['gmacs']:.2f} | "
            f"{row['latency_ms']:.1f} | {row['throughput']:.1f} | {row['memory_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run")
    parser.add_argument("--models", default="", help="comma-separated model names (default: every registered one)")
    parser.add_argument("--input-size", type=int, default=0, help="input side passed as img_size (0: model default)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (1000: published counts)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed batch-1 calls (median); batch calls: max(3, repeats // 4)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--model-option", action="append", default=[], help="NAME:KEY=VALUE option for one model, repeatable"
    )
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = parse_model_options(args.model_option)
    if args.worker:
        print(json.dumps(measure(args.worker, args, options.get(args.worker, {}))))
        return

    from cmamil import registry

    names = [n for n in args.models.split(",") if n] or registry.models.names()
    rows = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(run_worker(name, sys.argv[1:]))
    print(format_table(rows, args))


if __name__ == "__main__":
    main()
