"""How a run stops: every camera asked to stop before any is waited for, and a second
SIGINT/SIGTERM while stopping exits at once."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from stream import runner
from stream.capture import close_all


class SlowToClose:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def request_stop(self) -> None:
        self.log.append(f"stop {self.name}")

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_every_camera_is_asked_to_stop_before_any_is_waited_for() -> None:
    log: list[str] = []
    close_all([SlowToClose("a", log), SlowToClose("b", log), SlowToClose("c", log)])
    assert log == ["stop a", "stop b", "stop c", "close a", "close b", "close c"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_exits_at_once(monkeypatch: pytest.MonkeyPatch, sig: int) -> None:
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)  # instead of ending pytest
    stop = threading.Event()
    before = signal.getsignal(sig)
    with runner.stop_on_signals(stop):
        os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs on the main thread between bytecodes
        assert stop.is_set() and exits == []
        os.kill(os.getpid(), sig)
        while not exits and time.monotonic() < deadline:
            time.sleep(0.01)
    assert exits == [130]
    assert signal.getsignal(sig) is before  # restored
