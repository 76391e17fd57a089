"""`tyrjax bench`: the speed sweep's rows and speedups, the dense original a pruned model is
measured against, and the command's outputs and errors, on tiny random models."""
import json
import math

import numpy as np
import pytest

from tyrjax.evaluation.speed import Contender, add_speedups, speed_sweep, speed_table
from tyrjax.checkpoints.hf import save_hf
from tyrjax.cli import main
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.checkpoints.export import export_pruned
from tyrjax.runs.lineage import EMBEDDED_DEFAULT_SOURCE, dense_spec, find_origin
from tyrjax.model.decoder import compact_from_masked, init_random_params

# Widths no other test uses, so the first sweep of a shape is the one that compiles it.
CFG = ModelConfig(vocab_size=71, hidden_size=24, n_layers=2, n_heads=3, n_kv_heads=1, head_dim=8,
                  intermediate_size=40, max_position_embeddings=64)
HEADS = np.array([[1, 0, 1], [0, 1, 0]], bool)
NEURONS = np.arange(40)[None, :] % np.array([[2], [3]]) == 0


def pruned_pair(cfg: ModelConfig = CFG) -> tuple[Contender, Contender]:
    params = init_random_params(cfg, 0, scale=0.2)
    compact, ccfg = compact_from_masked(params, cfg, HEADS, NEURONS)
    return Contender("pruned", compact, ccfg), Contender("dense", params, cfg)


def test_sweep_rows_speedups_and_one_compile_per_shape():
    pruned, dense = pruned_pair()
    rows = speed_sweep(pruned, dense, batch_sizes=[1, 2, 1], prompt_lengths=[7], new_tokens=4, repeats=2)
    assert [(r["model"], r["batch"], r["prompt"]) for r in rows] == [
        ("dense", 1, 7), ("pruned", 1, 7), ("dense", 2, 7), ("pruned", 2, 7)]
    by = {(r["model"], r["batch"]): r for r in rows}
    for batch in (1, 2):
        p, d = by["pruned", batch], by["dense", batch]
        assert p["ttft_speedup"] == d["ttft_s"] / p["ttft_s"]
        assert p["decode_speedup"] == p["decode_tok_s"] / d["decode_tok_s"]
        assert "ttft_speedup" not in d
    for r in rows:
        assert r["new_tokens"] == 4
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("ttft_s", "decode_tok_s"))
        # the prompt and the one-token step, not one compilation per generated token
        assert r["compiles"] == 2
    table = speed_table(rows)
    assert table[0] == ("model", "batch", "prompt", "ttft s", "decode tok/s", "ttft speedup", "decode speedup")
    assert table[2][5] == f"{by['pruned', 1]['ttft_speedup']:.2f}x" and table[1][5] == ""


def test_speedups_pair_rows_of_the_same_shape():
    rows = [
        {"model": "d", "batch": 1, "prompt": 8, "ttft_s": 2.0, "decode_tok_s": 10.0},
        {"model": "d", "batch": 4, "prompt": 8, "ttft_s": 8.0, "decode_tok_s": 30.0},
        {"model": "m", "batch": 4, "prompt": 8, "ttft_s": 2.0, "decode_tok_s": 60.0},
        {"model": "m", "batch": 1, "prompt": 8, "ttft_s": 0.5, "decode_tok_s": 15.0},
    ]
    out = add_speedups(rows, "d")
    assert (out[2]["ttft_speedup"], out[2]["decode_speedup"]) == (4.0, 2.0)
    assert (out[3]["ttft_speedup"], out[3]["decode_speedup"]) == (4.0, 1.5)
    assert "ttft_speedup" not in out[0] and "ttft_speedup" not in rows[2]


def _prune_run(tmp_path, recorded: str, cwd: str | None = None):
    """A run directory as `tyrjax prune` leaves it: RUN/model plus metrics.json recording the dense model."""
    pruned, dense = pruned_pair()
    dense_dir = save_hf(dense.params, dense.cfg, tmp_path / "dense", None)
    run = tmp_path / "run"
    export_pruned(pruned.params, pruned.cfg, run, None)
    (run / "metrics.json").write_text(json.dumps({"model": recorded, "method": "uniform",
                                                  "sparsity": {"target": 0.4, "achieved": 0.42}}))
    if cwd is not None:
        (run / "command.json").write_text(json.dumps({"argv": ["tyrjax", "prune"], "cwd": cwd}))
    return run, dense_dir


def test_origin_is_read_from_the_run_that_wrote_the_model(tmp_path):
    run, dense_dir = _prune_run(tmp_path, "dense", cwd=str(tmp_path))
    origin = find_origin(str(run / "model"))
    assert (origin.run_dir, origin.method, origin.sparsity) == (run, "uniform", 0.42)
    assert dense_spec(origin) == str(tmp_path / "dense")  # relative to the run's working directory
    assert find_origin(str(dense_dir)) is None and find_origin(None) is None
    (run / "metrics.json").write_text(json.dumps({"model": EMBEDDED_DEFAULT_SOURCE, "method": "tyr"}))
    assert dense_spec(find_origin(str(run / "model"))) is None
    (run / "metrics.json").write_text(json.dumps({"model": "gone/dense-dir/x", "method": "tyr"}))
    with pytest.raises(TyrjaxError, match="no longer"):
        dense_spec(find_origin(str(run / "model")))


def test_bench_command_measures_against_the_recorded_dense_model(tmp_path, capsys):
    run, dense_dir = _prune_run(tmp_path, str(tmp_path / "dense"))
    out = tmp_path / "bench"
    assert main(["bench", "--model", str(run / "model"), "--batch-sizes", "1", "--prompt-lengths", "6",
                 "--new-tokens", "3", "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"recorded in {run / 'metrics.json'}" in printed and "decode speedup" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["dense_model"] == str(dense_dir) and m["model"] == str(run / "model")
    assert [r["model"] for r in m["speed"]] == [str(dense_dir), str(run / "model")]
    assert m["params"]["model"]["attn_mlp"] < m["params"]["dense"]["attn_mlp"]
    report = (out / "report.md").read_text()
    assert f"{m['speed'][1]['decode_tok_s']:.1f}" in report and "![Speed against the dense model](speed.png)" in report
    assert (out / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_errors(tmp_path, capsys):
    _, dense = pruned_pair()
    model_dir = save_hf(dense.params, dense.cfg, tmp_path / "dense", None)
    assert main(["bench", "--model", str(model_dir), "--prompt-lengths", "60", "--new-tokens", "8",
                 "--out", str(tmp_path / "a")]) == 2
    assert "60 + --new-tokens 8 = 68 positions" in capsys.readouterr().err
    # no run recorded: the embedded default is the reference, and it is another architecture
    assert main(["bench", "--model", str(model_dir), "--prompt-lengths", "4", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "defaulted to" in err and "--against" in err
    assert main(["bench", "--model", str(model_dir), "--against", str(tmp_path / "nowhere"), "--prompt-lengths", "4",
                 "--out", str(tmp_path / "c")]) == 2
    assert f"--against {tmp_path / 'nowhere'}: no such file or directory" in capsys.readouterr().err
    assert main(["bench", "--batch-sizes", "1,x"]) == 2
    assert "argument --batch-sizes: 'x' is not an integer" in capsys.readouterr().err
    assert main(["bench", "--prompt-lengths", "0"]) == 2
    assert "argument --prompt-lengths: '0' must be a positive integer" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_bench_a_model_alone(tmp_path, capsys):
    _, dense = pruned_pair()
    model_dir = str(save_hf(dense.params, dense.cfg, tmp_path / "dense", None))
    fast = ["--batch-sizes", "1", "--prompt-lengths", "4", "--new-tokens", "2", "--repeats", "1"]
    for against, said in (("none", None), (model_dir, "dense reference: --model is the dense model itself")):
        out = tmp_path / f"bench-{said is None}"
        assert main(["bench", "--model", model_dir, "--against", against, *fast, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert ("dense reference" not in printed) if said is None else (said in printed)
        m = json.loads((out / "metrics.json").read_text())
        assert m["dense_model"] is None and set(m["params"]) == {"model"}
        assert len(m["speed"]) == 1 and "ttft_speedup" not in m["speed"][0]


def test_bench_measures_the_padded_export_beside_the_compact_model(tmp_path, capsys):
    run, dense_dir = _prune_run(tmp_path, str(tmp_path / "dense"))
    pruned, _ = pruned_pair()
    export_pruned(pruned.params, pruned.cfg, run, None, ("hf-padded",))
    out = tmp_path / "bench"
    assert main(["bench", "--model", str(run / "model"), "--batch-sizes", "1", "--prompt-lengths", "6",
                 "--new-tokens", "3", "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    padded = str(run / "hf_padded")
    assert m["padded_model"] == padded and [r["model"] for r in m["speed"]] == [str(dense_dir), str(run / "model"), padded]
    assert all(r["ttft_speedup"] > 0 and r["decode_speedup"] > 0 for r in m["speed"][1:])
    # padded to the widest layer: 2 query heads on the one KV head, 20 neurons
    assert m["params"]["model"]["attn_mlp"] < m["params"]["padded"]["attn_mlp"] < m["params"]["dense"]["attn_mlp"]
    assert padded in printed
