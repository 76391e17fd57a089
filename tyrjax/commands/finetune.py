"""`tyrjax finetune`: recovery fine-tuning of a pruned model (LoRA or full, distilled from the dense model)."""
from __future__ import annotations

import argparse

from tyrjax import api
from tyrjax.commands.common import (data_args, data_config, device_memory_arg, model_args, model_spec, out_arg, out_dir,
                                    positive_float, positive_int, scale_args)
from tyrjax.evaluation.zeroshot import DEFAULT_LIMIT
from tyrjax.recovery.losses import LOSSES
from tyrjax.recovery.modules import TARGETS
from tyrjax.recovery.train import DEFAULT_LR, METHODS, FinetuneConfig
from tyrjax.runs.rundir import print_table

DEFAULTS = FinetuneConfig()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="recover a pruned model's quality: LoRA or full fine-tuning distilled from the dense model",
                       description="Fine-tunes a pruned model (RUN_DIR/model of tyrjax prune or sds: compact, or sparse in "
                                   "dense shapes, whose zeros stay zeros) on the calibration split of --data, distilling "
                                   "from the dense model; measures perplexity before and after and writes the merged model, "
                                   "OUT/metrics.json and OUT/loss_curve.png. A rerun with the same settings resumes from the "
                                   "last checkpoint.")
    model_args(p)
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--method", choices=METHODS, default=DEFAULTS.method,
                   help="lora: adapters on --targets, merged at the end; full: every block parameter and the final norm "
                        "(default %(default)s); the embedding and LM head stay frozen")
    g.add_argument("--rank", type=positive_int, default=DEFAULTS.rank, help="LoRA rank (default %(default)s)")
    g.add_argument("--alpha", type=positive_float, default=DEFAULTS.alpha,
                   help="LoRA scale numerator: adapters are scaled by alpha/rank (default %(default)s)")
    g.add_argument("--targets", default=",".join(DEFAULTS.targets),
                   help=f"comma-separated projections LoRA adapts, of {','.join(TARGETS)} (default %(default)s)")
    g.add_argument("--teacher", default=None,
                   help="the dense model to distil from, or none (default: the dense model the pruning run started from)")
    g.add_argument("--loss", choices=LOSSES, default=DEFAULTS.loss,
                   help="kd: KL from the teacher at its top-k tokens; lm: next-token loss; kd+lm: their sum (default %(default)s)")
    g.add_argument("--topk", type=positive_int, default=DEFAULTS.topk, help="teacher tokens per position the KL covers (default %(default)s)")
    g.add_argument("--tokens", type=positive_int, default=DEFAULTS.tokens, help="training tokens (default %(default)s)")
    g.add_argument("--seq-len", type=positive_int, default=DEFAULTS.seq_len, help="training window length (default %(default)s)")
    g.add_argument("--train-batch-size", type=positive_int, default=DEFAULTS.batch_size,
                   help="training windows per step (default %(default)s)")
    g.add_argument("--lr", type=positive_float, default=None,
                   help=f"peak AdamW learning rate (default {DEFAULT_LR['lora']:g} for lora, {DEFAULT_LR['full']:g} for full)")
    g.add_argument("--warmup", type=float, default=DEFAULTS.warmup,
                   help="fraction of the steps of linear warmup before the cosine decay (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW weight decay (default %(default)s)")
    g.add_argument("--data", default=DEFAULTS.data,
                   help="training corpus, its calibration split (default %(default)s); it must share no document with an "
                        "evaluation corpus's held-out split")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the training windows and LoRA A (default %(default)s)")
    g.add_argument("--checkpoint-every", type=positive_int, default=DEFAULTS.checkpoint_every,
                   help="steps between orbax checkpoints in OUT/checkpoints (default %(default)s)")
    data_args(p, calibration=False)
    p.set_defaults(eval_data="shakespeare,pydoc,sotu")
    t = p.add_argument_group("zero-shot tasks before and after (lm-evaluation-harness)")
    t.add_argument("--tasks", default=None, help="comma-separated tasks or `paper`, as for tyrjax eval (default: none)")
    t.add_argument("--limit", type=positive_int, default=DEFAULT_LIMIT, help=f"items per task (default {DEFAULT_LIMIT})")
    t.add_argument("--tasks-batch-size", type=positive_int, default=16, help="harness requests per batch (default 16)")
    out_arg(p, "finetune")
    scale_args(p)
    device_memory_arg(p, "the training step and evaluation must fit in")
    p.set_defaults(func=run)


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(
        method=args.method, rank=args.rank, alpha=args.alpha, targets=tuple(t for t in args.targets.split(",") if t),
        loss=args.loss, tokens=args.tokens, seq_len=args.seq_len, batch_size=args.train_batch_size, lr=args.lr,
        warmup=args.warmup, weight_decay=args.weight_decay, topk=args.topk, data=args.data, seed=args.seed,
        checkpoint_every=args.checkpoint_every, device_memory_gb=args.device_memory,
    )


def tasks_config(args: argparse.Namespace) -> api.TasksConfig | None:
    return api.TasksConfig(args.tasks, args.limit, args.tasks_batch_size) if args.tasks else None


def run(args: argparse.Namespace) -> None:
    out = out_dir(args, "finetune")
    result = api.finetune(model_spec(args), finetune_config(args), teacher=args.teacher, data=data_config(args),
                          tasks=tasks_config(args), out=out, force=args.force)
    m = result.metrics
    rows = [("corpus", "before", "after")]
    rows += [(k, f"{m['ppl_before'][k]:.3f}", f"{v:.3f}") for k, v in m["ppl"].items()]
    print_table(rows)
    train = m["train"]
    print(f"trained {train['tokens']:,} tokens in {train['steps']} steps, {train['wall_s']:.1f} s; final loss "
          f"{train['final_loss']:.4f}; zeros {m['sparsity']['zeros_before']:,} before, {m['sparsity']['zeros_after']:,} after")
    print(f"wrote {out / 'metrics.json'}")
