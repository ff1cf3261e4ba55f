"""lib.protocol.run.prefetched: the next batch's images are read while this one is scored."""
import threading
import time

import pytest

from lib.protocol import run

STEP = 0.2   # s: one batch's loading, and one batch's scoring (sleeps: timing holds on a busy machine)


def test_batches_come_in_order_with_their_own_items_and_loading_overlaps_scoring():
    batches = [[f"b{i}s{j}" for j in range(3)] for i in range(5)]
    loader_threads = set()

    def load(batch):
        loader_threads.add(threading.current_thread().name)
        time.sleep(STEP)
        return [item.upper() for item in batch], []

    start = time.perf_counter()
    seen = []
    for batch, (items, bad) in run.prefetched(batches, load):
        time.sleep(STEP)                      # the model scoring this batch
        seen.append((batch, items, bad))
    elapsed = time.perf_counter() - start
    assert seen == [(b, [x.upper() for x in b], []) for b in batches]
    assert loader_threads and threading.current_thread().name not in loader_threads
    # one load, then each batch's scoring overlaps the next one's loading: 6 steps, not 10
    assert elapsed < 8 * STEP, elapsed
    assert list(run.prefetched([], load)) == []


def test_a_failing_load_reaches_the_caller_at_its_batch():
    def load(batch):
        if batch == ["bad"]:
            raise OSError("disk gone")
        return batch, []

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for batch, _ in run.prefetched([["ok"], ["bad"], ["never"]], load):
            got.append(batch)
    assert got == [["ok"]]
