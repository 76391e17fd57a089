"""Perplexity of the dense default model: tyrjax against transformers on the same windows.

    python experiments/ppl_vs_transformers.py [--eval-windows 16]

Prints a table (corpus, tyrjax, transformers, relative difference).
"""
import argparse

import numpy as np
import torch

import tyrjax
from tyrjax.evaluation.perplexity import perplexity


def transformers_perplexity(hf, windows: np.ndarray) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            ids = torch.as_tensor(w[None], dtype=torch.long)
            loss = hf(ids, labels=ids).loss.item()
            nll += loss * (len(w) - 1)
            count += len(w) - 1
    return float(np.exp(nll / count))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--eval-windows", type=int, default=16)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    model = tyrjax.load_model()
    hf = AutoModelForCausalLM.from_pretrained(str(model.directory), dtype=torch.float32).eval()
    sets = tyrjax.evaluation_sets(model, args.eval_windows)
    rows = []
    for name, windows in sets.items():
        ours = perplexity(model.params, model.cfg, windows)
        ref = transformers_perplexity(hf, windows)
        rows.append((name, len(windows), ours, ref, ours / ref - 1))
    print("| corpus | windows | tyrjax ppl | transformers ppl | rel. diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:+.2e} |")


if __name__ == "__main__":
    main()
