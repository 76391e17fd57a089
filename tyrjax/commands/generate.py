"""`tyrjax generate`: continue a prompt."""
from __future__ import annotations

import argparse

from tyrjax import api
from tyrjax.api.sources import open_model
from tyrjax.commands.common import model_args, model_spec, non_negative_float, non_negative_int, positive_int, probability


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="continue a prompt (greedy or sampled, KV-cached)",
                       description="Decode a continuation of --prompt with a KV cache; works on dense and pruned (compact) models.")
    model_args(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--new-tokens", type=positive_int, default=64,
                   help="tokens to decode after the prompt, fewer when the model ends its text (default %(default)s)")
    # the old spelling, before generate and bench named the decode length alike
    p.add_argument("--max-new-tokens", dest="new_tokens", type=positive_int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 is greedy (default %(default)s)")
    p.add_argument("--top-k", type=non_negative_int, default=0,
                   help="sample among the k most likely tokens, 0 for all (default %(default)s)")
    p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling mass, 1 for off (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    model = open_model(model_spec(args))
    text = api.generate_text(model, args.prompt, args.new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    print(args.prompt + text)
