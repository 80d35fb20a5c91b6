"""One series through dcm2niix: keep the geometrically correct image and complete its sidecar.

Each series is converted on its own so that one bad series cannot spoil the others.
Of dcm2niix's images only the geometrically correct one is kept (``_Tilt_Eq_1``,
``_Eq_1`` or ``_Tilt_1`` when it writes them).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DeepBleedError
from ..kernels import classify_kernel
from .series import _number, _stack, screen

ORTHO_TOL = 1e-3  # max |cos| between voxel axes of an unsheared grid

# dcm2niix image variants, best geometry first.
_VARIANTS = [("_Tilt_Eq_1", True, True), ("_Eq_1", False, True), ("_Tilt_1", True, False), ("", False, False)]


def geometry_problem(img):
    """Why a NIfTI image is not a usable 3D CT grid (shear, 2D, 4D), or None."""
    shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
    if len(shape) != 3 or min(shape) < 2:
        return f"not a 3D volume (shape {tuple(img.shape)})"
    rzs = img.affine[:3, :3]
    norms = np.linalg.norm(rzs, axis=0)
    if np.any(norms <= 0):
        return "degenerate affine (zero voxel size)"
    cosines = np.abs((rzs / norms).T @ (rzs / norms) - np.eye(3)).max()
    if cosines > ORTHO_TOL:
        angle = np.degrees(np.arcsin(min(1.0, cosines)))
        return f"sheared voxel grid (axes {angle:.1f} deg off orthogonal: uncorrected gantry tilt)"
    return None


def dcm2niix_binary():
    """The dcm2niix executable: on PATH, beside this Python, or from the PyPI package."""
    found = shutil.which("dcm2niix") or shutil.which("dcm2niix", path=str(Path(sys.executable).parent))
    if not found:
        try:
            import dcm2niix

            found = str(dcm2niix.bin)
        except (ImportError, AttributeError):
            pass
    if not found or not Path(found).is_file():
        raise DeepBleedError("dcm2niix not found: install it (pip install dcm2niix) or put it on PATH.")
    return found


def _dcm2niix_version(tool):
    proc = subprocess.run([tool, "--version"], capture_output=True, text=True, errors="replace")
    found = re.search(r"v\d+\.\d+\.\d+\S*", proc.stdout + proc.stderr)
    return found.group(0) if found else "unknown"


@dataclass
class Decision:
    """What happened to one series (or damaged file)."""

    label: str
    status: str  # converted | skipped | failed
    reason: str = ""
    outputs: list = field(default_factory=list)  # relative BIDS paths
    details: list = field(default_factory=list)
    tool_output: str = ""


@dataclass
class _Image:
    nii: Path  # the uncompressed dcm2niix image kept
    sidecar: dict
    kernel_type: str
    summary: str


def _series_fields(series):
    """Sidecar fields read from the DICOM header (dcm2niix omits some of them)."""
    h = series.header
    kernel = h.get("ConvolutionKernel")
    if isinstance(kernel, (list, tuple)) or type(kernel).__name__ == "MultiValue":
        kernel = "\\".join(str(k) for k in kernel)
    out = {"ConvolutionKernel": str(kernel) if kernel else None, "KVP": _number(h.get("KVP"))}
    thick = [f.thickness for f in series.files if f.thickness is not None]
    if thick:
        values, counts = np.unique(np.round(thick, 3), return_counts=True)
        out["SliceThickness"] = float(values[np.argmax(counts)])
        if len(values) > 1:
            out["SliceThicknessRange"] = [float(values.min()), float(values.max())]
    tilt = _number(h.get("GantryDetectorTilt"))
    if tilt is not None:
        out["GantryDetectorTilt"] = tilt
    for key in ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusIngredient"):
        if str(h.get(key) or "").strip():
            out[key] = str(h.get(key)).strip()
    volume = _number(h.get("ContrastBolusVolume"))
    if volume is not None:
        out["ContrastBolusVolume"] = volume
    return {k: v for k, v in out.items() if v is not None}


def _link_inputs(series, folder):
    folder.mkdir(parents=True)
    for i, one in enumerate(series.files):
        target = folder / f"{i:05d}.dcm"  # neutral names: source names may carry identifiers
        try:
            os.symlink(Path(one.path).resolve(), target)
        except OSError:
            shutil.copyfile(one.path, target)


def _choose_image(out, stem, spacing):
    """The best-geometry dcm2niix image of one output: (path, image, tilt fixed, equidistant), problems."""
    import nibabel as nib

    variable = spacing is not None and spacing.max() - spacing.min() > 0.01 * spacing.max()
    problems = []
    for suffix, tilt_fixed, equidistant in _VARIANTS:
        nii = out / f"{stem}{suffix}.nii"
        if not nii.exists():
            continue
        img = nib.load(nii)
        problem = geometry_problem(img)
        if not problem and variable and not equidistant:
            problem = (f"slice spacing varies ({spacing.min():.2f}-{spacing.max():.2f} mm) "
                       "and dcm2niix wrote no equidistant image")
        if not problem:
            return (nii, img, tilt_fixed, equidistant), problems
        problems.append(f"{nii.name}: {problem}")
    return None, problems


def convert_series(series, work, tool):
    """Run dcm2niix on one series; returns (decision, images) (images not yet named)."""
    verdict = screen(series)
    if verdict:
        return Decision(series.label, "skipped" if verdict[0] == "skip" else "failed", verdict[1]), []
    src, out = work / "in", work / "out"
    _link_inputs(series, src)
    out.mkdir()
    cmd = [tool, "-b", "y", "-ba", "y", "-c", "", "-z", "n", "-d", "0", "-f", "series", "-o", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    text = (proc.stdout + proc.stderr).replace(str(work), "<work>")
    decision = Decision(series.label, "converted", tool_output=text)
    stems = sorted(p.stem for p in out.glob("*.json"))  # dcm2niix writes a sidecar per image stack
    if proc.returncode != 0 or not stems:
        last = [line for line in text.splitlines() if line.strip()][-2:]
        decision.status = "failed"
        decision.reason = f"dcm2niix failed (exit {proc.returncode}): {' | '.join(last) or 'no output'}"
        return decision, []
    stack = _stack(series.files) if all(f.frames == 1 for f in series.files) else None
    spacing = np.diff(stack) if isinstance(stack, np.ndarray) and len(stack) > 1 else None
    images = []
    for stem in stems:
        chosen, problems = _choose_image(out, stem, spacing)
        decision.details += problems
        if chosen is None:
            continue
        nii, img, tilt_fixed, equidistant = chosen
        sidecar = {**json.loads((out / f"{stem}.json").read_text()), **_series_fields(series)}
        sidecar["KernelType"] = classify_kernel(sidecar.get("ConvolutionKernel"), sidecar.get("Manufacturer"))
        sidecar["TiltCorrected"] = tilt_fixed
        sidecar["EquidistantResampled"] = equidistant
        if spacing is not None:
            sidecar["OriginalSliceSpacingMin"] = round(float(spacing.min()), 4)
            sidecar["OriginalSliceSpacingMax"] = round(float(spacing.max()), 4)
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        if equidistant:
            sidecar["ResampledSliceSpacing"] = round(zooms[2], 4)
        fixes = [w for w, on in (("tilt corrected", tilt_fixed), ("resampled to equidistant slices", equidistant)) if on]
        summary = (f"{'x'.join(map(str, img.shape[:3]))} voxels of {'x'.join(f'{z:.3f}' for z in zooms)} mm, "
                   f"kernel {sidecar.get('ConvolutionKernel', '?')} ({sidecar['KernelType']}), "
                   f"dcm2niix image '{nii.stem}'" + (f" ({', '.join(fixes)})" if fixes else ""))
        images.append(_Image(nii, sidecar, sidecar["KernelType"], summary))
    if not images:
        decision.status = "failed"
        decision.reason = "no image with correct geometry: " + "; ".join(decision.details or ["dcm2niix wrote none"])
        decision.details = []
    elif len(stems) > 1:
        decision.reason = f"dcm2niix split the series into {len(stems)} images"
    return decision, images
