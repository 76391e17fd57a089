"""report.md of one run and `tyrjax report` across runs: the values of metrics.json appear in
the tables, the plots exist and are valid PNGs, bad run directories fail with one message."""
import json

import numpy as np
import pytest
from PIL import Image

from tyrjax.runs import plots
from tyrjax.checkpoints.assets import default_model_dir
from tyrjax.checkpoints.hf import save_hf
from tyrjax.cli import main
from tyrjax.model.config import ModelConfig
from tyrjax.errors import TyrjaxError
from tyrjax.model.decoder import init_random_params
from tyrjax.evaluation.paired import format_accuracy, format_ratio, paired_accuracy, paired_ratio
from tyrjax.runs.report import block_sparsity, write_report

TYR_METRICS = {
    "model": "SmolLM2-135M-Instruct (embedded default)",
    "method": "tyr",
    "preset": "quick",
    "sparsity": {"target": 0.5, "achieved": 0.503125},
    "ppl": {"shakespeare": 71.2345, "pydoc": 20.5},
    "dense_ppl": {"shakespeare": 39.35, "pydoc": 12.88},
    "params": {"dense": {"total": 134515008, "attn_mlp": 106168320}, "pruned": {"total": 81432128, "attn_mlp": 52768000}},
    "per_layer": {"attention": [0.0, 0.333, 0.667], "mlp": [0.25, 0.5, 0.75]},
    "calib_windows": 16,
    "wall_s": {"load": 3.2, "supernet": 612.0, "search": 901.5},
}


def png_size(path) -> tuple[int, int]:
    """Width and height of a file that must decode as a PNG image."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
        return im.size


def make_run(path, metrics: dict, argv: list[str] | None = None):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    if argv is not None:
        (path / "command.json").write_text(json.dumps({"argv": argv, "cwd": str(path.parent), "time": "2026-01-01T00:00:00"}))
    return path


def test_report_of_a_structured_run(tmp_path):
    metrics = {**TYR_METRICS,
               "tasks": {"arc_easy": {"acc": 0.41, "acc_norm": 0.43, "stderr": 0.035, "n": 200},
                         "mmlu": {"acc": 0.25, "stderr": 0.04, "n": 114}},
               "tasks_mean": 0.33, "tasks_split": {"arc_easy": "validation", "mmlu": "test"},
               "dense_tasks": {"arc_easy": {"acc": 0.45, "acc_norm": 0.47, "stderr": 0.035, "n": 200}}, "dense_tasks_mean": 0.45}
    run = make_run(tmp_path / "prune-tyr", metrics, ["/venv/bin/tyrjax", "prune", "--method", "tyr", "--sparsity", "0.5"])
    plots.per_layer_sparsity(run / "per_layer_sparsity.png", [0.0, 0.333, 0.667], [0.25, 0.5, 0.75], "tyr")
    plots.search_convergence(run / "search_convergence.png", [[{"generation": 0, "fitness": 0.9}, {"generation": 1, "fitness": 0.7}]])
    text = write_report(run).read_text()
    assert "tyrjax prune --method tyr --sparsity 0.5" in text
    assert "| shakespeare | 39.350 | 71.234 | +81.0% |" in text and "| pydoc | 12.880 | 20.500 | +59.2% |" in text
    assert "| sparsity achieved | 0.5031 |" in text and "| pruned attention+MLP parameters | 52,768,000 |" in text
    assert "| arc_easy | validation | 200 | 0.4100 ± 0.035 | 0.4300 | 0.4500 ± 0.035 | 91.1 % |" in text
    assert "| mmlu | test | 114 | 0.2500 ± 0.040 |  |  |  |" in text
    assert "| mean acc |  |  | 0.3300 |  | 0.4500 | 73.3 % |" in text
    assert "| search | 901.5 |" in text
    for name in ("per_layer_sparsity.png", "search_convergence.png", "perplexity_vs_dense.png", "accuracy_vs_dense.png"):
        assert f"]({name})" in text
        width, height = png_size(run / name)
        assert width > 200 and height > 100
    assert "speed.png" not in text and not (run / "speed.png").exists()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    cfg = ModelConfig(vocab_size=49152, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                      intermediate_size=64, max_position_embeddings=2048, tie_word_embeddings=True)
    return save_hf(init_random_params(cfg, 1, scale=0.2), cfg, tmp_path_factory.mktemp("tiny") / "model",
                   tokenizer_dir=default_model_dir())


def test_prune_and_eval_commands_write_reports(tiny_dir, tmp_path):
    fast = ["--eval-windows", "1", "--eval-data", "pydoc"]
    run = tmp_path / "magnitude"
    assert main(["prune", "--model", str(tiny_dir), "--method", "magnitude", "--sparsity", "0.5", "--calib-windows", "1",
                 *fast, "--out", str(run)]) == 0
    pruned = json.loads((run / "metrics.json").read_text())
    text = (run / "report.md").read_text()
    assert f"| pydoc | {pruned['dense_ppl']['pydoc']:.3f} | {pruned['ppl']['pydoc']:.3f} |" in text
    assert "![Per-layer sparsity](per_layer_sparsity.png)" in text and png_size(run / "per_layer_sparsity.png")[0] > 200

    # evaluating the pruned model finds the run that wrote it and the dense model that run pruned
    ev = tmp_path / "eval"
    assert main(["eval", "--model", str(run / "model"), *fast, "--out", str(ev)]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["pruned_by"] == {"run": str(run), "method": "magnitude", "sparsity": pruned["sparsity"]["achieved"]}
    assert m["dense_ppl"] == pruned["dense_ppl"] and m["dense_model"] == str(tiny_dir)
    assert m["ppl"]["pydoc"] == pytest.approx(pruned["ppl"]["pydoc"], rel=1e-5)
    for metrics, key, ppl in ((pruned, "window_nll", "ppl"), (pruned, "dense_window_nll", "dense_ppl"), (m, "window_nll", "ppl")):
        assert len(metrics[key]["pydoc"]) == 1  # one window per corpus, its mean NLL is log(ppl)
        assert np.exp(metrics[key]["pydoc"][0]) == pytest.approx(metrics[ppl]["pydoc"], rel=1e-5)
    assert m["window_digest"] == pruned["window_digest"]
    text = (ev / "report.md").read_text()
    assert f"| pydoc | {m['dense_ppl']['pydoc']:.3f} | {m['ppl']['pydoc']:.3f} |" in text
    assert png_size(ev / "perplexity_vs_dense.png")[0] > 200


SPARSEGPT_METRICS = {
    "model": "SmolLM2-135M-Instruct (embedded default)", "method": "sparsegpt", "pattern": "2:4",
    "sparsity": {"target": 0.5, "achieved": 0.5, "per_layer": {"0.wq": 0.5}},
    "ppl": {"shakespeare": 95.5, "pydoc": 30.25}, "dense_ppl": {"shakespeare": 39.35, "pydoc": 12.88},
    "params": {"total": 134515008, "attn_mlp": 106168320},
}


def test_report_command_compares_runs(tmp_path, capsys):
    tyr = make_run(tmp_path / "tyr", TYR_METRICS)
    sgpt = make_run(tmp_path / "sgpt", SPARSEGPT_METRICS)
    ev = make_run(tmp_path / "ev", {"model": "runs/x/model", "ppl": {"shakespeare": 50.0, "pydoc": 15.0},
                                    "params": {"total": 1, "attn_mlp": 4000},
                                    "pruned_by": {"run": "runs/x", "method": "flap", "sparsity": 0.3}})
    plain = make_run(tmp_path / "plain", {"model": "m", "ppl": {"shakespeare": 39.0}, "params": {"total": 1, "attn_mlp": 2}})
    out = tmp_path / "cmp"
    assert main(["report", str(tyr), str(sgpt), str(ev), str(plain), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    text = (out / "comparison.md").read_text()
    assert text.count("| dense (of ") == 1  # both prune runs share one dense reference
    assert f"| dense (of {tyr}) | dense |  | 0 | 39.350 |  | 12.880 |  |  |" in text
    assert f"| {tyr} | tyr | 0.5 | 0.5031 | 71.234 | +81.0% | 20.500 | +59.2% | 52,768,000 |" in text
    # unstructured: the weights kept (nonzero), not the dense shapes' count
    assert f"| {sgpt} | sparsegpt | 2:4 | 0.5000 | 95.500 | +142.7% | 30.250 | +134.9% | 53,084,160 |" in text
    assert f"| {ev} | flap |  | 0.3000 | 50.000 |  | 15.000 |  | 4,000 |" in text
    assert f"| {plain} | model |  | – | 39.000 |  |  |  | 2 |" in text and f"Not plotted (achieved sparsity unknown): {plain}" in text
    assert str(sgpt) in printed and "+142.7%" in printed
    width, height = png_size(out / "ppl_vs_sparsity.png")
    assert width > 400 and height > 100


def test_report_command_compares_task_accuracy_with_the_dense_run(tmp_path):
    tasks = {"arc_easy": {"acc": 0.6, "n": 20}, "mmlu": {"acc": 0.3, "n": 57}}
    dense = make_run(tmp_path / "dense", {"model": "m", "ppl": {"sotu": 20.0}, "tasks": tasks, "tasks_mean": 0.45})
    pruned = make_run(tmp_path / "pruned", {"model": "runs/x/model", "ppl": {"sotu": 30.0},
                                            "pruned_by": {"run": "runs/x", "method": "tyr", "sparsity": 0.5},
                                            "tasks": {"arc_easy": {"acc": 0.45, "n": 20}, "mmlu": {"acc": 0.27, "n": 57}}})
    own = make_run(tmp_path / "own", {**TYR_METRICS, "tasks": {"arc_easy": {"acc": 0.5, "n": 20}, "mmlu": {"acc": 0.2, "n": 57}},
                                      "dense_tasks": {"arc_easy": {"acc": 0.5, "n": 20}, "mmlu": {"acc": 0.5, "n": 57}}})
    out = tmp_path / "cmp"
    assert main(["report", str(dense), str(pruned), str(own), "--out", str(out)]) == 0
    text = (out / "comparison.md").read_text()
    assert "| run | arc_easy | mmlu | mean acc | retained |" in text
    assert f"| {dense} | 0.6000 | 0.3000 | 0.4500 | 100.0 % |" in text
    assert f"| {pruned} | 0.4500 | 0.2700 | 0.3600 | 80.0 % |" in text  # against the first run, a dense evaluation
    assert f"| {own} | 0.5000 | 0.2000 | 0.3500 | 70.0 % |" in text  # against its own dense_tasks


def test_report_command_compares_task_accuracy_item_by_item_with_the_first_run(tmp_path):
    before = make_run(tmp_path / "before", {"model": "m", "ppl": {"sotu": 30.0},
                                            "tasks": {"rte": {"acc": 0.25, "n": 4, "items": [1, 0, 0, 0]},
                                                      "piqa": {"acc": 0.5, "n": 2, "items": [0, 1]}}})
    after = make_run(tmp_path / "after", {"model": "m", "ppl": {"sotu": 25.0},
                                          "tasks": {"rte": {"acc": 0.75, "n": 4, "items": [1, 1, 1, 0]},
                                                    "piqa": {"acc": 0.5, "n": 2, "items": [1, 0]}}})
    out = tmp_path / "cmp"
    assert main(["report", str(before), str(after), "--out", str(out)]) == 0
    text = (out / "comparison.md").read_text()
    assert f"## Against {before}, item by item" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {after} | rte,piqa |"))
    change = paired_accuracy(json.loads((before / "metrics.json").read_text())["tasks"],
                             json.loads((after / "metrics.json").read_text())["tasks"])
    assert change.change == pytest.approx(0.25)  # rte +0.5, piqa 0: the mean over the two tasks
    assert row.split(" | ")[2:4] == ["6", format_accuracy(change)] and row.endswith("| 3 | 1 |")


@pytest.mark.parametrize("content, says", [
    (None, "no metrics.json"),
    ("{not json", "unreadable"),
    ("[1, 2]", "holds a list"),
    (json.dumps({"model": "m", "speed": []}), "no perplexities"),
    (json.dumps({"model": "m", "ppl": {"pydoc": "high"}}), "'ppl' is not a {name: number} map"),
])
def test_report_command_rejects_bad_run_dirs(tmp_path, capsys, content, says):
    good = make_run(tmp_path / "good", TYR_METRICS)
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "metrics.json").write_text(content)
    out = tmp_path / "cmp"
    assert main(["report", str(good), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and says in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["report", str(good), str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing: no such run directory" in capsys.readouterr().err


def test_unstructured_run_gets_a_per_block_sparsity_plot(tmp_path):
    per_linear = {f"{b}.{n}": 0.5 for b in range(2) for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}
    per_linear.update({"1.wq": 0.7, "1.wo": None, "1.w_down": 0.8})
    assert block_sparsity(per_linear, 2) == ([0.5, (0.7 + 0.5 + 0.5 + 1.0) / 4], [0.5, (0.5 + 0.5 + 0.8) / 3])
    metrics = {**SPARSEGPT_METRICS, "method": "sds-sparsegpt", "sparsity": {"target": 0.5, "achieved": 0.52, "per_layer": per_linear},
               "hyperparameters": {"steps": 200, "lr": 0.0001}, "chosen": {"oneshot": 3, "repruned": 4, "adjusted": 7}}
    run = make_run(tmp_path / "sds", metrics)
    text = write_report(run).read_text()
    assert text.startswith("# tyrjax sds: sds\n")
    assert "| hyperparameters | steps=200, lr=0.0001 |" in text and "| chosen | oneshot=3, repruned=4, adjusted=7 |" in text
    assert "| shakespeare | 39.350 | 95.500 | +142.7% |" in text
    assert "![Per-layer sparsity](per_layer_sparsity.png)" in text and png_size(run / "per_layer_sparsity.png")[0] > 200


def test_report_of_a_run_with_malformed_tasks_names_the_file(tmp_path):
    run = make_run(tmp_path / "ev", {"model": "m", "ppl": {"pydoc": 12.0}, "tasks": {"winowhy": {"accuracy": 0.5}}})
    with pytest.raises(TyrjaxError, match=f"{run / 'metrics.json'}: 'tasks' is not a"):
        write_report(run)
    assert sorted(f.name for f in run.iterdir()) == ["metrics.json"]


def with_windows(metrics: dict, losses: dict[str, list[float]], digest: str = "d1") -> dict:
    return {**metrics, "window_nll": losses, "window_digest": {c: digest for c in losses}}


def test_report_compares_runs_window_by_window(tmp_path, capsys):
    base = [4.0, 4.2, 3.9, 4.1]
    better = [x - 0.02 for x in base]  # the same gain on every window: a decided difference
    noisy = [4.05, 4.15, 3.95, 4.05]
    a = make_run(tmp_path / "a", with_windows(TYR_METRICS, {"shakespeare": base, "pydoc": base}))
    b = make_run(tmp_path / "b", with_windows(TYR_METRICS, {"shakespeare": better, "pydoc": noisy}))
    other = make_run(tmp_path / "c", with_windows(TYR_METRICS, {"shakespeare": better}, digest="d2"))
    old = make_run(tmp_path / "old", TYR_METRICS)
    out = tmp_path / "cmp"
    assert main(["report", str(a), str(b), str(other), str(old), "--out", str(out)]) == 0
    text = (out / "comparison.md").read_text()
    noise = paired_ratio(base, noisy)
    assert noise.low < 1 < noise.high
    assert f"| {b} | -1.98 % [-1.98, -1.98] | 4/4 | {format_ratio(noise)} | 2/4 |" in text
    assert f"| {other} | – | – | – | – |" in text  # other windows: not paired
    assert f"| {old} | – | – | – | – |" in text  # no per-window losses recorded
    assert f"against {a}, window by window" in capsys.readouterr().out

    out2 = tmp_path / "cmp2"
    assert main(["report", str(old), str(a), "--out", str(out2)]) == 0
    assert "window by window" not in (out2 / "comparison.md").read_text()


def test_run_report_gives_the_change_against_dense_with_its_interval(tmp_path):
    dense = [3.6, 3.7, 3.5, 3.8]
    pruned = [4.2, 4.4, 4.0, 4.3]
    metrics = {**with_windows(TYR_METRICS, {"shakespeare": pruned}), "dense_window_nll": {"shakespeare": dense}}
    text = write_report(make_run(tmp_path / "run", metrics)).read_text()
    assert f"| shakespeare | 39.350 | 71.234 | +81.0% | {format_ratio(paired_ratio(dense, pruned))} |" in text
    assert "| pydoc | 12.880 | 20.500 | +59.2% |  |" in text


def test_report_counts_the_nonzero_parameters_of_an_unstructured_run(tmp_path):
    recorded = {**SPARSEGPT_METRICS, "params": {**SPARSEGPT_METRICS["params"], "attn_mlp_nonzero": 53_100_000}}
    run = make_run(tmp_path / "sgpt", recorded)
    out = tmp_path / "cmp"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "| 53,100,000 |" in (out / "comparison.md").read_text()
    write_report(run)
    assert "| attention+MLP parameters, nonzero | 53,100,000 |" in (run / "report.md").read_text()


def test_ppl_vs_sparsity_keeps_every_point_inside_the_axes_and_the_legend_off_them():
    points = {"tyr": [(0.3, {"shakespeare": 35.0}), (0.5, {"shakespeare": 70.0})],
              "wanda": [(0.1, {"shakespeare": 5000.0})], "uniform": [(0.5, {"shakespeare": 120.0})]}
    fig = plots.perplexity_vs_sparsity_figure(["shakespeare"], points, [{"shakespeare": 20.0}])
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low < 20.0 / 1.2 and high > 5000.0 * 1.2  # room for the markers at both ends
    left, right = ax.get_xlim()
    assert left < 0.0 and right > 0.5
    assert ax.get_legend() is None and len(fig.legends) == 1  # below the panels, over no point
    plots.plt.close(fig)


def test_search_convergence_counts_whole_generations():
    histories = [[{"generation": g, "fitness": 1.0 / (g + 1)} for g in range(3)],
                 [{"generation": g, "fitness": 0.3 / (g + 1)} for g in range(2)]]
    fig = plots.search_convergence_figure(histories)
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[0, 1, 2], [3, 4]]
    plots.plt.close(fig)
