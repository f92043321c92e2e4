"""The on-disk cache (steerable_sr.cache): entries are checked against their checksum, and one that
fails (another group's data, altered numbers) is recomputed with one warning, then written again."""
import numpy as np
import pytest

from steerable_sr import cache


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache directory, no arrays in memory, and the writes at exit recorded, not registered."""
    monkeypatch.setenv("STEERABLE_SR_CACHE", str(tmp_path))
    writes = []
    monkeypatch.setattr(cache, "_save_at_exit", writes.append)
    cache._in_memory.cache_clear()
    yield writes
    cache._in_memory.cache_clear()


def _reload(name, key, value):
    """``get_or_compute`` in a new process (nothing in memory), with ``value`` as the recomputation."""
    cache._in_memory.cache_clear()
    return cache.get_or_compute(name, key, lambda: value)


def test_a_valid_entry_is_read_back_without_recomputing(fresh_cache):
    cache.save("group-Oh", {"elements": np.arange(48)})
    np.testing.assert_array_equal(_reload("group-Oh", "elements", np.zeros(48)), np.arange(48))
    assert fresh_cache == []


def test_an_entry_of_another_group_is_recomputed_and_rewritten(fresh_cache):
    cache.save("group-O", {"elements": np.arange(24)})
    cache._path("group-O").replace(cache._path("group-Oh"))  # well-formed, but the other group's file
    with pytest.warns(UserWarning, match=r"group-Oh.*1 entry failed the checksum \(elements\); recomputing"):
        value = _reload("group-Oh", "elements", np.arange(48))
    np.testing.assert_array_equal(value, np.arange(48))
    assert fresh_cache == ["group-Oh"]


def test_altered_numbers_of_the_right_shape_are_recomputed(fresh_cache):
    cache.save("group-Oh", {"rep:regular": np.eye(4)})
    path = cache._path("group-Oh")
    with np.load(path) as data:
        stored = dict(data)
    stored["rep:regular"] = 7e7 * np.eye(4)
    np.savez(path, **stored)
    with pytest.warns(UserWarning, match="failed the checksum"):
        value = _reload("group-Oh", "rep:regular", np.eye(4))
    np.testing.assert_array_equal(value, np.eye(4))
