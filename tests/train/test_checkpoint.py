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


def test_only_a_save_that_finished_is_a_checkpoint(tmp_path):
    _make(tmp_path, 10)
    (tmp_path / ckpt.tmp_dir_name(20)).mkdir()  # killed while writing
    (tmp_path / ckpt.step_dir_name(30)).mkdir()  # no MANIFEST: never loadable
    assert [r.step for r in ckpt.complete_checkpoints(tmp_path)] == [10]
    removed = ckpt.remove_incomplete(tmp_path)
    assert [line.split()[1] for line in removed] == [str(tmp_path / ".tmp-step_00000020"),
                                                     str(tmp_path / "step_00000030")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000010"]
    assert ckpt.remove_incomplete(tmp_path / "absent") == []


def test_finalize_replaces_a_checkpoint_of_the_same_step(tmp_path):
    _make(tmp_path, 5, {"a.bin": b"old"})
    path = _make(tmp_path, 5, {"a.bin": b"new!"})
    assert (path / "a.bin").read_bytes() == b"new!" and ckpt.verify_checkpoint(path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005"]


def test_export_matches_compares_the_models_and_pipeline_with_the_manifest(tmp_path):
    path = _make(tmp_path / "ckpts", 2, {"models/v/model.safetensors": b"weights", "pipeline.json": b"{}",
                                         "optimizer.bin": b"state"})
    export = tmp_path / "model"
    assert not ckpt.export_matches(path, export)
    (export / "models" / "v").mkdir(parents=True)
    (export / "models" / "v" / "model.safetensors").write_bytes(b"weights")
    (export / "pipeline.json").write_bytes(b"{}")
    assert ckpt.export_matches(path, export)
    (export / "models" / "v" / "model.safetensors").write_bytes(b"weightz")  # same size, other bytes
    assert not ckpt.export_matches(path, export)
