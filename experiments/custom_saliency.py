"""Extending Týr: swap in your own saliency and fitness, then run the whole pipeline with them.

    python experiments/custom_saliency.py [--sparsity 0.3 --calib-windows 4 --eval-windows 2]

Registers "abs-taylor" (|W ⊙ G| summed per group, the paper's written form of the first-order
term) and "js" (Jensen-Shannon divergence over the teacher's top-k instead of KL), prunes the
default model with them and with the defaults, and prints both perplexities.
"""
import argparse
import dataclasses

import jax
import jax.numpy as jnp

import tyrjax
from tyrjax.model.decoder import compact_from_masked
from tyrjax.structured.saliency import group_sum, register_saliency
from tyrjax.tyr.fitness import register_fitness
from tyrjax.tyr.pipeline import PRESETS, run_tyr


@register_saliency("abs-taylor")
def abs_taylor(W, W_dense, h_inv, H, group_size):
    return group_sum(jnp.abs(W * (H @ W_dense)).sum(axis=1), group_size)


@register_fitness("js")
def jensen_shannon(student_topk, t_logp):
    s_logp = jax.nn.log_softmax(student_topk, axis=-1)
    m = jnp.log(0.5 * (jnp.exp(t_logp) + jnp.exp(s_logp)))
    return 0.5 * jnp.sum(jnp.exp(t_logp) * (t_logp - m) + jnp.exp(s_logp) * (s_logp - m), axis=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--calib-windows", type=int, default=4)
    ap.add_argument("--eval-windows", type=int, default=2)
    args = ap.parse_args()
    model = tyrjax.load_model()
    calib = tyrjax.calibration_windows(model, calib_windows=args.calib_windows)
    sets = tyrjax.evaluation_sets(model, args.eval_windows)
    base = dataclasses.replace(PRESETS["quick"], iterations=1, generations=2, offspring=4,
                               stages=((4, 512), (2, 1024), (1, 2048)))
    print("| saliency | fitness | ppl shakespeare | ppl pydoc |")
    print("|---|---|---|---|")
    for saliency, fitness in (("tyr", "kl"), ("abs-taylor", "js")):
        tcfg = dataclasses.replace(base, saliency=saliency, fitness=fitness)
        result = run_tyr(model.params, model.cfg, calib, args.sparsity, tcfg)
        params, cfg = compact_from_masked(result.params, model.cfg, result.head_mask, result.ffn_mask)
        ppl = tyrjax.api.perplexity_metrics(tyrjax.Model(params, cfg, model.tokenizer, "pruned"), sets)["ppl"]
        print(f"| {saliency} | {fitness} | {ppl['shakespeare']:.2f} | {ppl['pydoc']:.2f} |")


if __name__ == "__main__":
    main()
