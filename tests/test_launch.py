"""`sngm-train launch --max-restarts N`: its rules with real processes, statuses and signals
(tests/fake_trainer.py does what each attempt's plan says), and the hang watchdog
(`--hang-timeout`) on a clock of the test's own. The same with real training runs of the
JAX engine: tests/test_restarts.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT

FAKE = [sys.executable, os.path.join(ROOT, "tests", "fake_trainer.py")]
LAUNCH = [sys.executable, "-c", "import sys; from keras_sngm_trainers.launch import main; sys.exit(main())"]


def launch(tmp_path, attempts, *flags, timeout=60):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "plan.json").write_text(json.dumps({"attempts": attempts}))
    (run / "config.json").write_text(json.dumps({"updates_per_epoch": 4}))
    return subprocess.run([*LAUNCH, "-np", "2", *flags, *FAKE, "--logdir", str(run)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}), run


def started(run):
    """The argv of each attempt of process 0."""
    return [json.loads((run / f"started-0-{i}").read_text()) for i in range(len(list(run.glob("started-0-*"))))]


def test_a_crash_restarts_everything_with_resume_from_the_newest_checkpoint(tmp_path):
    proc, run = launch(tmp_path, [{"0": "stop", "1": "kill", "checkpoint": [1, 0], "progress": 6},
                                  {"0": 5, "1": "stop", "checkpoint": [1, 3], "progress": 9},
                                  {"0": "ok", "1": "ok"}], "--max-restarts", "3")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sngm-train launch:")]
    assert lines == [  # the process that failed, its status or signal, where the run resumes, the updates lost
        "sngm-train launch: process 1 ended by SIGKILL (status 137); restart 1 of 3, from update 4 (ckpt-00001), "
        "2 updates lost",
        "sngm-train launch: process 0 exited with status 5; restart 2 of 3, from update 7 (ckpt-00001-0000003), "
        "2 updates lost"], proc.stderr
    argv = started(run)
    assert len(argv) == 3 and "--resume" not in argv[0] and argv[1].count("--resume") == argv[2].count("--resume") == 1
    # the stopped peer was ended at once, not after --grace's 30 s
    assert len(list(run.glob("started-1-*"))) == 3


@pytest.mark.parametrize("code, why", [(2, "bad flags or data"), (3, "training diverged"),
                                       (4, "a checkpoint could not be written")])
def test_no_restart_on_a_status_that_cannot_heal(tmp_path, code, why):
    proc, run = launch(tmp_path, [{"0": code, "1": "stop"}, {"0": "ok", "1": "ok"}], "--max-restarts", "3")
    assert proc.returncode == code and len(started(run)) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"sngm-train launch: process 0 exited with status {code}: not restarted ({why}: a restart cannot heal it)")


def test_gives_up_after_n_restarts_with_the_first_failures_status(tmp_path):
    attempts = [{"0": "kill", "1": "stop", "checkpoint": [1, 0]}, {"0": 6, "1": "stop", "checkpoint": [2, 0]},
                {"0": 5, "1": "stop", "checkpoint": [3, 0]}, {"0": "ok", "1": "ok"}]
    proc, run = launch(tmp_path, attempts, "--max-restarts", "2")
    assert proc.returncode == 137 and len(started(run)) == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "sngm-train launch: process 0 exited with status 5: gave up after 2 restarts (--max-restarts 2); the first "
        "failure: process 0 ended by SIGKILL (status 137)")


def test_gives_up_after_two_restarts_in_a_row_without_progress(tmp_path):
    attempts = [{"0": 6, "1": "stop", "checkpoint": [1, 2]}, {"0": 6, "1": "stop"}, {"0": 6, "1": "stop"},
                {"0": "ok", "1": "ok"}]
    proc, run = launch(tmp_path, attempts, "--max-restarts", "10")
    assert proc.returncode == 6 and len(started(run)) == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "sngm-train launch: process 0 exited with status 6: gave up after two restarts in a row that made no "
        "progress (both resumed from ckpt-00001-0000002); the first failure: process 0 exited with status 6")


def test_sigterm_to_the_launcher_is_a_stop_never_a_restart(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({"attempts": [{"0": "stop", "1": "stop"}, {"0": "ok", "1": "ok"}]}))
    proc = subprocess.Popen([*LAUNCH, "-np", "2", "--max-restarts", "3", *FAKE, "--logdir", str(run)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    deadline = time.monotonic() + 30
    while len(list(run.glob("started-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and len(started(run)) == 1, err
    assert "restart" not in err


def test_max_restarts_must_be_a_count():
    proc = subprocess.run([*LAUNCH, "-np", "2", "--max-restarts", "-1", "true"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sngm-train launch: error: --max-restarts must be >= 0. Received: -1"


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_hang_watchdog_allows_compilation_and_evaluation_then_exits_6(tmp_path, capsys):
    """No update for longer than the timeout ends the process with status 6 and a line naming
    the update it was in; before the first update and during evaluation the limit is 3x. The
    watchdog is its own thread (it works while the main thread waits in a collective)."""
    import types

    import keras

    from keras_sngm_trainers import heartbeat

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    clock, exits = _Clock(), []
    beat = heartbeat.Heartbeat(str(tmp_path), types.SimpleNamespace(k=2), 10, clock=clock, exit=exits.append)
    beat.set_model(model)
    beat.on_train_begin()
    assert beat.thread is not None and beat.thread.daemon
    clock.now = 25  # compiling: 3 x 10 s allowed
    assert beat.overdue() is None
    for batch in range(2):  # update 1 ends (k = 2 micro-batches)
        beat.on_train_batch_end(batch)
    assert heartbeat.read_progress(str(tmp_path)) == 1 and heartbeat.update_in_flight() == 2
    clock.now = 34
    assert beat.overdue() is None
    beat.on_test_begin()
    clock.now = 60  # evaluating: 3 x 10 s allowed
    assert beat.overdue() is None
    beat.on_test_end()
    beat.on_train_batch_end(2)
    beat.on_train_batch_end(3)  # update 2 ends at 60
    time.sleep(1.5)
    assert exits == []  # the thread has looked, and found nothing wrong
    clock.now = 71.5
    assert beat.overdue() == (11.5, 10)
    beat.thread.join(timeout=10)
    assert exits == [heartbeat.HANG]
    err = capsys.readouterr().err
    assert "no update has finished for 12 s (--hang-timeout 10), in update 3: a peer process is stopped" in err
    assert "Exiting with status 6" in err
