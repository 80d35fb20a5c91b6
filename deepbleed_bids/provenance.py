"""What produced an output: software versions, asset checksums, parameters."""
import platform
from importlib.metadata import PackageNotFoundError, version

from . import __version__

PACKAGES = ["tensorflow", "tensorflow-cpu", "keras", "antspyx", "nipype", "pybids", "nibabel",
            "numpy", "scipy", "fslpy", "dcm2niix", "pooch"]


def software_versions():
    out = {"deepbleed-bids": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
