"""Two processes on 127.0.0.1, 2 CPU devices each, form one 4-device mesh: both end with the same
Týr result and perplexity, and only process 0 writes run files."""
import socket
import subprocess
import sys

import numpy as np

from scale_fixtures import HERE, device_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_one_mesh_and_process_zero_writes(tmp_path):
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(HERE / "multihost_check.py"), port, str(i), str(tmp_path)],
                              env=device_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    with np.load(tmp_path / "result0.npz") as a, np.load(tmp_path / "result1.npz") as b:
        assert bool(a["writer"]) and not bool(b["writer"])
        for name in ("genome", "head", "ffn", "wo", "w_down", "ppl"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        assert np.isfinite(a["ppl"]) and a["ppl"] > 1
    assert (tmp_path / "work0" / "supernet_0" / "block_0001.w_down.npy").is_file()
    assert (tmp_path / "work0" / "search_0.json").is_file()
    assert (tmp_path / "run0" / "metrics.json").is_file() and (tmp_path / "run0" / "command.json").is_file()
    assert not (tmp_path / "work1").exists() and not (tmp_path / "run1").exists()
