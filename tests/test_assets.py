"""Assets: the template and the example head CT are bundled (sha256-checked, no download,
no cache); the published weights come from a pinned URL into the cache, or offline from it."""
import hashlib
import tarfile

import nibabel as nib
import numpy as np
import pytest

from deepbleed_bids import assets
from deepbleed_bids.errors import AssetError


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundled_template_is_the_pinned_file_with_its_license(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPBLEED_HOME", str(tmp_path / "nowhere"))  # no cache involved
    path = assets.fetch_template()
    assert path == assets.DATA / assets.TEMPLATE["path"] and _sha256(path) == assets.TEMPLATE["sha256"]
    img = nib.load(path)
    assert img.shape == (128, 128, 128) and np.allclose(img.header.get_zooms(), 1.5)
    license_ = (assets.DATA / assets.TEMPLATE["license_file"]).read_text()
    assert "Attribution-NonCommercial-NoDerivatives 4.0" in license_ and "msharrock/deepbleed" in license_
    assert assets.TEMPLATE["sha256"] in license_  # says which file, verbatim
    assert not (tmp_path / "nowhere").exists()


def test_example_archive_unpacks_the_pinned_dicom_files(tmp_path):
    folder = assets.unpack_example_ct(tmp_path / "ex" / "ge-head-tilt")
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == sorted(assets.EXAMPLE_CT["members"]) and len(files) == 28
    assert all(_sha256(p) == assets.EXAMPLE_CT["members"][p.name] for p in files)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left
    # a second call finds the same files and leaves them as they are
    before = {p.name: p.stat().st_mtime_ns for p in files}
    assert assets.unpack_example_ct(folder) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    license_ = (assets.DATA / assets.EXAMPLE_CT["license_file"]).read_text()
    assert "BSD 2-Clause License" in license_ and "Copyright (c) 2019, Chris Rorden" in license_
    with tarfile.open(assets.DATA / assets.EXAMPLE_CT["path"]) as tar:  # reproducible packing
        members = tar.getmembers()
    assert [m.name for m in members] == [f"ge-head-tilt/{n}" for n in sorted(assets.EXAMPLE_CT["members"])]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == \
        {(assets._ARCHIVE_MTIME, 0, 0, "", "", 0o644)}


def test_unpack_never_touches_an_existing_other_folder(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(AssetError, match="already exists and does not hold the example"):
        assets.unpack_example_ct(dest)
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_damaged_or_missing_bundled_file_is_refused_with_what_to_do(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "templates/deepbleed").mkdir(parents=True)
    (data / assets.TEMPLATE["path"]).write_bytes(b"not a template")
    monkeypatch.setattr(assets, "DATA", data)
    with pytest.raises(AssetError) as err:
        assets.fetch_template()
    msg = str(err.value)
    assert "is damaged" in msg and assets.TEMPLATE["sha256"] in msg and "--template FILE" in msg
    assert (data / assets.TEMPLATE["path"]).read_bytes() == b"not a template"  # left as it was
    with pytest.raises(AssetError, match="missing from this installation .*reinstall deepbleed-bids"):
        assets.unpack_example_ct(tmp_path / "ex")
    assert not (tmp_path / "ex").exists()


def test_archive_with_a_changed_member_leaves_nothing(tmp_path, monkeypatch):
    """An archive whose own digest was (wrongly) re-pinned still fails on the per-file sha256."""
    src = assets.unpack_example_ct(tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in src.iterdir():
        bad.joinpath(p.name).write_bytes(p.read_bytes())
    data = bytearray(bad.joinpath("14.dcm").read_bytes())
    data[-1] ^= 0xFF  # one pixel
    bad.joinpath("14.dcm").write_bytes(bytes(data))
    archive = tmp_path / "data" / assets.EXAMPLE_CT["path"]
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:xz", preset=1) as tar:
        for name in ("01.dcm", "02.dcm", "14.dcm"):  # two good files, then the changed one
            tar.add(bad / name, f"ge-head-tilt/{name}")
    monkeypatch.setattr(assets, "DATA", tmp_path / "data")
    monkeypatch.setitem(assets.EXAMPLE_CT, "sha256", _sha256(archive))
    with pytest.raises(AssetError, match="14.dcm does not match its pinned sha256"):
        assets.unpack_example_ct(tmp_path / "out" / "ge-head-tilt")
    assert list((tmp_path / "out").iterdir()) == []


def test_example_archive_is_reproducible_from_the_shared_series(data_dir, tmp_path):
    """Packing ../shared's 28 files again gives the very bytes that ship (and are pinned)."""
    out = assets.pack_example_ct(data_dir / "dicom" / "ge-head-tilt", tmp_path / "again.tar.xz")
    assert _sha256(out) == assets.EXAMPLE_CT["sha256"] == _sha256(assets.DATA / assets.EXAMPLE_CT["path"])


def test_template_is_byte_identical_to_the_shared_copy(data_dir):
    shared = data_dir / "templates" / "deepbleed" / "scct_unsmooth_SS_0.01_128x128x128.nii.gz"
    assert (assets.DATA / assets.TEMPLATE["path"]).read_bytes() == shared.read_bytes()


def test_offline_weights_download_says_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPBLEED_HOME", str(tmp_path))
    # an address that refuses at once, like a machine without network
    monkeypatch.setitem(assets.PUBLISHED_WEIGHTS, "url", "http://127.0.0.1:9/mistie_2.zip")
    with pytest.raises(AssetError) as err:
        assets.fetch_published_weights()
    msg = str(err.value)
    assert "could not download the published DeepBleed weights" in msg
    assert str(tmp_path / assets.PUBLISHED_WEIGHTS["path"]) in msg and "--model PATH" in msg
    assert not list(tmp_path.rglob("*.zip"))


def test_corrupt_cached_weights_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPBLEED_HOME", str(tmp_path))
    target = tmp_path / assets.PUBLISHED_WEIGHTS["path"]
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a zip")
    with pytest.raises(AssetError, match="does not match its pinned sha256"):
        assets.fetch_published_weights(sha256="0" * 64)
    assert target.read_bytes() == b"not a zip"  # never deleted behind the user's back


def test_default_home_is_per_user_cache(monkeypatch):
    monkeypatch.delenv("DEEPBLEED_HOME", raising=False)
    assert "deepbleed-bids" in str(assets.home())


def test_only_the_two_bundled_files_are_copies_of_the_shared_data(data_dir):
    """Nothing else from ../shared/data is tracked in the repository (the DICOM are in the archive)."""
    import subprocess

    from deepbleed_bids.testing import _TOP

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=_TOP, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    shared = {_sha256(p): p for p in data_dir.rglob("*") if p.is_file()}
    copies = {name for name in listed.stdout.decode().split("\0")
              if name and (_TOP / name).is_file() and _sha256(_TOP / name) in shared}
    assert copies == {f"deepbleed_bids/data/{assets.TEMPLATE['path']}"}
