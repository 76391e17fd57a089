"""Memory and time plan of Týr (`--preset paper`) and SDS for Llama-3.1-8B and 70B on a
v5p-64 TPU slice and on one 8×H100 node, computed by `tyrjax.runs.plan` (no device needed).

    python experiments/memory_plan.py [--calib-windows 256] [--forward-windows N] [--utilisation 0.4]

Prints markdown tables per model: per-device bytes of every array of each phase on each mesh,
the most windows one forward of the search can take, the wall time of each phase; then the
supernet's disk.
"""
import argparse
import dataclasses

from tyrjax.model.config import ModelConfig
from tyrjax.runs.plan import (GB, MeshSpec, SDSRun, TyrRun, largest_forward, phase_peaks, sds_memory, sds_seconds,
                         supernet_disk_bytes, tyr_memory, tyr_seconds)
from tyrjax.tyr.pipeline import PRESETS

# The published config.json of each model (the fields tyrjax reads).
LLAMA_31_COMMON = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000,
    "eos_token_id": 128001,
}
MODELS = {
    "Llama-3.1-8B": ModelConfig.from_hf({**LLAMA_31_COMMON, "hidden_size": 4096, "intermediate_size": 14336,
                                         "num_attention_heads": 32, "num_hidden_layers": 32}),
    "Llama-3.1-70B": ModelConfig.from_hf({**LLAMA_31_COMMON, "hidden_size": 8192, "intermediate_size": 28672,
                                          "num_attention_heads": 64, "num_hidden_layers": 80}),
}
# v5p: 459 TFLOP/s bf16 and 95 GB HBM per chip (Cloud TPU v5p documentation); v5p-64 is 32 chips
# (64 TensorCores, one JAX device per chip) on 8 hosts. fp32 matmuls at precision HIGHEST take
# 6 bf16 passes. H100 SXM: 989 TFLOP/s dense bf16, 67 TFLOP/s fp32, 80 GB (NVIDIA datasheet).
V5P = dict(hbm_bytes=95e9, bf16_flops=459e12, fp32_flops=459e12 / 6)
H100 = dict(hbm_bytes=80e9, bf16_flops=989e12, fp32_flops=67e12)
MESHES = [
    MeshSpec("v5p-64", data=4, tensor=8, **V5P),
    MeshSpec("v5p-64", fsdp=4, tensor=8, **V5P),
    MeshSpec("8×H100", tensor=8, **H100),
    MeshSpec("8×H100", fsdp=8, **H100),
]


def tyr_run(calib_windows: int, utilisation: float) -> TyrRun:
    """TyrRun with the paper preset's search settings."""
    p = PRESETS["paper"]
    return TyrRun(calib_windows=calib_windows, n_levels=p.n_levels, topk=p.topk, candidate_batch=p.candidate_batch,
                  stages=p.stages, generations=p.generations, iterations=p.iterations, utilisation=utilisation)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def gb(x: float) -> str:
    return f"{x / GB:,.2f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def over(peak: float, mesh: MeshSpec) -> str:
    """The peak in GB, bold, marked ✗ when it exceeds the device memory."""
    return f"**{gb(peak)}**" + ("" if peak <= mesh.hbm_bytes else " ✗")


def memory_rows(per_mesh: list[list], meshes: list[MeshSpec]) -> list[list[str]]:
    """One row per array, and after each phase its total per mesh."""
    rows, first = [], per_mesh[0]
    for i, line in enumerate(first):
        rows.append([line.phase, line.item] + [gb(lines[i].bytes) for lines in per_mesh])
        if i + 1 == len(first) or first[i + 1].phase != line.phase:
            peaks = [phase_peaks(lines)[line.phase] for lines in per_mesh]
            rows.append([f"**{line.phase}**", "**total (all alive at once)**"]
                        + [over(peak, mesh) for peak, mesh in zip(peaks, meshes)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-windows", type=int, default=256, help="512-token calibration windows (256 = the last stage's 131072 tokens)")
    ap.add_argument("--forward-windows", type=int, default=None, help="windows per forward of the teacher and the search (default: the most that fit)")
    ap.add_argument("--utilisation", type=float, default=0.4, help="fraction of peak FLOP/s reached (assumed)")
    args = ap.parse_args()

    base = tyr_run(args.calib_windows, args.utilisation)
    names = [f"{m.name} `{m.axes_text}`" for m in MESHES]
    sds = SDSRun(utilisation=args.utilisation)
    for model, cfg in MODELS.items():
        runs = [dataclasses.replace(base, forward_windows=args.forward_windows or max(1, largest_forward(cfg, m, base)))
                for m in MESHES]
        print(f"## {model}: Týr `--preset paper`, GB per device, {args.calib_windows} × 512 calibration tokens\n")
        rows = memory_rows([tyr_memory(cfg, m, r) for m, r in zip(MESHES, runs)], MESHES)
        rows.append(["search", "windows per forward (the most that fit in 90%)"] + [str(r.forward_windows) for r in runs])
        secs = [tyr_seconds(cfg, m, r) for m, r in zip(MESHES, runs)]
        rows += [["time", f"{p} at {args.utilisation:.0%} of peak"] + [duration(s[p]) for s in secs] for p in secs[0]]
        rows.append(["**time**", "**total**"] + [f"**{duration(sum(s.values()))}**" for s in secs])
        print(table(["phase", "array"] + names, rows))
        print(f"\n## {model}: SDS, GB per device, {sds.calib_windows} × {sds.window} calibration tokens, "
              f"{sds.steps} + {sds.adjust_steps} steps\n")
        rows = memory_rows([sds_memory(cfg, m, sds) for m in MESHES], MESHES)
        secs = [sds_seconds(cfg, m, sds) for m in MESHES]
        rows += [["time", p] + [duration(s[p]) for s in secs] for p in secs[0]]
        print(table(["phase", "array"] + names, rows) + "\n")

    print("## Supernet on disk (GB)\n")
    disk_rows = []
    for model, cfg in MODELS.items():
        fp32 = supernet_disk_bytes(cfg, base)
        bf16 = supernet_disk_bytes(cfg, dataclasses.replace(base, level_bytes=2))
        disk_rows.append([model, gb(fp32), gb(base.iterations * fp32), gb(bf16)])
    print(table(["model", "one supernet, fp32 levels", f"all {base.iterations} iterations' supernets (--keep-supernets)",
                 "one supernet, bf16 levels"], disk_rows))


if __name__ == "__main__":
    main()
