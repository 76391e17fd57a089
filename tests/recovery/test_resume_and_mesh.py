"""Fine-tuning killed with SIGKILL resumes to the uninterrupted result; on 8 simulated devices it
gives the one-device result."""
import numpy as np
from scale_fixtures import run_check


def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    ckpt = tmp_path / "checkpoints"
    killed = run_check("finetune_check.py", [str(ckpt), "kill", "5"], 1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in ckpt.iterdir() if not p.name.startswith(".")) == ["4"]  # every 2 steps
    done = run_check("finetune_check.py", [str(ckpt), "resume", str(tmp_path / "out.npz")], 1)
    assert done.returncode == 0, done.stderr[-3000:]
    r = np.load(tmp_path / "out.npz")
    assert int(r["resumed/resumed_at"]) == 4 and int(r["fresh/resumed_at"]) == 0
    for name in ("wq", "wk", "wo", "w_up", "w_down", "attn_norm", "final_norm", "losses"):
        np.testing.assert_array_equal(r[f"resumed/{name}"], r[f"fresh/{name}"], err_msg=name)


def test_eight_devices_give_the_one_device_result(tmp_path):
    meshes = ["data=8", "data=2,fsdp=4"]
    done = run_check("finetune_check.py", ["-", "mesh", str(tmp_path / "out.npz"), *meshes], 8)
    assert done.returncode == 0, done.stderr[-3000:]
    r = np.load(tmp_path / "out.npz")
    for method in ("lora", "full"):
        for mesh in meshes:
            for name in ("losses", "wq", "w_down", "attn_norm", "final_norm"):
                np.testing.assert_allclose(r[f"{method}/{mesh}/{name}"], r[f"{method}/one/{name}"], rtol=2e-4, atol=2e-5,
                                           err_msg=f"{method} {mesh} {name}")
            assert ((r[f"{method}/{mesh}/wq"] == 0) == (r[f"{method}/one/wq"] == 0)).all()
