"""Product assets (template, published weights, example CT) fetched with pooch.

Everything lives under ``$DEEPBLEED_HOME`` (default: the per-user cache folder).
A file already in the cache with the right sha256 is used as is, so a cache
pre-populated by hand (or by :func:`prepopulate_cache` in tests and CI) makes
every code path run offline.
"""
import os
import shutil
import sys
from pathlib import Path

from .errors import AssetError

_DEEPBLEED_COMMIT = "4467eaa9ae0e4afc57fc6bf39283a2bbf1aff7ee"
_DCM_QA_CT_COMMIT = "d03e30e4c5c8ad07bf16422b96efc3e91e233dc5"

TEMPLATE = {
    "id": "DeepBleedCT",
    "path": "templates/deepbleed/scct_unsmooth_SS_0.01_128x128x128.nii.gz",
    "url": (f"https://raw.githubusercontent.com/msharrock/deepbleed/{_DEEPBLEED_COMMIT}/"
            "templates/scct_unsmooth_SS_0.01_128x128x128.nii.gz"),
    "sha256": "060ebe1a705013613f4116654e819484768ec28f113c7e357b0a2a53744f9ebc",
    "license": "CC BY-NC-ND 4.0 (DeepBleed repository, Sharrock et al. 2020)",
}

# The published MISTIE II weights. No sha256 is published: the digest of the
# downloaded file is recorded in every output's provenance instead.
PUBLISHED_WEIGHTS = {
    "id": "deepbleed-mistie2",
    "path": "models/deepbleed-mistie2/mistie_2-20200122T175000Z-001.zip",
    "url": "https://www.dropbox.com/s/v2ptd9mfpo13gcb/mistie_2-20200122T175000Z-001.zip?dl=1",
    "sha256": None,
    "license": "CC BY-NC-ND 4.0 - not for clinical use (DeepBleed, Sharrock et al. 2020)",
}

EXAMPLE_CT_SHA256 = {
    "01.dcm": "7c911fa70882b69d11d5e8fef5dc6ed46c5d57a1459f709c2777a4d0d5b05e31",
    "02.dcm": "4a1879c846d749abf13f0cb331f6bf7db6522be1e23defec03836eff0d9ce246",
    "03.dcm": "ed757af2d14d1d22d4bdcf8f3db2a279ec9f4d6168c738e112f49dcd9981e526",
    "04.dcm": "8dad859e197c49133b51569c02aaaf47cef9356a3f0b6c1a0bcf61ac1dadbd1b",
    "05.dcm": "f277df2f44b70ab664f10bddc9cc7463c34b85032d19004ebecee8f23f494cdb",
    "06.dcm": "aab122ee71cfba687a22698797f3aa9fd6b889e2e5c1ec9c673f9bf695738708",
    "07.dcm": "4fa42d924ee3c7050ed5a9727995eff287f8cd7d7efd983977f5d0258b0e885b",
    "08.dcm": "dc5d251e384470ca76cdef5f58783371c2e7b6e041c7aa135f44ea25624559c0",
    "09.dcm": "157993f97de293b816d3378a819765474f267aca5b6ca73385226ea231111575",
    "10.dcm": "1f8bcf2741776c8c61e1b038d941851ccd162a591213c29c1741a12880066181",
    "11.dcm": "5cf4e3966e118e183fc38816c83947c717c8f05892c997e23c1a5dc957d55b6c",
    "12.dcm": "dd4c61d73825467e2cc454f2e2af1a935ecb91ea8f2d2969ff7dd3d23cec5460",
    "13.dcm": "6b92cbe0a245b631eb3afbfc2f55e3906f3518104aac4c83d54be1f2f11932a3",
    "14.dcm": "ab14c5db6565c58142bac8d29aa74275e83fb5e9cb8ff32f37b4861b4e76a56a",
    "15.dcm": "951a639c564030c09cd98eaccfe647f51a5d274883e70c2c83cac13ba5e07745",
    "16.dcm": "76f06b7ab3ef7faf0839c2e9bc56314c8af9b03cc069aa301663400a3b346181",
    "17.dcm": "26fbc293b2ca7a0c7b20892536cf8b50334b460ff482f67561c3ded8c8dcd0b8",
    "18.dcm": "44dd44a71e9a7e7e77693f26175914ca1f0d99962830ae24df4e7ae73f7a979c",
    "19.dcm": "a2039498d20df42818422bbaab6c24bf5cd35aad81f3752412489afc83e311b3",
    "20.dcm": "d454a9d9d55e704f90734a8038276b90ab0ebb30ac5203b10ba1aba74e5e5485",
    "21.dcm": "c17ea7913addeab88c88eeed7818ed15d2b049e4af928cddd3483bec32a90cf0",
    "22.dcm": "f03c5fb344e5d9c1f149f4709686d666d3e20e41b3e870b7dd66656f2dc86e8b",
    "23.dcm": "2daa0049d8b1e5f875496dce808e6f59a50d6c45f1abe6c2f91c2bf3b7a07089",
    "24.dcm": "27aa99676716259ac62a5bf4b09f06df8e031b2b6529eceff824df522b09d41c",
    "25.dcm": "cd6a92936929f9ddb35cb2087a8fd26506caf7adc2ddde5cd7cf7c24f25071d1",
    "26.dcm": "8cb43cbaa03aae6fcb5092128173d1c6ba2efcf04d9ef34d06456a8f47e2b948",
    "27.dcm": "86c35a9842c8fd3106d907fcabd7d5b560110a66f137e08c2f3764abbdbe7b4e",
    "28.dcm": "c24147eb02627f17d039df7df624ed0595211078044a03e28f82f2b6daef57dc",
}
EXAMPLE_CT = {
    "path": "example/ge-head-tilt",
    "url": f"https://raw.githubusercontent.com/neurolabusc/dcm_qa_ct/{_DCM_QA_CT_COMMIT}/In/GE/",
    "license": "BSD-2-Clause (dcm_qa_ct, Chris Rorden)",
}


def home():
    """The asset cache: ``$DEEPBLEED_HOME`` or the per-user cache folder."""
    env = os.environ.get("DEEPBLEED_HOME")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("deepbleed-bids"))


def _retrieve(url, sha256, relpath, what, how):
    import pooch

    target = home() / relpath
    known = f"sha256:{sha256}" if sha256 else None
    if target.is_file() and (sha256 is None or pooch.file_hash(str(target)) == sha256):
        return target
    if target.is_file():
        raise AssetError(f"{what} at {target} does not match its pinned sha256 {sha256}; "
                         "delete that file so it is downloaded again, or replace it with the right one.")
    try:
        path = pooch.retrieve(url, known_hash=known, fname=target.name, path=target.parent,
                              progressbar=False)
    except Exception as err:  # noqa: BLE001 - network errors come in many types
        raise AssetError(
            f"could not download {what} from {url} ({type(err).__name__}: {err}). "
            f"Without network access, put the file at {target}"
            + (f" (sha256 {sha256})" if sha256 else "")
            + f", point DEEPBLEED_HOME to a folder that holds {relpath}, or {how}."
        ) from err
    return Path(path)


def fetch_template():
    """Path of the DeepBleed CT template (128^3, 1.5 mm), downloaded on first use."""
    return _retrieve(TEMPLATE["url"], TEMPLATE["sha256"], TEMPLATE["path"],
                     "the DeepBleed CT template", "pass --template FILE")


def fetch_published_weights(sha256=None):
    """Path of the published DeepBleed MISTIE II weights zip; prints its license once.

    ``sha256`` pins the file (none is published; e.g. one recorded by an earlier download).
    """
    path = _retrieve(PUBLISHED_WEIGHTS["url"], sha256 or PUBLISHED_WEIGHTS["sha256"], PUBLISHED_WEIGHTS["path"],
                     "the published DeepBleed weights", "pass --model PATH (a checkpoint or its zip)")
    shown = path.parent / ".license-shown"
    if not shown.exists():
        print(f"Using the published DeepBleed weights: {PUBLISHED_WEIGHTS['license']}. "
              "https://creativecommons.org/licenses/by-nc-nd/4.0/", file=sys.stderr)
        try:
            shown.touch()
        except OSError:  # read-only cache (e.g. inside a container): show it every time
            pass
    return path


def fetch_example_ct():
    """Folder of the example head CT (28 DICOM files of a real GE head)."""
    for name, sha in EXAMPLE_CT_SHA256.items():
        _retrieve(EXAMPLE_CT["url"] + name, sha, f"{EXAMPLE_CT['path']}/{name}",
                  f"the example head CT ({name})", "use your own CT")
    return home() / EXAMPLE_CT["path"]


def prepopulate_cache(dest, data_dir):
    """Fill an asset cache from a local copy of the shared data (tests, CI, air-gapped sites)."""
    dest, data_dir = Path(dest), Path(data_dir)
    pairs = [(data_dir / "templates/deepbleed/scct_unsmooth_SS_0.01_128x128x128.nii.gz", TEMPLATE["path"])]
    pairs += [(data_dir / "dicom/ge-head-tilt" / name, f"{EXAMPLE_CT['path']}/{name}")
              for name in EXAMPLE_CT_SHA256]
    for src, rel in pairs:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copyfile(src, target)
    return dest
