"""Size flags checked against the corpus and the memory before any work: one line naming the
flag and its largest workable value, nothing written."""
import pytest

from tyrjax.api.bounds import (calibration_bytes_per_window, check_calibration_windows, decode_bytes_per_row,
                               evaluation_bytes_per_window, held_bytes, largest_fitting)
from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.checkpoints.loading import load_model
from tyrjax.cli import main
from tyrjax.data import corpora
from tyrjax.errors import TyrjaxError
from tyrjax.model.config import ModelConfig
from tyrjax.model.decoder import init_random_params
from tyrjax.parallel.memory import GB, device_memory_bytes

CFG = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  intermediate_size=128, max_position_embeddings=2048, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf(init_random_params(CFG, 0, scale=0.2), CFG, path, tokenizer_dir=default_model_dir())
    return path


def one_error_line(capsys, command: str, flag: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"tyrjax {command}: error: {flag} "), err
    return err


def test_largest_fitting_is_the_boundary():
    per, budget, resident = calibration_bytes_per_window(CFG, 512), 10**9, 10**7
    largest = largest_fitting(per, budget, resident)
    check_calibration_windows(CFG, largest, 512, budget, resident)
    with pytest.raises(TyrjaxError, match=f"--calib-windows {largest + 1}: .* use --calib-windows {largest} or fewer"):
        check_calibration_windows(CFG, largest + 1, 512, budget, resident)
    assert largest_fitting(per, budget, resident, devices=4) == 4 * largest  # windows split over the data devices
    assert calibration_bytes_per_window(CFG, 512, streams=2) == 2 * per


@pytest.mark.parametrize("command", [["prune", "--method", "wanda", "--pattern", "0.5"], ["sds"]])
def test_calibration_windows_beyond_memory_stop_before_any_work(tiny_dir, tmp_path, capsys, command):
    out = tmp_path / "run"
    assert main([*command, "--model", str(tiny_dir), "--calib-windows", "10000000", "--out", str(out)]) == 2
    err = one_error_line(capsys, command[0], "--calib-windows 10000000:")
    streams = 2 if command[0] == "sds" else 1
    largest = largest_fitting(calibration_bytes_per_window(CFG, 512, streams), device_memory_bytes(),
                              held_bytes(load_model(str(tiny_dir))))
    assert 0 < largest < 10000000 and f"use --calib-windows {largest} or fewer" in err
    assert not out.exists()


def test_structured_calibration_windows_follow_device_memory(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prune", "--model", str(tiny_dir), "--method", "tyr", "--sparsity", "0.5", "--calib-windows", "64",
                 "--device-memory", "0.01", "--out", str(out)]) == 2
    err = one_error_line(capsys, "prune", "--calib-windows 64:")
    largest = largest_fitting(calibration_bytes_per_window(CFG, 512), int(0.01 * GB), held_bytes(load_model(str(tiny_dir))))
    assert f"use --calib-windows {largest} or fewer, or a larger --device-memory" in err
    assert not out.exists()


def test_evaluation_windows_beyond_the_corpus(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--model", str(tiny_dir), "--eval-data", "pydoc", "--eval-windows", "100000",
                 "--out", str(out)]) == 2
    err = one_error_line(capsys, "eval", "--eval-windows 100000:")
    tokens = corpora.tokenize(load_model(str(tiny_dir)).tokenizer, corpora.corpus_text("pydoc", "eval"))
    assert f"use --eval-windows {len(tokens) // 1024} or fewer" in err
    assert not out.exists()


def test_evaluation_batch_beyond_the_windows_and_the_memory(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--model", str(tiny_dir), "--eval-windows", "2", "--batch-size", "3", "--out", str(out)]) == 2
    assert "use --batch-size 2 or fewer" in one_error_line(capsys, "eval", "--batch-size 3:")
    many = 10**6
    assert main(["eval", "--model", str(tiny_dir), "--eval-windows", str(many), "--batch-size", str(many),
                 "--out", str(out)]) == 2
    largest = largest_fitting(evaluation_bytes_per_window(CFG, 1024), device_memory_bytes(),
                              held_bytes(load_model(str(tiny_dir))))
    assert f"use --batch-size {largest} or fewer" in one_error_line(capsys, "eval", f"--batch-size {many}:")
    assert not out.exists()


def test_bench_batch_beyond_the_memory(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["bench", "--model", str(tiny_dir), "--against", "none", "--batch-sizes", "1,1000000",
                 "--prompt-lengths", "16", "--new-tokens", "4", "--out", str(out)]) == 2
    model = load_model(str(tiny_dir))
    largest = largest_fitting(decode_bytes_per_row(CFG, 16, 4, 4), device_memory_bytes(), held_bytes(model))
    assert f"use --batch-sizes {largest} or fewer" in one_error_line(capsys, "bench", "--batch-sizes 1000000:")
    assert not out.exists()


def test_generation_beyond_the_positions_names_the_largest_length(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "Hello", "--new-tokens", "5000"]) == 2
    err = capsys.readouterr().err
    prompt = len(load_model(str(tiny_dir)).tokenizer.encode("Hello", add_special_tokens=False).ids)
    assert err.count("\n") == 1 and f"ask for at most {2048 - prompt} new tokens (--new-tokens {2048 - prompt})" in err
