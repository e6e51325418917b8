"""The gate's background work: its result, or its error raised in the test that asks for it."""

from __future__ import annotations

import threading

import pytest

from pytest_rolemig.background import Background


def test_result_waits_for_the_work_and_returns_its_value() -> None:
    release = threading.Event()
    work = Background("test-work", lambda: release.wait(5) and 42)
    assert work.running
    release.set()
    assert work.result() == 42
    assert not work.running


def test_error_of_the_work_is_raised_where_the_result_is_asked_for() -> None:
    def fail() -> None:
        raise ValueError("the background work failed")

    work = Background("test-fail", fail)
    with pytest.raises(ValueError, match="the background work failed"):
        work.result()
