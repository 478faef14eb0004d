"""Data-parallel training with two local gloo processes, against one process on the same systems."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from nbtoolkit.simulate import simulate
from nbtoolkit.training import load_predictor, read_checkpoint
from nbtoolkit.training.launch import worker_argv

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import run_rank, train  # noqa: E402

#: metrics equal by construction: every round of Part 1 evaluates the same global systems, and a
#: minibatch larger than the buffer covers the whole buffer on every rank
EQUAL_KEYS = ("accepted_steps", "retrains", "replay_iterations", "replay_converged", "buffer_size", "pass_rate")


def test_two_ranks_agree_with_each_other_and_with_one_process(tmp_path: Path) -> None:
    mp.start_processes(run_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = train()
    assert single.total_retrains > 0  # the comparison covers Part 1 retraining
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key  # bit-identical across ranks
        assert torch.allclose(value, single.predictor.state_dict()[key], rtol=1e-9, atol=1e-12), key
    for rank in ranks:
        assert rank["total_retrains"] == single.total_retrains
        assert rank["total_accepted"] == single.total_accepted
        for mine, theirs in zip(rank["metrics"], single.result.epoch_metrics, strict=True):
            assert {k: mine[k] for k in EQUAL_KEYS} == {k: theirs[k] for k in EQUAL_KEYS}
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)  # the sums run in another order
            assert mine["mean_dt"] == pytest.approx(theirs["mean_dt"], rel=1e-12)


def _nbtoolkit(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nbtoolkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


TRAIN = ["train", "--preset", "kepler-batch", "--num-orbits", "8", "--steps-per-epoch", "6", "--calibrate-pass-rate", "0"]


def test_nproc_trains_a_checkpoint_that_loads_flies_and_resumes(tmp_path: Path) -> None:
    done = _nbtoolkit([*TRAIN, "--nproc", "2", "--epochs", "1", "--checkpoint", "model.pt"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("accepted steps     48") == 1  # rank 0 alone reports, with global figures
    data = read_checkpoint(tmp_path / "model.pt")
    assert data["world_size"] == 2 and len(data["shards"]) == 2
    assert data["state"]["mass"].shape[0] == 8 and data["buffer"]["size"] == 48
    predictor = load_predictor(tmp_path / "model.pt")
    from nbtoolkit import get_host
    from nbtoolkit.presets import make_preset

    system = make_preset("kepler", eccentricity=0.5)
    traj = simulate(system.state, get_host().integrators.create("leapfrog"), predictor, orbits=1, period=system.period)
    assert traj.summary()["steps"] > 0
    again = _nbtoolkit(["train", "--nproc", "2", "--resume", "model.pt", "--epochs", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert read_checkpoint(tmp_path / "model.pt")["epoch"] == 2


def test_a_failing_rank_stops_every_rank_and_reports_once(tmp_path: Path) -> None:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nbtoolkit", *TRAIN, "--nproc", "2", "--epochs", "1",
                             "--energy-threshold", "1e-12",
                             "--E-upper", "1e-13", "--E-lower", "1e-14", "--max-retrain-steps", "2", "--checkpoint", "model.pt"],
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert err.count("failed the energy gate") == 1, err
    assert time.perf_counter() - start < 45
    with pytest.raises(ProcessLookupError):  # no process of the run is left, zombie or not
        os.killpg(proc.pid, 0)
    assert not (tmp_path / "model.pt").exists()


def test_worker_argv_drops_only_the_launcher_flags() -> None:
    argv = ["train", "--nproc", "2", "--nnodes=2", "--rdzv-endpoint", "h:29400", "--epochs", "5", "--checkpoint", "m.pt"]
    assert worker_argv(argv) == ["train", "--epochs", "5", "--checkpoint", "m.pt"]
