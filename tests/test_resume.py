"""Fault tolerance: a run killed mid-supernet or mid-search resumes to the uninterrupted result,
on one device and on a 4-device mesh (each run is a process killed with SIGKILL)."""
import json

import numpy as np
import pytest

from scale_fixtures import run_check


def _kill(work_dir, mesh: str, mode: str, n: int, n_devices: int) -> None:
    killed = run_check("resume_check.py", [str(work_dir), mesh, mode, str(n)], n_devices)
    assert killed.returncode == -9, killed.stderr[-3000:]


def _finish(work_dir, mesh: str, n_devices: int, out) -> dict[str, np.ndarray]:
    done = run_check("resume_check.py", [str(work_dir), mesh, "finish", str(out)], n_devices)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        return dict(f)


def _assert_same(results: dict[str, np.ndarray]) -> None:
    names = [k.split("/", 1)[1] for k in results if k.startswith("fresh/")]
    for name in names:
        np.testing.assert_array_equal(results[f"resumed/{name}"], results[f"fresh/{name}"], err_msg=name)


def test_killed_search_resumes_to_the_uninterrupted_result(tmp_path):
    work = tmp_path / "work"
    _kill(work, "none", "kill-generation", 1, 1)
    state = json.loads((work / "search_0.json").read_text())
    assert state["generation"] == 2  # killed after two of the three generations were saved
    results = _finish(work, "none", 1, tmp_path / "out.npz")
    assert len(results["fresh/fitness"]) == 3
    _assert_same(results)


@pytest.mark.parametrize("mesh", ["data=2,tensor=2"])
def test_killed_sharded_run_resumes_in_the_supernet_and_in_the_search(tmp_path, mesh):
    work = tmp_path / "work"
    _kill(work, mesh, "kill-block", 0, 4)
    assert json.loads((work / "supernet_0" / "supernet.json").read_text())["completed"] == 1
    assert not (work / "search_0.json").exists()
    _kill(work, mesh, "kill-generation", 0, 4)
    assert json.loads((work / "supernet_0" / "supernet.json").read_text())["completed"] == 2
    assert json.loads((work / "search_0.json").read_text())["generation"] == 1
    _assert_same(_finish(work, mesh, 4, tmp_path / "out.npz"))
