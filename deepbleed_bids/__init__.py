"""deepbleed-bids: intracerebral hemorrhage segmentation on head CT as a BIDS-App."""
import os
from pathlib import Path

# nipype would otherwise ask a web service for updates at import time
os.environ.setdefault("NIPYPE_NO_ET", "1")


def _read_version():
    # The top-level `version` file is the single source; installed copies read it
    # back from the package metadata that setuptools built from it.
    top = Path(__file__).resolve().parent.parent
    src = top / "version"
    if src.is_file() and (top / "pyproject.toml").is_file():
        return src.read_text().strip()
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepbleed-bids")
    except PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


__version__ = _read_version()
__packagename__ = "deepbleed-bids"
__url__ = "https://github.com/deepbleed-bids/deepbleed-bids"
