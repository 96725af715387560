"""The directory's metrics text: the GC pause watch and the interpreter's GC figures."""

from __future__ import annotations

import gc
import re

from keypost.directory.metrics import GcWatch, Metrics


def test_gc_watch_times_every_collection_until_uninstalled() -> None:
    watch = GcWatch().install()
    try:
        assert watch.install() is watch and gc.callbacks.count(watch._callback) == 1
        gc.collect()
        gc.collect(0)
        assert 0 < watch.longest[2] <= watch.seconds[2]
        assert 0 < watch.longest[0] <= watch.seconds[0]
        before = list(watch.seconds)
        watch._callback("stop", {"generation": 1})  # a stop without its start: no pause
        assert watch.seconds == before
    finally:
        watch.uninstall()
    assert watch._callback not in gc.callbacks
    timed = list(watch.seconds)
    gc.collect()
    assert watch.seconds == timed  # no longer called


def test_metrics_render_gc_lines_with_and_without_a_watch() -> None:
    metrics = Metrics()
    text = metrics.render()
    assert "keypost_gc_pause_seconds" not in text  # nothing timed: nothing claimed
    for generation in range(3):
        assert re.search(rf'python_gc_collections_total{{generation="{generation}"}} \d+', text)
    assert re.search(r"python_gc_frozen_objects \d+", text)
    metrics.gc = GcWatch().install()
    try:
        gc.collect()
        text = metrics.render()
    finally:
        metrics.gc.uninstall()
    total = re.search(r'keypost_gc_pause_seconds_total\{generation="2"\} (\S+)', text)
    longest = re.search(r'keypost_gc_pause_seconds_max\{generation="2"\} (\S+)', text)
    assert total and longest and 0 < float(longest.group(1)) <= float(total.group(1))
    assert text.endswith("\n") and "# TYPE keypost_gc_pause_seconds_total counter" in text


def test_cache_sizes_are_gauges_of_the_controllers_caches() -> None:
    metrics = Metrics()
    assert "keypost_cache_entries" not in metrics.render()  # no controller: nothing claimed
    metrics.cache_sizes = lambda: {"containers": (3, 100), "answers": (1, 25)}
    text = metrics.render()
    assert 'keypost_cache_entries{cache="containers"} 3' in text
    assert 'keypost_cache_entries{cache="answers"} 1' in text
    assert 'keypost_cache_capacity{cache="containers"} 100' in text
    assert "# TYPE keypost_cache_entries gauge" in text
