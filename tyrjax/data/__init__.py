"""Text corpora and the token windows cut from them for calibration and evaluation."""

from tyrjax.data.corpora import (
    EVAL_CORPORA,
    calibration_split_windows,
    calibration_windows,
    check_window_length,
    corpus_documents,
    corpus_ids,
    corpus_text,
    eval_windows,
    evaluation_windows,
    load_tokenizer,
    protocol_windows,
    tokenize,
)

__all__ = [
    "EVAL_CORPORA",
    "calibration_split_windows",
    "calibration_windows",
    "check_window_length",
    "corpus_documents",
    "corpus_ids",
    "corpus_text",
    "eval_windows",
    "evaluation_windows",
    "load_tokenizer",
    "protocol_windows",
    "tokenize",
]
