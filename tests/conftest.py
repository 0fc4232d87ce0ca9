"""Fixtures: the shared service stack, and private stacks for fault tests."""

from __future__ import annotations

import pytest

from .stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture
def new_stack(tmp_path):
    """A private stack for tests that stop or kill parts of it."""
    stacks = []

    def make(**env) -> Stack:
        s = Stack(tmp_path, **env)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.stop()
