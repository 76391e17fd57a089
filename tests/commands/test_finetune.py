import json

from recovery_fixtures import dense_params, model_dir, sparse_params

from tyrjax.cli import main

SMALL_FLAGS = ["--tokens", "128", "--seq-len", "16", "--train-batch-size", "4", "--topk", "8", "--data", "sotu",
               "--eval-windows", "1", "--eval-data", "shakespeare"]


def test_finetune_command_trains_and_reports_before_and_after(tmp_path, capsys):
    dense = model_dir(tmp_path / "dense", dense_params())
    sparse = model_dir(tmp_path / "sparse", sparse_params(dense_params(), "0.5"), orbax=True)
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(sparse), "--teacher", str(dense), "--rank", "4", "--targets", "q,v,down",
            *SMALL_FLAGS, "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "shakespeare" in printed and "trained 128 tokens in 2 steps" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["finetune"]["targets"] == ["q", "v", "down"] and m["finetune"]["rank"] == 4
    assert m["sparsity"]["zeros_before"] == m["sparsity"]["zeros_after"]
    assert json.loads((out / "command.json").read_text())["settings"]["rank"] == 4
    assert main([*argv[:6], "8", *argv[7:]]) == 2  # --rank 8 against the recorded 4
    assert "other settings (rank)" in capsys.readouterr().err


def test_finetune_command_refuses_unknown_targets_in_one_line(tmp_path, capsys):
    assert main(["finetune", "--model", str(tmp_path), "--targets", "q,attn", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--targets q,attn: attn names no layer" in err
