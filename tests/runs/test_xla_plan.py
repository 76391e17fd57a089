"""The memory plan from XLA's analysis of the compiled phases, against the analytical count."""
import argparse
import json
import subprocess
import sys
import textwrap

import pytest

from scale_fixtures import device_env
from tyrjax.commands import plan as plan_command
from tyrjax.errors import TyrjaxError
from tyrjax.model.catalog import HF_CONFIGS, builtin_config, resolve_config
from tyrjax.model.config import ModelConfig
from tyrjax.runs.xla_plan import PHASES, PlanSettings, plan
from tyrjax.tyr.fitness import TEACHER_BATCH

# Small enough to compile every phase in seconds, wide enough that its arrays (not XLA's
# bookkeeping) make the figures. float32: CPU runs bf16 matmuls in fp32 copies.
SMALL = ModelConfig(vocab_size=2048, hidden_size=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                    intermediate_size=384)
SETTINGS = PlanSettings(preset="quick", dtype="float32", calib_windows=8, window=64, eval_windows=4, eval_window=128,
                        sds_windows=8, sds_window=64)
TOLERANCE = 0.25


def assert_agree(phases: dict) -> None:
    for name, p in phases.items():
        xla, counted = p["xla_bytes_per_device"], p["plan_bytes_per_device"]
        assert abs(xla / counted - 1) <= TOLERANCE, f"{name}: XLA {xla:.4g} B, analytical {counted:.4g} B"


@pytest.fixture(scope="module")
def small_plan():
    return plan(SMALL, device_memory_bytes=10**9, model_name="small", settings=SETTINGS)


def test_xla_and_analytical_agree_on_one_device(small_plan):
    out = small_plan.to_json()
    assert set(out["phases"]) == set(PHASES)
    assert_agree(out["phases"])
    assert out["fits"] and out["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    # a budget of 1 GB takes the teacher's windows as teacher_topk does, TEACHER_BATCH per call
    assert out["phases"]["teacher"]["chunks"] == {"windows_per_call": TEACHER_BATCH, "calls": 8 // TEACHER_BATCH}
    assert all(p["flops"] > 0 for p in out["phases"].values())


def test_chunk_chosen_for_a_budget_fits_it(small_plan):
    """A budget below the teacher's call takes fewer windows per call, and XLA's figure at that
    size fits the budget; a budget below one window's call is the budget error."""
    whole = small_plan.phases["teacher"].xla_bytes_per_device
    one = plan(SMALL, device_memory_bytes=10**6, settings=SETTINGS, phases=("teacher",)).phases["teacher"]
    assert one.chunks["windows_per_call"] == 1 and not one.fits and "--device-memory" in one.error
    assert one.xla_bytes_per_device < whole
    budget = int((one.xla_bytes_per_device + whole) / 2)
    teacher = plan(SMALL, device_memory_bytes=budget, settings=SETTINGS, phases=("teacher",)).phases["teacher"]
    assert teacher.chunks == {"windows_per_call": 1, "calls": 8}
    assert teacher.xla_bytes_per_device <= budget and teacher.fits and teacher.error is None


def test_xla_and_analytical_agree_with_streamed_blocks():
    import dataclasses

    result = plan(SMALL, device_memory_bytes=10**9, settings=dataclasses.replace(SETTINGS, stream=True),
                  phases=("teacher", "evaluation"))
    assert_agree(result.to_json()["phases"])
    assert "nll_sums_from_hidden" in {s.name for s in result.phases["evaluation"].steps}


MESH_SCRIPT = textwrap.dedent("""
    import json
    from tyrjax.model.config import ModelConfig
    from tyrjax.parallel.sharding import make_mesh
    from tyrjax.runs.xla_plan import PlanSettings, plan
    cfg = ModelConfig(**json.loads({cfg!r}))
    settings = PlanSettings(preset="quick", dtype="float32", calib_windows=8, window=64, eval_windows=4, eval_window=128,
                            sds_windows=8, sds_window=64)
    print(json.dumps(plan(cfg, mesh=make_mesh("data=2,tensor=2"), device_memory_bytes=10**9, settings=settings).to_json()))
""")


def test_xla_and_analytical_agree_on_a_data_tensor_mesh():
    fields = {f: getattr(SMALL, f) for f in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads",
                                             "head_dim", "intermediate_size")}
    env = device_env(4)
    done = subprocess.run([sys.executable, "-c", MESH_SCRIPT.format(cfg=json.dumps(fields))], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
    assert_agree(out["phases"])
    # the levels are split over data: each device compiles its share, one level at a time
    assert out["phases"]["search"]["chunks"]["candidates_per_call"] == 4


def test_aot_plan_at_llama_8b_widths():
    """Llama-3.1-8B's real widths and vocabulary, two blocks: every phase lowers and compiles."""
    cfg = builtin_config("llama-3.1-8b").replace(n_layers=2)
    result = plan(cfg, "paper", None, True, 200 * 10**9, model_name="llama-3.1-8b (2 blocks)",
                  settings=PlanSettings(preset="paper", stream=True, calib_windows=8))
    head = 2 * cfg.vocab_size * cfg.hidden_size * 2  # embedding and LM head, bf16
    teacher, search = result.phases["teacher"], result.phases["search"]
    assert teacher.xla_bytes_per_device > head
    assert {s.name for s in search.steps} == {"parent blocks", "candidate blocks", "candidate_fitness"}
    # the widest pruned layer: down_proj's 14336 inputs, an fp32 Gram of 0.82 GB
    assert result.phases["supernet"].xla_bytes_per_device > 14336**2 * 4
    assert all(p.flops > 0 and p.xla_bytes_per_device > 0 for p in result.phases.values())


def test_budget_below_the_smallest_chunk_fails_naming_the_phase(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SMALL.to_hf()))
    args = argparse.Namespace(model=str(config), preset="quick", mesh=None, stream=False, dtype="float32",
                              calib_windows=8, device_memory=0.001, out=tmp_path / "out", force=False)
    with pytest.raises(TyrjaxError, match=r"teacher needs at least .* GB per device .* --device-memory"):
        plan_command.run(args)
    written = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert written["fits"] is False and written["device_memory_bytes"] == 10**6
    assert not written["phases"]["teacher"]["fits"] and "teacher" in written["phases"]["teacher"]["error"]


def test_built_in_configs_have_the_published_shapes(tmp_path):
    sizes = {name: builtin_config(name).total_params() / 1e9 for name in HF_CONFIGS}
    assert sizes["llama-3.1-8b"] == pytest.approx(8.03, abs=0.01)
    assert sizes["llama-3.1-70b"] == pytest.approx(70.55, abs=0.01)
    assert sizes["llama-3.2-1b"] == pytest.approx(1.24, abs=0.01)
    assert sizes["qwen2.5-7b"] == pytest.approx(7.62, abs=0.01)
    assert builtin_config("Qwen2.5-7B").attention_bias
    (tmp_path / "config.json").write_text(json.dumps(SMALL.to_hf()))
    assert resolve_config(tmp_path) == resolve_config(tmp_path / "config.json") == SMALL
    with pytest.raises(TyrjaxError, match="llama-3.1-8b, llama-3.1-70b, llama-3.2-1b, qwen2.5-7b"):
        resolve_config("llama-9")
