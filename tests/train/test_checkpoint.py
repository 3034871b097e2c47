from mmflow.train import checkpoint as ckpt


def _make(root, step, files=None):
    tmp = root / ckpt.tmp_dir_name(step)
    tmp.mkdir(parents=True)
    for name, data in (files or {"a.bin": b"abc", "sub/b.bin": b"xyz"}).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    return ckpt.finalize(tmp, root, step)


def test_finalize_writes_a_manifest_that_verifies(tmp_path):
    path = _make(tmp_path, 5)
    assert path.name == "step_00000005" and not list(tmp_path.glob(".tmp-*"))
    assert ckpt.verify_checkpoint(path) is None


def test_verify_names_what_is_wrong(tmp_path):
    path = _make(tmp_path, 1)
    (path / "sub" / "b.bin").write_bytes(b"xyZ")
    assert "sub/b.bin is corrupt" in ckpt.verify_checkpoint(path)
    assert ckpt.verify_checkpoint(path, hashes=False) is None  # same size: only the hash sees it
    (path / "a.bin").write_bytes(b"a")
    assert "a.bin has 1 bytes, expected 3" in ckpt.verify_checkpoint(path)
    (path / "a.bin").unlink()
    assert "missing file a.bin" in ckpt.verify_checkpoint(path)
    (path / ckpt.MANIFEST).unlink()
    assert "no MANIFEST.json" in ckpt.verify_checkpoint(path)


def test_list_and_prune_keep_the_newest_good_ones(tmp_path):
    for step in (10, 20, 30, 40):
        _make(tmp_path, step)
    (tmp_path / ckpt.tmp_dir_name(50)).mkdir()  # a save that was killed
    assert [r.step for r in ckpt.list_checkpoints(tmp_path)] == [40, 30, 20, 10]
    ckpt.prune(tmp_path, keep=2)
    assert [r.step for r in ckpt.list_checkpoints(tmp_path)] == [40, 30]
    assert not list(tmp_path.glob(".tmp-*"))
