"""Data-parallel training with local gloo processes: against one process, across a change of the
number of processes, and when a process or the launcher is killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from nbtoolkit.errors import DistributedError
from nbtoolkit.simulate import simulate
from nbtoolkit.training import Trainer, load_predictor, read_checkpoint
from nbtoolkit.training.distributed import from_environment, shard_bounds
from nbtoolkit.training.launch import killed_message, root_failure, worker_argv

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import CONFIG, SYSTEM, resume_rank, run_rank, train  # noqa: E402

#: metrics equal by construction: every round of Part 1 evaluates the same global systems, and a
#: minibatch larger than the buffer covers the whole buffer on every rank
EQUAL_KEYS = ("accepted_steps", "retrains", "replay_iterations", "replay_converged", "buffer_size", "pass_rate")
#: seconds the processes of a run may take to end once one of them was killed (they take about one)
EXIT_WITHIN_S = 20


def _assert_same_training(ranks: list[dict], single: Trainer) -> None:
    """``ranks`` (what each rank saved) trained as ``single`` did in one process."""
    for key, value in ranks[0]["params"].items():
        for rank in ranks[1:]:
            assert torch.equal(value, rank["params"][key]), key  # bit-identical across ranks
        assert torch.allclose(value, single.predictor.state_dict()[key], rtol=1e-9, atol=1e-12), key
    for rank in ranks:
        assert rank["total_retrains"] == single.total_retrains
        assert rank["total_accepted"] == single.total_accepted
        for mine, theirs in zip(rank["metrics"], single.result.epoch_metrics, strict=True):  # type: ignore[attr-defined]
            assert {k: mine[k] for k in EQUAL_KEYS} == {k: theirs[k] for k in EQUAL_KEYS}
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)  # the sums run in another order
            assert mine["mean_dt"] == pytest.approx(theirs["mean_dt"], rel=1e-12)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with what each of two ranks trained (``rank<r>.pt``) and their checkpoint ``two.pt``."""
    folder = tmp_path_factory.mktemp("two_ranks")
    mp.start_processes(run_rank, args=(2, str(folder / "init"), str(folder), str(folder / "two.pt")), nprocs=2,
                       start_method="spawn")
    return folder


def test_two_ranks_agree_with_each_other_and_with_one_process(two_ranks: Path) -> None:
    ranks = [torch.load(two_ranks / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = train()
    assert single.total_retrains > 0  # the comparison covers Part 1 retraining
    _assert_same_training(ranks, single)


def test_three_processes_resume_two_and_reshard_the_systems(two_ranks: Path, tmp_path: Path) -> None:
    saved = read_checkpoint(two_ranks / "two.pt")
    assert saved["world_size"] == 2
    epochs = CONFIG["epochs"] + 1
    mp.start_processes(resume_rank, args=(3, str(tmp_path / "init"), str(tmp_path), str(two_ranks / "two.pt"), epochs),
                       nprocs=3, start_method="spawn")
    ranks = [torch.load(tmp_path / f"resumed{r}.pt", weights_only=False) for r in range(3)]
    n = SYSTEM["num_orbits"]
    for r, rank in enumerate(ranks):  # every rank holds its block of the systems, their history windows ...
        got = rank["restored"]
        lo, hi = shard_bounds(n, r, 3)
        assert got["offset"] == lo
        assert torch.equal(got["state"], saved["state"]["position"][lo:hi])
        for mine, key in zip(got["history"], ("position", "velocity", "mask"), strict=True):
            assert torch.equal(mine, saved["history"][key][lo:hi]), key
        systems = got["buffer"]["system"]  # ... the saved replay samples of those systems, oldest first ...
        assert systems.numel() and bool(((systems >= lo) & (systems < hi)).all())
        assert bool((got["buffer"]["order"].diff() > 0).all())
        assert torch.equal(got["rng_state"], torch.Generator().manual_seed(CONFIG["seed"] + r).get_state())
    assert set(ranks[1]["restored"]["buffer"]["system"].tolist()) == {2, 3}  # one system from each old rank
    samples = saved["buffer"]["data"]  # ... and every saved sample is on exactly one rank
    held = {key: torch.cat([rank["restored"]["buffer"][key] for rank in ranks]) for key in samples}
    assert held["order"].numel() == samples["order"].numel()
    for key, value in samples.items():
        assert torch.equal(held[key][held["order"].argsort()], value[samples["order"].argsort()]), key

    single = Trainer.from_checkpoint(two_ranks / "two.pt", epochs=epochs)  # the same epoch in one process
    single.result = single.fit()  # type: ignore[attr-defined]
    _assert_same_training(ranks, single)
    resumed = read_checkpoint(tmp_path / "resumed.pt")
    assert resumed["epoch"] == epochs and resumed["world_size"] == 3 and len(resumed["shards"]) == 3
    load_predictor(tmp_path / "resumed.pt")


def _nbtoolkit(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nbtoolkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nbtoolkit", *args], cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _rank(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), None)


def _running(pid: int) -> bool:
    """Process ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _workers(launcher: subprocess.Popen[str], ready: Callable[[], bool], n: int = 2, timeout: float = 120) -> dict[int, int]:
    """The worker processes of ``launcher`` by rank, once all ``n`` run and ``ready()`` holds."""
    workers: dict[int, int] = {}
    end = time.monotonic() + timeout
    while len(workers) < n or not ready():
        if launcher.poll() is not None:
            pytest.fail(f"the run ended early (status {launcher.returncode}): {launcher.stderr.read()[-2000:]}")  # type: ignore[union-attr]
        if time.monotonic() > end:
            pytest.fail("the workers did not start in time")
        for child in _children(launcher.pid):
            rank = _rank(child)
            if rank is not None:
                workers[rank] = child
        time.sleep(0.01)
    return workers


def _end(launcher: subprocess.Popen[str], workers: dict[int, int]) -> None:
    """Leave nothing behind if a test failed half way."""
    for pid in [launcher.pid, *workers.values()]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    launcher.communicate(timeout=30)  # reap it and close its pipes


#: a run of many short epochs with a checkpoint after each (4 systems, 4 accepted steps each per epoch)
SHORT_EPOCHS = ["train", "--nproc", "2", "--preset", "kepler-batch", "--num-orbits", "4", "--steps-per-epoch", "4",
                "--calibrate-pass-rate", "0", "--checkpoint", "model.pt", "--checkpoint-every", "1"]


def test_a_killed_rank_stops_the_run_and_it_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    launcher = _start([*SHORT_EPOCHS, "--epochs", "30"], tmp_path)
    workers: dict[int, int] = {}
    try:
        workers = _workers(launcher, (tmp_path / "model.pt").exists)
        os.kill(workers[0], signal.SIGKILL)  # the rank that writes the checkpoints, at some point of an epoch
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=120)
        assert time.monotonic() - killed < EXIT_WITHIN_S
    finally:
        _end(launcher, workers)
    assert launcher.returncode == 128 + signal.SIGKILL
    assert err.count(f"training process 0 (pid {workers[0]}) was killed by SIGKILL") == 1, err
    assert "--nproc 2 --resume model.pt" in err
    for pid in [launcher.pid, *workers.values()]:  # every process of the run, and any it started, has exited
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        assert not _running(pid)

    data = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert data["format"] == "nbtoolkit-checkpoint"
    epoch = read_checkpoint(tmp_path / "model.pt")["epoch"]  # layout and checksum
    assert 1 <= epoch < 30  # the kill landed in the middle of the run
    done = _nbtoolkit(["train", "--nproc", "2", "--resume", "model.pt"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("epochs             30/30") == 1  # rank 0 alone reports, with global figures
    assert done.stdout.count("accepted steps     480") == 1  # 30 epochs x 4 systems x 4 steps, none lost or doubled
    final = read_checkpoint(tmp_path / "model.pt")
    assert final["epoch"] == 30 and final["world_size"] == 2 and len(final["shards"]) == 2
    assert final["buffer"]["size"] == 480
    assert not list(tmp_path.glob(".model.pt.*.tmp"))  # a write cut short by the kill left nothing behind
    from nbtoolkit import get_host
    from nbtoolkit.presets import make_preset

    system = make_preset("kepler", eccentricity=0.5)
    traj = simulate(system.state, get_host().integrators.create("leapfrog"), load_predictor(tmp_path / "model.pt"),
                    orbits=1, period=system.period)
    assert traj.summary()["steps"] > 0


def test_two_launchers_with_one_rendezvous_form_one_run_of_two_nodes(tmp_path: Path) -> None:
    """The multi-node path (--nnodes, a c10d rendezvous, no --standalone), with both nodes on this host: two
    launchers of one process each join one run of world size 2, rank 0's node alone reports and writes."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = ["train", "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}", "--preset", "kepler-batch",
            "--num-orbits", "4", "--steps-per-epoch", "4", "--epochs", "2", "--calibrate-pass-rate", "0"]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    launchers = [_start([*node, "--checkpoint", str(tmp_path / name / "model.pt")], tmp_path / name) for name in "ab"]
    try:
        outputs = [launcher.communicate(timeout=180) for launcher in launchers]
    finally:  # a rendezvous that never completes leaves no process behind
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.communicate(timeout=30)
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs
    written = [name for name in "ab" if (tmp_path / name / "model.pt").exists()]
    assert len(written) == 1  # the node that holds rank 0
    assert sum(out.count("epochs             2/2") for out, _ in outputs) == 1
    assert sum(out.count("accepted steps     32") for out, _ in outputs) == 1  # 4 systems x 4 steps x 2 epochs
    final = read_checkpoint(tmp_path / written[0] / "model.pt")
    assert final["world_size"] == 2 and len(final["shards"]) == 2


def test_the_workers_end_with_a_killed_launcher(tmp_path: Path) -> None:
    launcher = _start([*SHORT_EPOCHS, "--epochs", "1000"], tmp_path)
    workers: dict[int, int] = {}
    try:
        workers = _workers(launcher, (tmp_path / "model.pt").exists)  # training, past their start
        launcher.kill()
        launcher.wait(timeout=30)
        end = time.monotonic() + EXIT_WITHIN_S
        while any(_running(pid) for pid in workers.values()) and time.monotonic() < end:
            time.sleep(0.05)
        assert not any(_running(pid) for pid in workers.values())  # no orphan trains on
    finally:
        _end(launcher, workers)


TRAIN = ["train", "--preset", "kepler-batch", "--num-orbits", "8", "--steps-per-epoch", "6", "--calibrate-pass-rate", "0"]


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
    assert "lost the others" not in err and "was killed by" not in err
    assert time.perf_counter() - start < 45
    with pytest.raises(ProcessLookupError):  # no process of the run is left, zombie or not
        os.killpg(proc.pid, 0)
    assert not (tmp_path / "model.pt").exists()


def test_worker_argv_drops_only_the_launcher_flags() -> None:
    argv = ["train", "--nproc", "2", "--nnodes=2", "--rdzv-endpoint", "h:29400", "--epochs", "5", "--checkpoint", "m.pt"]
    assert worker_argv(argv) == ["train", "--epochs", "5", "--checkpoint", "m.pt"]


def test_the_launcher_blames_the_killed_worker_not_those_it_stopped(tmp_path: Path) -> None:
    def failure(exitcode: int, timestamp: int) -> SimpleNamespace:
        return SimpleNamespace(exitcode=exitcode, timestamp=timestamp)

    stopped, killed, lost = failure(-signal.SIGTERM, 10), failure(-signal.SIGKILL, 11), failure(1, 9)
    assert root_failure({0: stopped, 1: killed, 2: lost})[0] == 1
    assert root_failure({0: stopped, 1: lost})[0] == 1  # the one that raised, not the one stopped
    assert root_failure({0: stopped, 1: failure(1, 8), 2: lost})[0] == 1  # the earliest of those
    args = SimpleNamespace(nproc=4, train_checkpoint_path=str(tmp_path / "m.pt"), resume=None)
    assert "No checkpoint had been written" in killed_message(1, 99, "SIGKILL", args)
    (tmp_path / "m.pt").write_bytes(b"")
    assert f"--nproc 4 --resume {tmp_path / 'm.pt'}" in killed_message(1, 99, "SIGKILL", args)


def test_a_rank_that_cannot_join_the_process_group_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside torchrun, WORLD_SIZE > 1 without a rendezvous address fails at once with a message that
    names the missing variable, not a torch traceback (and no rank waits for the others)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DistributedError, match=r"process 0 could not join the gloo process group .*MASTER_ADDR=\(not set\)"):
        from_environment("cpu")
    assert not torch.distributed.is_initialized()
