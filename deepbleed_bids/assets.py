"""Product assets: the bundled template and example head CT, and the published weights.

Two third-party files ship inside the package (``deepbleed_bids/data/``), each with
its license and attribution beside it, and are read through :func:`bundled`: no
download, no cache, the sha256 checked on every use.

- the DeepBleed CT template (CC BY-NC-ND 4.0), verbatim: :func:`fetch_template`;
- the example head CT, the 28 DICOM files of dcm_qa_ct's GE series (BSD-2-Clause) in
  one reproducible tar.xz: :func:`unpack_example_ct` writes them into a folder.

The published weights are not bundled (large; CC BY-NC-ND 4.0): pooch downloads them into
``$DEEPBLEED_HOME`` (default: the per-user cache folder). A file already there is used
as is, so a cache filled by ``deepbleed-bids fetch weights`` runs offline.
"""
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import AssetError
from .utils import sha256_file

DATA = Path(__file__).resolve().parent / "data"

_DEEPBLEED_COMMIT = "4467eaa9ae0e4afc57fc6bf39283a2bbf1aff7ee"
_DCM_QA_CT_COMMIT = "d03e30e4c5c8ad07bf16422b96efc3e91e233dc5"

# "path" is relative to DATA; "url" is where the file comes from (attribution).
TEMPLATE = {
    "id": "DeepBleedCT",
    "name": "the DeepBleed CT template",
    "path": "templates/deepbleed/scct_unsmooth_SS_0.01_128x128x128.nii.gz",
    "license_file": "templates/deepbleed/LICENSE.md",
    "url": (f"https://raw.githubusercontent.com/msharrock/deepbleed/{_DEEPBLEED_COMMIT}/"
            "templates/scct_unsmooth_SS_0.01_128x128x128.nii.gz"),
    "sha256": "060ebe1a705013613f4116654e819484768ec28f113c7e357b0a2a53744f9ebc",
    "license": "CC BY-NC-ND 4.0 (DeepBleed repository, Sharrock et al. 2020)",
    "instead": "pass --template FILE",
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
    "id": "example-ge-head-tilt",
    "name": "the example head CT archive",
    "path": "example/ge-head-tilt.tar.xz",
    "license_file": "example/LICENSE-dcm_qa_ct",
    "url": f"https://github.com/neurolabusc/dcm_qa_ct/tree/{_DCM_QA_CT_COMMIT}/In/GE",
    "sha256": "3636023bc7b5c62e3223866f417ef045e92f8f129a66464d2dc621d095acaf27",
    "license": "BSD-2-Clause (dcm_qa_ct, Chris Rorden)",
    "instead": "use your own CT",
    "members": EXAMPLE_CT_SHA256,  # the 28 files inside, each pinned too
}
_ARCHIVE_DIR = "ge-head-tilt"  # the one folder inside the archive
_ARCHIVE_MTIME = 1546300800  # 2019-01-01: fixed, so that packing again gives the same bytes


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


def bundled(asset):
    """Path of a file shipped in the package (``TEMPLATE``, ``EXAMPLE_CT``), its sha256 checked."""
    path = DATA / asset["path"]
    if not path.is_file():
        raise AssetError(f"{asset['name']} is missing from this installation (expected {path}); "
                         f"reinstall deepbleed-bids (pip install --force-reinstall deepbleed-bids), "
                         f"or {asset['instead']}.")
    digest = sha256_file(path)
    if digest != asset["sha256"]:
        raise AssetError(f"{asset['name']} at {path} is damaged: its sha256 is {digest}, not the pinned "
                         f"{asset['sha256']}; reinstall deepbleed-bids, or {asset['instead']}.")
    return path


def fetch_template():
    """Path of the bundled DeepBleed CT template (128^3, 1.5 mm), checked; nothing is downloaded."""
    return bundled(TEMPLATE)


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


def _holds_example(folder):
    """True if ``folder`` holds exactly the example's DICOM files, each with its pinned sha256."""
    members = EXAMPLE_CT["members"]
    found = {p.name: p for p in Path(folder).iterdir()}
    return set(found) == set(members) and all(sha256_file(found[n]) == sha for n, sha in members.items())


def unpack_example_ct(dest):
    """Write the example head CT's 28 DICOM files into the new folder ``dest``; return it.

    Every file is checked against its pinned sha256. The folder appears complete or not
    at all (unpacked beside it, then renamed). An existing folder that already holds
    exactly these files is used as is; any other existing ``dest`` is refused, never touched.
    """
    dest = Path(dest)
    members = EXAMPLE_CT["members"]
    if dest.exists():
        if dest.is_dir() and _holds_example(dest):
            return dest
        raise AssetError(f"{dest} already exists and does not hold the example head CT's {len(members)} "
                         "DICOM files; remove it or choose another folder.")
    archive = bundled(EXAMPLE_CT)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        written = set()
        with tarfile.open(archive, "r:xz") as tar:
            for member in tar:
                name = member.name.rpartition("/")[2]
                if not (member.isfile() and member.name == f"{_ARCHIVE_DIR}/{name}" and name in members):
                    raise AssetError(f"{archive}: unexpected entry {member.name!r}; reinstall deepbleed-bids.")
                with tar.extractfile(member) as src, open(staging / name, "wb") as out:
                    shutil.copyfileobj(src, out)
                if sha256_file(staging / name) != members[name]:
                    raise AssetError(f"{archive}: {name} does not match its pinned sha256; reinstall deepbleed-bids.")
                written.add(name)
        if written != set(members):
            raise AssetError(f"{archive} lacks {sorted(set(members) - written)}; reinstall deepbleed-bids.")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700
        try:
            os.rename(staging, dest)
        except OSError:  # another process unpacked it first
            if not (dest.is_dir() and _holds_example(dest)):
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def pack_example_ct(src_dir, dest):
    """Pack the 28 DICOM files of ``src_dir`` into the example archive, byte-reproducibly.

    Sorted names, fixed time stamps, owner 0, mode 0644, ustar, xz preset 9: the same files
    always give the archive whose sha256 is pinned in ``EXAMPLE_CT`` (for maintainers:
    ``pack_example_ct('../shared/data/dicom/ge-head-tilt', DATA / EXAMPLE_CT['path'])``).
    """
    from .utils import atomic_path

    src_dir = Path(src_dir)
    for name, sha in EXAMPLE_CT["members"].items():
        if not (src_dir / name).is_file() or sha256_file(src_dir / name) != sha:
            raise AssetError(f"{src_dir / name} is missing or is not the pinned example file (sha256 {sha}).")
    with atomic_path(dest) as tmp:
        with lzma.open(tmp, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9) as xz, \
                tarfile.open(fileobj=xz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in sorted(EXAMPLE_CT["members"]):
                info = tarfile.TarInfo(f"{_ARCHIVE_DIR}/{name}")
                info.size = (src_dir / name).stat().st_size
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                    _ARCHIVE_MTIME, 0o644, 0, 0, "", ""
                with open(src_dir / name, "rb") as f:
                    tar.addfile(info, f)
    return Path(dest)


def prepopulate_cache(dest, data_dir=None):
    """An asset home for tests and benchmarks, created empty and returned.

    The template and the example CT are bundled, so nothing needs copying any more;
    kept so that callers written against the earlier API still get a ``DEEPBLEED_HOME``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return dest
