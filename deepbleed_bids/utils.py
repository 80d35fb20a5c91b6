"""Small helpers shared across the package."""
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path


def out_path(cwd, in_file, tag, ext=".nii.gz"):
    """``<cwd>/<input stem>_<tag><ext>``."""
    stem = re.sub(r"\.nii(\.gz)?$|\.[^.]*$", "", Path(in_file).name)
    return str(Path(cwd) / f"{stem}_{tag}{ext}")


def _file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def sha256_file(path, chunk=1 << 20):
    """sha256 of a file's bytes, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fobj:
        for block in iter(lambda: fobj.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def ants_seed(seed):
    """Seed ANTs registrations run inside the block. antspyx ignores a ``random_seed``
    argument; antsRegistration reads ANTS_RANDOM_SEED on every call."""
    previous = os.environ.get("ANTS_RANDOM_SEED")
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("ANTS_RANDOM_SEED", None)
        else:
            os.environ["ANTS_RANDOM_SEED"] = previous


@contextmanager
def atomic_path(path, clobber=True):
    """Yield a temporary path beside ``path``; on success it becomes ``path`` at once.

    Readers never see a half-written file and a failure leaves nothing behind.
    ``clobber=False`` never replaces an existing file (hard link, which fails
    if another writer got there first); the yielded object's ``written``
    attribute then says whether this writer won.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    result = _Target(tmp)
    try:
        yield result
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600: outputs are for others to read too
        if clobber:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                result.written = False
            except OSError:  # file systems without hard links: exclusive create instead
                try:
                    with open(path, "xb") as out, open(tmp, "rb") as src:
                        out.write(src.read())
                except FileExistsError:
                    result.written = False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Target(type(Path())):
    written = True


def write_text_atomic(text, path, clobber=True):
    """Write text atomically; returns False if ``clobber=False`` and the file existed."""
    with atomic_path(path, clobber=clobber) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return tmp.written


def write_json_atomic(data, path, clobber=True):
    write_text_atomic(json.dumps(data, indent=2, default=str) + "\n", path, clobber=clobber)
    return Path(path)


def write_tsv_atomic(df, path, float_format="%.6g"):
    """A pandas table as TSV ('n/a' for missing), written atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format=float_format)
    return Path(path)


def clean_json(value):
    """JSON-safe: NaN -> None, numpy/pandas scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
