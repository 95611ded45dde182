"""The agents' exit barrier on a real TCPStore: the store's host does not leave under the others."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from datetime import timedelta
from unittest.mock import patch

import pytest

import torch.distributed as dist

from agent.exit_barrier import barrier_between_agents
from helpers.polling import wait_until


def test_the_last_agent_waits_until_the_others_have_seen_the_barrier_complete():
    host = dist.TCPStore("127.0.0.1", 0, 2, True, wait_for_workers=False)
    early_store = dist.TCPStore("127.0.0.1", host.port, 2, False, timeout=timedelta(seconds=10))
    outcome: list = []

    def early_agent():
        try:
            # Arrives first and polls slowly: the window in which a host that left at once
            # would take the store away before this agent saw the barrier complete.
            barrier_between_agents(early_store, 2, "barrier", barrier_timeout=30, poll_interval=0.5)
            outcome.append("passed")
        except Exception as e:  # pragma: no cover - the failure being tested for
            outcome.append(e)

    t = threading.Thread(target=early_agent)
    t.start()
    wait_until(lambda: host.add("barrier/num_members", 0) == 1, 10, "the early agent to arrive")
    barrier_between_agents(host, 2, "barrier", barrier_timeout=30)
    del host  # the host agent exits: its store goes with it
    gc.collect()
    t.join(30)
    assert outcome == ["passed"]


def test_a_missing_agent_still_times_the_barrier_out():
    store = dist.TCPStore("127.0.0.1", 0, 1, True)
    with pytest.raises(dist.DistStoreError, match="0.2"):  # what torch's barrier raises
        barrier_between_agents(store, 2, "lonely", barrier_timeout=0.2, poll_interval=0.05)


def test_the_barrier_goes_through_torchs_store_barrier():
    # Patching torch's barrier (as torch's agent tests do) reaches ours.
    store = dist.TCPStore("127.0.0.1", 0, 1, True)
    with patch("torch.distributed.elastic.utils.store.barrier", side_effect=RuntimeError("x")) as b:
        with pytest.raises(RuntimeError, match="x"):
            barrier_between_agents(store, 1, "patched", barrier_timeout=5)
    b.assert_called_once()
    assert b.call_args.kwargs["world_size"] == 1 and b.call_args.kwargs["key_prefix"] == "patched"


def test_a_termination_signal_ends_the_wait_at_once():
    # store.wait would block in C++ until the timeout; the polls let the handler run.
    store = dist.TCPStore("127.0.0.1", 0, 1, True)

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(Stop):
            barrier_between_agents(store, 2, "stopped", barrier_timeout=120)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 60  # not the barrier's 120 s


def test_an_agent_that_never_counts_itself_out_costs_the_departure_timeout_only():
    # e.g. torch's own agent in the same job: it knows the arrival keys, not the departure key.
    store = dist.TCPStore("127.0.0.1", 0, 1, True)
    store.add("mixed/num_members", 1)  # the other agent arrived and will never count itself out
    barrier_between_agents(store, 2, "mixed", barrier_timeout=5, departure_timeout=0.2)
    assert store.add("mixed/num_departed", 0) == 1
