import numpy as np
import pytest
from recovery_fixtures import write_tokenizer

from tyrjax.data import corpora
from tyrjax.errors import TyrjaxError
from tyrjax.recovery.data import check_disjoint, training_windows


def test_training_text_shares_no_document_with_held_out_text():
    check_disjoint("sotu", ("sotu", "shakespeare"))
    train = set(corpora.corpus_documents("sotu", "calib"))
    assert train.isdisjoint(corpora.corpus_documents("sotu", "eval"))
    with pytest.raises(TyrjaxError, match="--data pydoc: its training split shares 1 document"):
        check_disjoint("pydoc", ("shakespeare", "pydoc"))


def test_training_windows_come_from_the_calibration_split_and_are_seeded(tmp_path):
    write_tokenizer(tmp_path)
    tok = corpora.load_tokenizer(tmp_path)
    a = training_windows(tok, "sotu", 6, 32, seed=0)
    assert a.shape == (6, 32)
    np.testing.assert_array_equal(a, training_windows(tok, "sotu", 6, 32, seed=0))
    assert not np.array_equal(a, training_windows(tok, "sotu", 6, 32, seed=1))
    calib = corpora.corpus_ids(tok, "sotu", "calib")  # equal to tokenize(), tests/data/test_corpora.py
    starts = [np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(calib, 32) == w, axis=1)) for w in a]
    assert all(len(s) for s in starts)
