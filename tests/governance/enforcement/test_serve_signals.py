"""`saegov deploy serve` and stop signals (governance.tracking.deployment_model._StopSignals):
a signal sent to saegov reaches the server's whole process group, saegov returns only once no
process of that group is left (uvicorn's workers outlive the `mlflow` leader), and a signal that
arrives before the server runs still lets `finally` remove the private copy."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from governance.tracking.deployment_model import _Stopped, _StopSignals

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups (POSIX)")

# A leader that dies at once on SIGTERM, with a member of its group that takes a second to stop
# (as uvicorn does), then writes a file.
GROUP = """
import os, signal, subprocess, sys, time
member = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
def stop(*_):
    time.sleep(1.0)
    open(sys.argv[1], "w").write("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[2], "w").write("ready")
while True:
    time.sleep(0.05)
''', sys.argv[1], sys.argv[2]])
time.sleep(60)
"""


def _send_when_ready(ready: Path, signum: int) -> threading.Thread:
    def go() -> None:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_a_stop_signal_reaches_the_group_and_run_waits_for_all_of_it(tmp_path: Path) -> None:
    done, ready = tmp_path / "done", tmp_path / "ready"
    before = signal.getsignal(signal.SIGTERM)
    with _StopSignals() as stop:
        sender = _send_when_ready(ready, signal.SIGTERM)
        rc = stop.run([sys.executable, "-c", GROUP, str(done), str(ready)], dict(os.environ))
    sender.join(5)
    assert rc == 128 + signal.SIGTERM
    assert done.read_text() == "stopped"  # the member finished before run() returned
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_a_stop_signal_before_the_server_runs_unwinds_through_finally(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    # Under nohup (a CI script started so) SIGHUP arrives ignored, and stays ignored (next test).
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with pytest.raises(_Stopped) as info:
            with _StopSignals():
                try:
                    os.kill(os.getpid(), signal.SIGHUP)  # e.g. while the weights are downloaded
                    time.sleep(5)
                finally:
                    copy.rmdir()
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert info.value.signum == signal.SIGHUP and not copy.exists()


def test_an_ignored_signal_stays_ignored(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with _StopSignals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_outside_the_main_thread_nothing_is_installed(tmp_path: Path) -> None:
    out: dict[str, object] = {}

    def run() -> None:
        with _StopSignals() as stop:
            out["active"] = stop.active
            out["rc"] = stop.run([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert out == {"active": False, "rc": 3}
