"""Forward throughput (tokens/s) of tyrjax against transformers' PyTorch model, same CPU, one run.

    python experiments/bench_forward.py [--batch 1 --lengths 256,1024 --repeats 3]

Both run the embedded default in fp32 on the same token batch; compilation and a warm-up
call are excluded; the median of --repeats timed calls is reported, and the ratio.
"""
import argparse

import jax
import numpy as np
import torch

import tyrjax
from tyrjax.model.decoder import forward_jit
from tyrjax.evaluation.speed import median_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--lengths", default="256,1024")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    model = tyrjax.load_model()
    hf = AutoModelForCausalLM.from_pretrained(str(model.directory), dtype=torch.float32).eval()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print("| batch | length | tyrjax tok/s | torch eager tok/s | ratio |")
    print("|---|---|---|---|---|")
    for length in (int(x) for x in args.lengths.split(",")):
        tokens = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (args.batch, length)).astype(np.int32)
        ours = median_seconds(lambda: forward_jit(model.params, model.cfg, tokens).block_until_ready(), args.repeats)
        ids = torch.as_tensor(tokens, dtype=torch.long)
        with torch.inference_mode():
            ref = median_seconds(lambda: hf(ids).logits, args.repeats)
        n = args.batch * length
        print(f"| {args.batch} | {length} | {n / ours:.0f} | {n / ref:.0f} | {ref / ours:.2f}x |")


if __name__ == "__main__":
    main()
