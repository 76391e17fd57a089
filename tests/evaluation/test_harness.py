"""The lm-evaluation-harness adapter against transformers' PyTorch model on the same tokens."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from hf_reference import torch_logits
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tokenizers import Tokenizer

from tyrjax.checkpoints.hf import save_hf
from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.harness import (TyrjaxLM, bucket_count, bucket_length, length_batches, pack_rows, rows_per_batch,
                                      shared_inputs, target_logprobs)
from tyrjax.checkpoints.loading import load_model
from tyrjax.model.decoder import compact_from_masked
from tyrjax.evaluation.zeroshot import run_tasks
from tiny_lm import BOS, WORDS, tiny_lm_dir, words

def reference_loglikelihood(model, tok: Tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Summed log-probability of the continuation's tokens after the context's, and whether
    each is the argmax: transformers on the concatenated ids."""
    ctx = tok.encode(context).ids if context else [BOS]
    cont = tok.encode(continuation).ids
    ids = ctx + cont
    logits = torch.as_tensor(torch_logits(model, [ids])[0], dtype=torch.float64)
    logp = torch.log_softmax(logits, dim=-1)
    scored = range(len(ctx), len(ids))
    return (
        float(sum(logp[i - 1, ids[i]] for i in scored)),
        all(int(logits[i - 1].argmax()) == ids[i] for i in scored),
    )


def requests(pairs: list[tuple[str, str]]) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def mixed_pairs(seed: int = 0, n: int = 9) -> list[tuple[str, str]]:
    """Contexts of 0 to 20 words, continuations of 1 to 5: two length buckets and one empty context."""
    rng = np.random.default_rng(seed)
    pairs = [("", " " + words(rng, 3))]
    pairs += [(words(rng, int(rng.integers(1, 21))), " " + words(rng, int(rng.integers(1, 6)))) for _ in range(n - 1)]
    return pairs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    model, tok = tiny_lm_dir(directory)
    return directory, model, tok


def test_bucket_sizes_hold_the_need_with_bounded_waste():
    for n in range(1, 3000):
        size = bucket_length(n, 4096)
        assert n <= size <= max(16, 1.5 * n)
        assert n <= bucket_count(n) < max(16, 2 * n)
    assert bucket_length(5000, 4096) == 4096
    assert len({bucket_length(n, 4096) for n in range(1, 4097)}) <= 20


def test_long_rows_run_in_smaller_batches():
    assert rows_per_batch(1024, 16) == 16 and rows_per_batch(2048, 16) == 4 and rows_per_batch(8192, 16) == 1
    assert rows_per_batch(16, 8) == 8
    lengths = [5000, 3000, 3000, 2000, 1500, 1500, 1500, 1400] + [20] * 20  # sorted longest first
    batches = length_batches(lengths, 16, 8192)
    assert batches == [(0, 1), (1, 1), (2, 1), (3, 4), (7, 7), (14, 16)]
    assert all(size * bucket_length(lengths[start], 8192) ** 2 <= 16 * 1024 ** 2 or size == 1 for start, size in batches)


def test_pack_rows_scores_the_last_tokens_of_each_row():
    tokens, positions, targets, valid = pack_rows([([5, 6, 7, 8], 2), ([9, 10], 1)], pad_id=0, length_cap=64)
    assert tokens.shape == (2, 16) and positions.shape == (2, 8)
    assert tokens[0, :3].tolist() == [5, 6, 7] and tokens[1, :1].tolist() == [9] and tokens[1, 1:].max() == 0
    assert positions[0, :2].tolist() == [1, 2] and targets[0, :2].tolist() == [7, 8]
    assert positions[1, 0] == 0 and targets[1, 0] == 10
    assert valid.sum(axis=1).tolist() == [2, 1] and valid[:, 0].all()


def test_loglikelihoods_equal_transformers(tiny):
    directory, model, tok = tiny
    pairs = mixed_pairs()
    lm = TyrjaxLM(load_model(str(directory)), batch_size=4, progress=False)
    got = lm.loglikelihood(requests(pairs), disable_tqdm=True)
    want = [reference_loglikelihood(model, tok, c, x) for c, x in pairs]
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-4, atol=1e-4)
    assert [g[1] for g in got] == [w[1] for w in want]


def test_requests_with_one_input_share_a_row_and_equal_transformers(tiny):
    directory, model, tok = tiny
    rng = np.random.default_rng(7)
    context = words(rng, 12)
    answers = [" " + words(rng, 1) for _ in range(4)] + [" " + words(rng, 3)]  # four one-token answers, one longer
    pairs = [(context, a) for a in answers] + mixed_pairs(seed=8, n=3)
    rows = [(tok.encode(c).ids + tok.encode(a).ids, len(tok.encode(a).ids)) for c, a in pairs]
    assert sorted(len(members) for _, members in shared_inputs(rows)) == [1, 1, 1, 1, 4]
    lm = TyrjaxLM(load_model(str(directory)), batch_size=2, progress=False)
    got = lm.loglikelihood(requests(pairs), disable_tqdm=True)
    want = [reference_loglikelihood(model, tok, c, x) for c, x in pairs]
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-4, atol=1e-4)
    assert [g[1] for g in got] == [w[1] for w in want]


def test_greedy_flag_is_true_for_the_models_own_argmax(tiny):
    directory, model, tok = tiny
    ids = tok.encode("w5 w9 w12").ids
    for _ in range(3):
        ids.append(int(torch_logits(model, [ids])[0, -1].argmax()))
    context, continuation = " ".join(WORDS[i] for i in ids[:3]), " " + " ".join(WORDS[i] for i in ids[3:])
    lm = TyrjaxLM(load_model(str(directory)), batch_size=4, progress=False)
    assert lm.loglikelihood(requests([(context, continuation)]), disable_tqdm=True)[0][1] is True


def test_batches_of_many_lengths_compile_a_few_times(tiny):
    directory, _, _ = tiny
    lm = TyrjaxLM(load_model(str(directory)), batch_size=4, progress=False)
    rng = np.random.default_rng(1)
    pairs = [(words(rng, n), " " + words(rng, 1)) for n in range(1, 31)]
    before = target_logprobs._cache_size()
    lm.loglikelihood(requests(pairs), disable_tqdm=True)
    assert target_logprobs._cache_size() - before <= 3  # 30 distinct lengths in 16/24/32-token buckets


def test_masked_and_compact_models_equal_transformers_with_pruned_weights(tiny, tmp_path):
    directory, model, tok = tiny
    head_mask = np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], np.float32)  # layer 1 loses a KV head
    ffn_mask = (np.random.default_rng(3).random((3, 48)) < 0.5).astype(np.float32)
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(pruned.model.layers):
            head_cols = torch.as_tensor(np.repeat(head_mask[i], 8), dtype=torch.float32)
            layer.self_attn.o_proj.weight.mul_(head_cols[None, :])
            layer.mlp.down_proj.weight.mul_(torch.as_tensor(ffn_mask[i])[None, :])
    pairs = [(c, x) for c, x in mixed_pairs(seed=2, n=8) if len(c.split()) + len(x.split()) <= 16]
    assert len(pairs) >= 4
    want = [reference_loglikelihood(pruned, tok, c, x)[0] for c, x in pairs]

    dense = load_model(str(directory))
    masked = TyrjaxLM(dense, batch_size=4, head_mask=head_mask, ffn_mask=ffn_mask, progress=False)
    got_masked = [r[0] for r in masked.loglikelihood(requests(pairs), disable_tqdm=True)]
    np.testing.assert_allclose(got_masked, want, rtol=1e-4, atol=1e-4)

    params, cfg = compact_from_masked(dense.params, dense.cfg, head_mask, ffn_mask)
    save_hf(params, cfg, tmp_path / "export", tokenizer_dir=directory)
    exported = load_model(str(tmp_path / "export"))
    assert exported.cfg.layer_heads == (3, 2, 4) and exported.cfg.layer_kv_heads == (2, 1, 2)
    compact = TyrjaxLM(exported, batch_size=4, progress=False)
    got_compact = [r[0] for r in compact.loglikelihood(requests(pairs), disable_tqdm=True)]
    np.testing.assert_allclose(got_compact, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(TyrjaxError, match="compact"):
        TyrjaxLM(exported, head_mask=head_mask)


def test_rolling_loglikelihood_scores_every_token_once(tiny):
    directory, model, tok = tiny
    text = words(np.random.default_rng(4), 40)
    ids = tok.encode(text).ids
    lm = TyrjaxLM(load_model(str(directory)), batch_size=4, max_length=16, progress=False)
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)[0]
    want = 0.0
    windows = list(map(make_disjoint_window, get_rolling_token_windows(ids, BOS, 16, 1)))
    assert sum(len(cont) for _, cont in windows) == len(ids)
    for context, continuation in windows:
        seq = context + continuation
        logp = torch.log_softmax(torch.as_tensor(torch_logits(model, [seq[:-1]])[0], dtype=torch.float64), dim=-1)
        want += float(sum(logp[i - 1, seq[i]] for i in range(len(context), len(seq))))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    whole = TyrjaxLM(load_model(str(directory)), batch_size=4, progress=False)
    full = whole.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)[0]
    assert full == pytest.approx(reference_loglikelihood(model, tok, "", " " + text)[0], rel=1e-4, abs=1e-4)


def test_generate_until_equals_transformers_greedy_and_stops(tiny):
    directory, model, tok = tiny
    prompt = words(np.random.default_rng(6), 70)  # one 64-token prefill chunk, then single tokens
    with torch.no_grad():
        out = model.generate(torch.as_tensor([tok.encode(prompt).ids]), max_new_tokens=8, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    new = [WORDS[i] for i in out[0, 70:].tolist()]
    lm = TyrjaxLM(load_model(str(directory)), progress=False)
    assert lm.generate_until([Instance("generate_until", {}, (prompt, {"until": ["w999"], "max_gen_toks": 8}), 0)],
                             disable_tqdm=True) == [" ".join(new)]
    stop = new[4]
    want = " ".join(new).split(stop)[0]
    got = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 8}), 0)],
                            disable_tqdm=True)
    assert got == [want]


def test_harness_accuracy_equals_accuracy_from_reference_loglikelihoods(tiny, tmp_path):
    directory, model, tok = tiny
    rng = np.random.default_rng(5)
    docs = [
        {"query": words(rng, int(rng.integers(3, 20))), "choices": [words(rng, k) for k in (1, 2, 3)],
         "gold": int(rng.integers(0, 3))}
        for _ in range(12)
    ]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{query}}'\ndoc_to_target: '{{gold}}'\ndoc_to_choice: '{{choices}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    lm = TyrjaxLM(load_model(str(directory)), batch_size=4, progress=False)
    result = run_tasks(lm, ["tiny_mc"], limit=10, include_paths=[tmp_path])["tiny_mc"]
    acc, acc_norm = [], []
    for d in docs[:10]:
        lls = np.array([reference_loglikelihood(model, tok, d["query"], " " + c)[0] for c in d["choices"]])
        acc.append(np.argmax(lls) == d["gold"])
        acc_norm.append(np.argmax(lls / np.array([len(c) for c in d["choices"]])) == d["gold"])
    stderr = np.std(acc, ddof=1) / np.sqrt(len(acc))  # the harness's closed form for a mean
    assert result.pop("items") == [int(a) for a in acc]  # each item's score, in the documents' order
    assert result == {"acc": pytest.approx(np.mean(acc)), "acc_norm": pytest.approx(np.mean(acc_norm)),
                      "stderr": pytest.approx(stderr), "n": 10}
    assert 0 < np.mean(acc) < 1  # a task that tells models apart, not all right or all wrong


def test_adapter_agrees_with_the_harness_hf_model_on_arc_easy(monkeypatch):
    """The dense default model on the first 20 ARC-Easy items (local data): the adapter and the
    harness's own `hf` model (transformers on torch) score the same accuracy within 1 point."""
    from lm_eval.models.huggingface import HFLM

    from tyrjax.checkpoints.assets import default_model_dir

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = default_model_dir()
    ours = run_tasks(TyrjaxLM(load_model(str(directory)), batch_size=16, progress=False), ["arc_easy"], limit=20)
    theirs = run_tasks(HFLM(pretrained=str(directory), device="cpu", dtype="float32", batch_size=16), ["arc_easy"], limit=20)
    assert ours["arc_easy"]["n"] == theirs["arc_easy"]["n"] == 20
    assert abs(ours["arc_easy"]["acc"] - theirs["arc_easy"]["acc"]) <= 0.01
    assert abs(ours["arc_easy"]["acc_norm"] - theirs["arc_easy"]["acc_norm"]) <= 0.01
