"""`tyrjax prune` for structured methods on a tiny saved model: outputs, reuse, export, errors."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import torch_logits
from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.cli import main
from tyrjax.model.config import ModelConfig
from tyrjax.checkpoints.export import export_pruned, stock_compatible
from tyrjax.checkpoints.loading import load_model
from tyrjax.model.decoder import compact_from_masked, forward, init_random_params

CFG = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  intermediate_size=128, max_position_embeddings=2048, tie_word_embeddings=True)
FAST = ["--calib-windows", "2", "--eval-windows", "1"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf(init_random_params(CFG, 0, scale=0.2), CFG, path, tokenizer_dir=default_model_dir())
    return path


TYR = ["--method", "tyr", "--sparsity", "0.4", "--iterations", "1", "--generations", "1", "--offspring", "4", *FAST]


@pytest.fixture(scope="module")
def held_tyr_run(tiny_dir, tmp_path_factory):
    """A Týr run with the model in memory: its directory, read by several tests."""
    out = tmp_path_factory.mktemp("held") / "tyr"
    assert main(["prune", "--model", str(tiny_dir), *TYR, "--out", str(out)]) == 0
    return out


def test_tyr_run_directory(held_tyr_run):
    out = held_tyr_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "tyr" and m["sparsity"]["target"] == 0.4
    assert abs(m["sparsity"]["achieved"] - 0.4) <= 0.05 + 1e-6  # half a neuron step: 32 of 128 neurons
    parts = m["sparsity"]["parts"]
    assert set(parts) == {"query_heads", "kv_heads", "neurons", "added_biases"}
    assert m["sparsity"]["achieved"] == pytest.approx(parts["query_heads"] + parts["kv_heads"] + parts["neurons"]
                                                      - parts["added_biases"], abs=2e-6)
    assert set(m["ppl"]) == {"shakespeare", "pydoc"} and all(v > 1 for v in m["ppl"].values())
    assert len(m["per_layer"]["attention"]) == 2 and {"supernet", "search"} <= set(m["wall_s"])
    for f in ("per_layer_sparsity.png", "search_convergence.png", "distribution.json", "search_history.json"):
        assert (out / f).stat().st_size > 0
    assert not list((out / "work").glob("supernet_*"))  # finished work is deleted
    assert (out / "work" / "found_0.npz").exists()  # the small iteration result stays
    pruned = load_model(str(out / "model"))
    assert pruned.cfg.attn_mlp_params() == m["params"]["pruned"]["attn_mlp"]
    assert main(["generate", "--model", str(out / "model"), "--prompt", "Hello", "--new-tokens", "3"]) == 0


def test_streamed_run_gives_the_same_model_and_metrics(tiny_dir, held_tyr_run, tmp_path, capsys):
    assert main(["prune", "--model", str(tiny_dir), *TYR, "--stream", "--out", str(tmp_path / "streamed")]) == 0
    held, streamed = (json.loads((r / "metrics.json").read_text()) for r in (held_tyr_run, tmp_path / "streamed"))
    assert streamed["sparsity"] == held["sparsity"] and streamed["per_layer"] == held["per_layer"]
    assert streamed["params"] == held["params"]
    for corpus in ("shakespeare", "pydoc"):
        assert streamed["ppl"][corpus] == pytest.approx(held["ppl"][corpus], rel=1e-4)
    assert main(["prune", "--model", str(tiny_dir), "--method", "sparsegpt", "--pattern", "2:4", "--stream",
                 "--out", str(tmp_path / "w"), *FAST]) == 2
    assert "--stream: --method sparsegpt needs the model in memory" in capsys.readouterr().err


def test_distribution_file_is_reused(tiny_dir, tmp_path):
    assert main(["prune", "--model", str(tiny_dir), "--method", "uniform", "--sparsity", "0.5", "--out",
                 str(tmp_path / "a"), *FAST]) == 0
    dist = json.loads((tmp_path / "a" / "distribution.json").read_text())
    assert main(["prune", "--model", str(tiny_dir), "--method", "uniform", "--sparsity", "0.5", "--distribution",
                 str(tmp_path / "a" / "distribution.json"), "--out", str(tmp_path / "b"), *FAST]) == 0
    again = json.loads((tmp_path / "b" / "distribution.json").read_text())
    assert again["removed_groups"] == dist["removed_groups"]


def test_bad_sparsity_and_mismatched_distribution(tiny_dir, tmp_path, capsys):
    assert main(["prune", "--model", str(tiny_dir), "--method", "tyr", "--sparsity", "1.5", *FAST]) == 2
    assert "--sparsity 1.5" in capsys.readouterr().err
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps({"removed_groups": [1, 2], "n_layers": 30, "n_heads": 9, "intermediate_size": 1536}))
    assert main(["prune", "--model", str(tiny_dir), "--method", "uniform", "--sparsity", "0.5", "--distribution",
                 str(bad), "--out", str(tmp_path / "x"), *FAST]) == 2
    assert "30 blocks" in capsys.readouterr().err
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_uniform_width_export_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = CFG.replace(vocab_size=70)
    params = init_random_params(cfg, 3, scale=0.2)
    head = np.array([[1, 0, 0, 1], [0, 1, 1, 0]], bool)  # one query head per KV head in every layer
    ffn = np.zeros((2, 128), bool)
    ffn[:, ::2] = True
    cparams, ccfg = compact_from_masked(params, cfg, head, ffn)
    assert stock_compatible(ccfg)
    written = export_pruned(cparams, ccfg, tmp_path, None)
    hf = AutoModelForCausalLM.from_pretrained(written["hf_llama"]).eval()
    tokens = np.arange(9)[None]
    ref = forward(params, cfg, tokens, jnp.asarray(head, jnp.float32), jnp.asarray(ffn, jnp.float32))
    np.testing.assert_allclose(torch_logits(hf, tokens), np.asarray(ref), rtol=1e-4, atol=1e-5)
    uneven = compact_from_masked(params, cfg, np.array([[1, 1, 0, 1], [1, 1, 1, 1]], bool), ffn)[1]
    assert not stock_compatible(uneven)


def supernet_stores(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "work").glob("supernet_*"))


def test_finished_runs_delete_their_supernets_unless_kept(tiny_dir, tmp_path):
    uniform = ["prune", "--model", str(tiny_dir), "--method", "uniform", "--sparsity", "0.5", *FAST]
    assert main([*uniform, "--out", str(tmp_path / "u")]) == 0
    assert supernet_stores(tmp_path / "u") == []
    applied = [*uniform, "--distribution", str(tmp_path / "u" / "distribution.json")]
    assert main([*applied, "--out", str(tmp_path / "d")]) == 0
    assert supernet_stores(tmp_path / "d") == []
    assert main([*uniform, "--keep-supernets", "--out", str(tmp_path / "kept")]) == 0
    assert supernet_stores(tmp_path / "kept") == ["supernet_uniform"]


def test_padded_export_prints_what_loads_where_and_matches_the_compact_model(tiny_dir, tmp_path, capsys):
    out = tmp_path / "u"
    assert main(["prune", "--model", str(tiny_dir), "--method", "uniform", "--sparsity", "0.5", "--export", "hf-padded",
                 "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'model'}: the compact model" in printed and "not in transformers" in printed
    assert f"{out / 'hf_padded'}: a stock checkpoint, each layer padded" in printed
    outputs = json.loads((out / "metrics.json").read_text())["outputs"]
    assert outputs["hf_padded"] == str(out / "hf_padded")
    from transformers import AutoModelForCausalLM

    compact = load_model(str(out / "model"))
    tokens = np.arange(1, 12)[None]
    hf = AutoModelForCausalLM.from_pretrained(out / "hf_padded").eval()
    np.testing.assert_allclose(torch_logits(hf, tokens), np.asarray(forward(compact.params, compact.cfg, tokens)),
                               rtol=1e-4, atol=1e-4)


def test_export_errors_come_before_any_work(tiny_dir, tmp_path, capsys):
    assert main(["prune", "--model", str(tiny_dir), "--method", "flap", "--sparsity", "0.5", "--export", "hf-padded",
                 "--out", str(tmp_path / "f"), *FAST]) == 2
    assert "--export hf-padded: FLAP adds biases" in capsys.readouterr().err
    assert main(["prune", "--model", str(tiny_dir), "--method", "wanda", "--pattern", "2:4", "--export", "hf-padded",
                 "--out", str(tmp_path / "w"), *FAST]) == 2
    assert "--export hf-padded: applies to structured pruning" in capsys.readouterr().err
    assert not (tmp_path / "f").exists() and not (tmp_path / "w").exists()


def printed_table(text: str) -> list[list[str]]:
    """The rows of the results table a prune run prints (header first, without the dashes)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["dense"])
    end = next(i for i, line in enumerate(lines) if line.startswith("sparsity: "))
    return [line.split("  ") for line in lines[start:end] if not set(line.strip()) <= {"-", " "}]


def test_structured_and_unstructured_runs_print_one_table_layout(tiny_dir, tmp_path, capsys):
    tables = {}
    for method, target in (("uniform", ["--sparsity", "0.4"]), ("wanda", ["--pattern", "0.5"])):
        assert main(["prune", "--model", str(tiny_dir), "--method", method, *target, "--out", str(tmp_path / method),
                     *FAST]) == 0
        tables[method] = [[cell.strip() for cell in row if cell.strip()] for row in printed_table(capsys.readouterr().out)]
    assert tables["uniform"][0] == ["dense", "uniform", "change"]
    assert tables["wanda"][0] == ["dense", "wanda 0.5", "change"]
    assert [row[0] for row in tables["uniform"][1:]] == ["ppl shakespeare", "ppl pydoc", "attn+MLP params"]
    assert [row[0] for row in tables["wanda"][1:]] == ["ppl shakespeare", "ppl pydoc", "attn+MLP nonzero"]
    m = json.loads((tmp_path / "wanda" / "metrics.json").read_text())
    nonzero = m["params"]["attn_mlp_nonzero"]
    assert nonzero == pytest.approx(m["params"]["attn_mlp"] * (1 - m["sparsity"]["achieved"]), abs=1)
    assert tables["wanda"][-1][1:3] == [f"{m['params']['attn_mlp']:,}", f"{nonzero:,}"]


def test_a_resumed_run_says_so_in_one_line(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tyr"
    args = ["prune", "--model", str(tiny_dir), *TYR, "--keep-supernets", "--out", str(out)]
    assert main(args) == 0
    assert "resuming" not in capsys.readouterr().out
    assert main(args) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "resuming" in line]
    assert len(said) == 1 and said[0].startswith(f"resuming from {out / 'work'}: reusing ") and "found_0.npz" in said[0]


def test_generate_points_a_run_directory_to_its_model(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_dir), "--method", "magnitude", "--sparsity", "0.4", "--out", str(run),
                 *FAST]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(run), "--prompt", "Hello", "--new-tokens", "2"]) == 2
    assert capsys.readouterr().err.strip() == (f"tyrjax generate: error: --model {run} is a run directory; its model is "
                                               f"{run / 'model'}: pass --model {run / 'model'}")
    assert main(["generate", "--model", str(run / "model"), "--prompt", "Hello", "--new-tokens", "2"]) == 0
    assert capsys.readouterr().err.count("generate") >= 1  # the progress bar of the decoded tokens
