"""What `tyrjax eval --tasks paper --limit N` puts through the model, counted without running it.

    python experiments/task_tokens.py [--limit 100]

For each of the papers' tasks: the harness's requests at that limit (lm-evaluation-harness
builds them from the local data), the rows the adapter runs after requests with the same input
share one (`tyrjax.evaluation.harness.shared_inputs`), their tokens, and the tokens once each row
is padded to its length bucket. Prints a markdown table; the total over a model's forward speed
estimates the run's time.
"""
from __future__ import annotations

import argparse
import logging
import os

from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.data.corpora import load_tokenizer
from tyrjax.evaluation import zeroshot
from tyrjax.evaluation.harness import bucket_length, shared_inputs


def task_rows(name: str, limit: int, tokenizer) -> list[tuple[list[int], int]]:
    """(context + continuation tokens, continuation tokens) of each request of one task."""
    data = zeroshot.task_data_dir()
    manager = zeroshot.task_manager([name])
    spec, _ = zeroshot.local_task_spec(name, data, manager)
    rows = []
    for task in manager.load([spec])["tasks"].values():
        task.build_all_requests(limit=zeroshot.task_limit(name, limit, len(zeroshot.mmlu_subjects(data))), rank=0, world_size=1)
        for instance in task.instances:
            context, continuation = instance.args
            whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
            prefix = tokenizer.encode(context, add_special_tokens=False).ids
            rows.append((whole, max(1, len(whole) - len(prefix))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=zeroshot.DEFAULT_LIMIT)
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tokenizer = load_tokenizer(default_model_dir())
    print("| task | requests | rows | tokens | padded tokens |\n|---|---|---|---|---|")
    total = 0
    for name in zeroshot.PAPER_TASKS:
        rows = task_rows(name, args.limit, tokenizer)
        groups = shared_inputs(rows)
        padded = sum(bucket_length(len(inputs), 8192) for inputs, _ in groups)
        total += padded
        print(f"| {name} | {len(rows)} | {len(groups)} | {sum(len(i) for i, _ in groups):,} | {padded:,} |", flush=True)
    print(f"\ntotal padded tokens: {total:,}")


if __name__ == "__main__":
    main()
