"""Extending Týr: register your own saliency and fitness, then run the whole pipeline with them.

    python experiments/custom_saliency.py [--sparsity 0.3 --calib-windows 4 --eval-windows 2] [--out runs.json]
    python experiments/custom_saliency.py --tiny [--out runs.json]    # a random 3-block model, under a minute

Registers the saliency "abs-taylor" (|W ⊙ G| summed per group, the paper's written form of the
first-order term) and the fitness "js" (Jensen-Shannon divergence over the teacher's top-k
instead of KL) in tyrjax's registries, prunes the model with them and with the defaults, and
prints each run's perplexities. `--out` writes each run's head and neuron keep masks, with the
model and calibration windows of a `--tiny` run (enough to recompute what it pruned).
"""
import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import tyrjax
from tyrjax.evaluation.perplexity import perplexity
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import compact_from_masked, init_random_params
from tyrjax.structured.saliency import SALIENCIES, group_sum
from tyrjax.tyr.fitness import FITNESSES
from tyrjax.tyr.pipeline import PRESETS, TyrConfig, run_tyr

RUNS = (("tyr", "kl"), ("abs-taylor", "js"))  # (saliency, fitness): the defaults, then the extensions
TINY = ModelConfig(vocab_size=64, hidden_size=32, n_layers=3, n_heads=8, n_kv_heads=2, head_dim=4,
                   intermediate_size=64)
TINY_SEED, TINY_SCALE = 7, 0.2


@SALIENCIES.register("abs-taylor")
def abs_taylor(W, W_dense, h_inv, H, group_size):
    return group_sum(jnp.abs(W * (H @ W_dense)).sum(axis=1), group_size)


@FITNESSES.register("js")
def jensen_shannon(student_topk, t_logp):
    s_logp = jax.nn.log_softmax(student_topk, axis=-1)
    m = jnp.log(0.5 * (jnp.exp(t_logp) + jnp.exp(s_logp)))
    return 0.5 * jnp.sum(jnp.exp(t_logp) * (t_logp - m) + jnp.exp(s_logp) * (s_logp - m), axis=-1)


def default_setup(args: argparse.Namespace) -> tuple[dict, ModelConfig, np.ndarray, dict[str, np.ndarray], TyrConfig]:
    """The default model, its protocol windows and a short search."""
    model = tyrjax.load_model()
    calib = tyrjax.calibration_windows(model, calib_windows=args.calib_windows)
    sets = tyrjax.evaluation_sets(model, args.eval_windows)
    tcfg = dataclasses.replace(PRESETS["quick"], iterations=1, generations=2, offspring=4,
                               stages=((4, 512), (2, 1024), (1, 2048)))
    return model.params, model.cfg, calib, sets, tcfg


def tiny_setup() -> tuple[dict, ModelConfig, np.ndarray, dict[str, np.ndarray], TyrConfig]:
    """A random 3-block model, random token windows and a search sized for it (without the final
    re-prune: one supernet build less)."""
    tokens = np.random.default_rng(TINY_SEED).integers(0, TINY.vocab_size, (12, 32)).astype(np.int32)
    tcfg = TyrConfig(iterations=1, generations=2, offspring=4, stages=((4, 64), (2, 128), (1, 256)), topk=16,
                     candidate_batch=4, mlp_multiple=4, interval=0.125, reprune_final=False)
    return init_random_params(TINY, TINY_SEED, scale=TINY_SCALE), TINY, tokens[:8], {"random": tokens[8:]}, tcfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--calib-windows", type=int, default=4)
    ap.add_argument("--eval-windows", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a random 3-block model instead of the default model")
    ap.add_argument("--out", type=Path, help="write each run's keep masks (and a --tiny run's inputs) as JSON")
    args = ap.parse_args()
    params, cfg, calib, sets, base = tiny_setup() if args.tiny else default_setup(args)
    print("| saliency | fitness | " + " | ".join(f"ppl {name}" for name in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    runs = {}
    for saliency, fitness in RUNS:
        tcfg = dataclasses.replace(base, saliency=saliency, fitness=fitness)
        result = run_tyr(params, cfg, calib, args.sparsity, tcfg, progress=False)
        pruned, pruned_cfg = compact_from_masked(result.params, cfg, result.head_mask, result.ffn_mask)
        ppl = {name: perplexity(pruned, pruned_cfg, windows, progress=False) for name, windows in sets.items()}
        print(f"| {saliency} | {fitness} | " + " | ".join(f"{p:.2f}" for p in ppl.values()) + " |")
        runs[f"{saliency}/{fitness}"] = {"head_mask": result.head_mask.tolist(), "ffn_mask": result.ffn_mask.tolist(),
                                         "ppl": ppl, "search_fitness": result.iterations[-1].fitness}
    if args.out:
        inputs = {"config": cfg.to_hf(), "seed": TINY_SEED, "scale": TINY_SCALE, "calib": calib.tolist()} if args.tiny else {}
        args.out.write_text(json.dumps({"sparsity": args.sparsity, "runs": runs, **inputs}, indent=1))


if __name__ == "__main__":
    main()
