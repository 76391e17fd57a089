"""Training windows for fine-tuning: from the calibration split of a corpus, never from text an
evaluation corpus holds out."""
from __future__ import annotations

from typing import Any

import numpy as np

from tyrjax.data import corpora
from tyrjax.errors import TyrjaxError


def check_disjoint(data: str, eval_corpora: tuple[str, ...]) -> None:
    """Refuse training text (`data`'s calibration split) sharing a document with the held-out split
    of an evaluation corpus: e.g. pydoc, one document that is both its splits."""
    train = set(corpora.corpus_documents(data, "calib"))
    for name in eval_corpora:
        shared = train.intersection(corpora.corpus_documents(name, "eval"))
        if shared:
            raise TyrjaxError(f"--data {data}: its training split shares {len(shared)} document(s) with the held-out "
                              f"evaluation text of {name}, so the perplexity after training would not be held out; "
                              f"train on another corpus (e.g. --data general) or drop {name} from --eval-data")


def training_windows(tokenizer: Any, data: str, n: int, length: int, seed: int = 0) -> np.ndarray:
    """`n` seeded windows of `length` tokens from the calibration split of `data` (n, length)."""
    return corpora.calibration_split_windows(tokenizer, data, n, length, seed)
