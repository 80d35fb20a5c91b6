"""Assets come from a pinned URL with a sha256, or from a pre-populated cache offline."""
import pytest

from deepbleed_bids import assets
from deepbleed_bids.errors import AssetError
from deepbleed_bids.model.weights import sha256_file


def test_prepopulated_cache_serves_template_and_example(asset_home, monkeypatch):
    monkeypatch.setenv("DEEPBLEED_HOME", str(asset_home))
    path = assets.fetch_template()
    assert path.is_relative_to(asset_home)
    assert sha256_file(path) == assets.TEMPLATE["sha256"]
    example = assets.fetch_example_ct()
    assert sorted(p.name for p in example.iterdir()) == sorted(assets.EXAMPLE_CT_SHA256)


def test_offline_without_cache_says_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPBLEED_HOME", str(tmp_path))
    # an address that refuses at once, like a machine without network
    monkeypatch.setitem(assets.TEMPLATE, "url", "http://127.0.0.1:9/scct.nii.gz")
    with pytest.raises(AssetError) as err:
        assets.fetch_template()
    msg = str(err.value)
    assert "could not download the DeepBleed CT template" in msg
    assert str(tmp_path / assets.TEMPLATE["path"]) in msg and "--template FILE" in msg
    assert not list(tmp_path.rglob("*.nii.gz"))


def test_corrupt_cached_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPBLEED_HOME", str(tmp_path))
    target = tmp_path / assets.TEMPLATE["path"]
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a template")
    with pytest.raises(AssetError, match="does not match its pinned sha256"):
        assets.fetch_template()
    assert target.read_bytes() == b"not a template"  # never deleted behind the user's back


def test_default_home_is_per_user_cache(monkeypatch):
    monkeypatch.delenv("DEEPBLEED_HOME", raising=False)
    assert "deepbleed-bids" in str(assets.home())
