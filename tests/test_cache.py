"""The content-keyed cache: keys from contents, atomic writes, records that decide every hit."""
from __future__ import annotations

import json
import math
import stat

import numpy as np
import pytest

from neuroseg_lite.cache import Cache, StaleCacheWarning, array_digest, atomic_write, content_key


def test_keys_follow_contents_not_names_or_order():
    a = np.arange(6, dtype=np.uint16).reshape(1, 2, 3)
    assert array_digest(a) == array_digest(a.copy())
    assert array_digest(a) != array_digest(a.astype(np.int32))  # same values, other dtype
    assert array_digest(a) != array_digest(a.reshape(1, 3, 2))  # same bytes, other shape
    assert array_digest(a, a) != array_digest(a)
    assert content_key({"x": 1, "y": [1.5, "a"]}) == content_key({"y": [1.5, "a"], "x": 1})
    assert content_key({"x": 1}) != content_key({"x": 2})


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    atomic_write(target, lambda tmp: tmp.write_text("old"))

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]  # no temporary left behind


def test_a_hit_needs_the_record_the_key_and_a_readable_file(tmp_path):
    cache = Cache(tmp_path)
    key = content_key({"what": 1})
    assert cache.load("arrays", "data/a", key, ".npy", np.load) is None  # nothing there: silent miss
    path = cache.save("arrays", "data/a", key, ".npy", lambda tmp: np.save(tmp, np.arange(4)), seconds=1.25)
    np.testing.assert_array_equal(cache.load("arrays", "data/a", key, ".npy", np.load), np.arange(4))
    assert cache.seconds("arrays", "data/a", key, ".npy") == 1.25
    assert math.isnan(cache.seconds("arrays", "data/a", "f" * 64, ".npy"))

    record = path.with_name(path.name + ".json")
    stored = json.loads(record.read_text())
    record.write_text(json.dumps({**stored, "key": "e" * 64}))
    with pytest.warns(StaleCacheWarning, match="other inputs"):
        assert cache.load("arrays", "data/a", key, ".npy", np.load) is None
    record.write_text(json.dumps(stored))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(StaleCacheWarning, match="unreadable"):
        assert cache.load("arrays", "data/a", key, ".npy", np.load) is None
    record.unlink()
    with pytest.warns(StaleCacheWarning, match="no readable record"):
        assert cache.load("arrays", "data/a", key, ".npy", np.load) is None


def test_keys_describe_dataclasses_by_their_fields_and_refuse_other_objects():
    from neuroseg_lite.intensity import IntensityNormalization

    assert content_key({"spec": IntensityNormalization()}) == content_key({"spec": IntensityNormalization()})
    assert content_key({"spec": IntensityNormalization()}) != content_key({"spec": IntensityNormalization(low=2)})
    with pytest.raises(TypeError, match="cannot describe"):
        content_key({"model": object()})


def test_atomic_write_gives_a_new_file_the_usual_mode_and_keeps_an_old_files(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("x")  # what an ordinary write gives under this umask (0600 would hide a shared table)
    target = atomic_write(tmp_path / "table.csv", lambda tmp: tmp.write_text("new"))
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    target.chmod(0o640)
    atomic_write(target, lambda tmp: tmp.write_text("newer"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "newer"
