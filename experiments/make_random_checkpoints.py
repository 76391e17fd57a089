"""Random checkpoints of the default model's width at several depths, as sharded safetensors.

    python experiments/make_random_checkpoints.py --out /tmp/tyrjax-depth [--layers 4,8,16,32] [--shard-mb 100]

Each OUT/layers-L is a Hugging Face directory (config.json, model-0000i-of-0000n.safetensors,
model.safetensors.index.json, the default model's tokenizer): SmolLM2-135M's shapes (hidden 576,
9 query / 3 KV heads, MLP 1536, vocabulary 49152, tied embeddings) with L blocks of random weights.
The input of experiments/bench_memory_depth.py. A directory already there is kept.
"""
import argparse
from pathlib import Path

from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params


def depth_checkpoint(out: Path, n_layers: int, shard_bytes: int, seed: int) -> Path:
    """Write the default model's config with `n_layers` random blocks to `out`."""
    if (out / "config.json").exists():
        return out
    source = default_model_dir()
    cfg = ModelConfig.from_json_file(source / "config.json").replace(n_layers=n_layers)
    return save_hf(init_random_params(cfg, seed), cfg, out, tokenizer_dir=source, max_shard_bytes=shard_bytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory that receives layers-L for each depth")
    ap.add_argument("--layers", default="4,8,16,32", help="comma-separated depths (default 4,8,16,32)")
    ap.add_argument("--shard-mb", type=int, default=100, help="safetensors shard size in MB (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for n in (int(x) for x in args.layers.split(",")):
        path = depth_checkpoint(args.out / f"layers-{n}", n, args.shard_mb * 10**6, args.seed)
        shards = sorted(path.glob("*.safetensors"))
        size = sum(f.stat().st_size for f in shards) / 1e6
        print(f"{path}: {n} layers, {len(shards)} shards, {size:.0f} MB")


if __name__ == "__main__":
    main()
