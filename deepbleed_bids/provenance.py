"""What produced an output: software versions, asset checksums, parameters."""
import platform
from importlib.metadata import PackageNotFoundError, version

from . import __version__

PACKAGES = ["keras", "antspyx", "nipype", "pybids", "nibabel", "numpy", "scipy", "fslpy", "dcm2niix",
            "pooch"]
# TensorFlow ships under several distribution names (CPU build, CUDA build, nightlies)
TF_DISTRIBUTIONS = ["tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tf-nightly"]


def software_versions():
    out = {"deepbleed-bids": __version__, "python": platform.python_version()}
    for name in TF_DISTRIBUTIONS:
        try:
            out["tensorflow"] = version(name)
            out["tensorflow-distribution"] = name
            break
        except PackageNotFoundError:
            continue
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
