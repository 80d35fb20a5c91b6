"""DICOM Segmentation (highdicom) of native-space masks, on the source series' own slices.

dcm2niix turns a gantry-tilted series with uneven spacing into an equidistant,
tilt-corrected grid; PACS viewers show the original slices. So each SEG frame
is sampled from the NIfTI at the world position of every pixel of one source
slice (its ImagePositionPatient, ImageOrientationPatient, PixelSpacing), never
on the corrected grid. Pure numerical/DICOM code: no nipype.
"""
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError

SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"
# Patient/study identifiers copied from the source; --dicom-deidentify empties them.
# The UIDs that tie the objects to their source images stay (PS3.15 "Retain UIDs").
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
               "OtherPatientIDs", "AccessionNumber", "StudyID", "ReferringPhysicianName",
               "InstitutionName", "InstitutionAddress", "StudyDescription", "StudyDate", "StudyTime")

_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def read_series(files):
    """pydicom headers of one single-frame CT series, sorted along the slice normal.

    Raises InputError naming what is wrong (missing file, mixed series, no geometry).
    """
    import pydicom

    if not files:
        raise InputError("no source DICOM files recorded")
    datasets = []
    for path in files:
        if not Path(path).is_file():
            raise InputError(f"source DICOM file {Path(path).name} is missing (moved or deleted since "
                             "dicom2bids); restore the source series or run without --dicom-output")
        datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
    uids = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(uids) != 1:
        raise InputError(f"the recorded source files belong to {len(uids)} series, expected one")
    for ds in datasets:
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if key not in ds:
                raise InputError(f"source DICOM instance {ds.get('InstanceNumber', '?')} has no {key}: "
                                 "not a single-frame CT image with geometry")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise InputError("multi-frame (enhanced) source images are not supported for DICOM output")
    for ds in datasets:  # anonymised sources may lack Type 2 attributes the SEG/SR must carry
        for key in _TYPE2:
            if key not in ds:
                setattr(ds, key, "")
    normal = _normal(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, ds.ImagePositionPatient)))


def _normal(ds):
    iop = np.asarray(ds.ImageOrientationPatient, float)
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def slice_world(ds):
    """RAS world coordinates (mm) of every pixel centre of one source slice: (rows, cols, 3)."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    ipp = np.asarray(ds.ImagePositionPatient, float)
    dr, dc = (float(x) for x in ds.PixelSpacing)  # between rows, between columns
    r = np.arange(int(ds.Rows))[:, None, None]
    c = np.arange(int(ds.Columns))[None, :, None]
    lps = ipp + c * dc * iop[:3] + r * dr * iop[3:]
    return lps * np.array([-1.0, -1.0, 1.0])  # DICOM LPS -> NIfTI RAS


def resample_to_slices(data, affine, datasets, order=1, step_mm=1.0):
    """Mean of a 3-D array (voxel -> RAS by ``affine``) over each source slice's slab: (n, rows, cols).

    A CT slice shows its slab: the part of space nearer to its plane than to its
    neighbours' (:func:`slab_bounds`; with uneven spacing not centred on the
    plane). Each pixel gets the mean of the data's linear interpolant across
    that slab: exact when the slab normal is a voxel axis (dcm2niix keeps the
    slice axis, tilted or not: :func:`_slab_mean_along_axis`), else the mean
    over planes at most ``step_mm`` apart (all of a frame's in one
    ``map_coordinates`` call). So :func:`binarize_slabs` keeps a frame's area
    true to the slab's content (sampling only the centre plane of 7 mm slabs
    biases volumes by several percent). Only the part of each frame that can
    meet the data's bounding box is sampled. Outside the NIfTI, 0.
    """
    from scipy.ndimage import map_coordinates

    data = np.asanyarray(data)
    out = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), np.float32)
    nz = np.nonzero(data)
    if not len(nz[0]):
        return out
    # crop to the data's bounding box, padded with one zero voxel on every side:
    # the linear interpolant of a mask then integrates to its voxel count, also at the grid's edges
    lo = np.array([i.min() for i in nz])
    hi = np.array([i.max() for i in nz])
    box = np.pad(np.asarray(data[tuple(slice(a, b + 1) for a, b in zip(lo, hi))], np.float32), 1)
    inv = np.linalg.inv(np.asarray(affine, float))
    to_box = inv.copy()
    to_box[:3, 3] -= lo - 1  # world -> cropped, padded voxel indices
    ras = np.array([-1.0, -1.0, 1.0])  # DICOM LPS -> NIfTI RAS
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in box.shape], indexing="ij")).reshape(3, -1).T
    for i, (ds, (left, right)) in enumerate(zip(datasets, slab_bounds(datasets))):
        iop = np.asarray(ds.ImageOrientationPatient, float)
        dr, dc = (float(x) for x in ds.PixelSpacing)  # between rows, between columns
        origin = to_box[:3, :3] @ (np.asarray(ds.ImagePositionPatient, float) * ras) + to_box[:3, 3]
        axes = to_box[:3, :3] @ np.stack([iop[:3] * dc * ras, iop[3:] * dr * ras, _normal(ds) * ras], 1)
        # the box in (column, row, mm along the normal) of this frame: sample only that rectangle
        crt = np.linalg.solve(axes, (corners - origin).T)
        if crt[2].max() < -left or crt[2].min() > right:
            continue  # the slab misses the data
        c0, r0 = (max(0, int(np.floor(v.min()))) for v in crt[:2])
        c1 = min(out.shape[2] - 1, int(np.ceil(crt[0].max())))
        r1 = min(out.shape[1] - 1, int(np.ceil(crt[1].max())))
        if c0 > c1 or r0 > r1:
            continue
        c = np.arange(c0, c1 + 1, dtype=np.float32)[None, :]
        r = np.arange(r0, r1 + 1, dtype=np.float32)[:, None]
        along = _grid_axis(axes[:, 2], left + right)
        if along is not None and order == 1:
            out[i, r0:r1 + 1, c0:c1 + 1] = _slab_mean_along_axis(box, along, origin, axes, left, right, c, r)
            continue
        n = max(1, int(np.ceil((left + right) / step_mm)))
        t = (-left + (np.arange(n) + 0.5) * (left + right) / n).astype(np.float32)[:, None, None]
        at = np.stack([origin[k] + axes[k, 0] * c + axes[k, 1] * r + axes[k, 2] * t for k in range(3)])
        planes = map_coordinates(box, at, order=order, mode="constant", cval=0.0, prefilter=False)
        out[i, r0:r1 + 1, c0:c1 + 1] = planes.mean(axis=0)
    return out


def _grid_axis(step, width):
    """The voxel axis along the slab normal (voxels per mm: ``step``), or None when oblique to the grid.

    Parallel enough when crossing the slab (``width`` mm) drifts < 0.01 voxel
    sideways: the rounding of DICOM/NIfTI orientations is far below that.
    """
    step = np.abs(step)
    k = int(np.argmax(step))
    return k if np.all(np.delete(step, k) * width < 0.01) else None


def _hat_integral(x):
    """Integral from -inf to x of the linear-interpolation kernel (hat of half-width 1)."""
    x = np.clip(x, -1.0, 1.0)
    return np.where(x < 0, (x + 1) ** 2 / 2, 1 - (1 - x) ** 2 / 2)


def _slab_mean_along_axis(box, k, origin, axes, left, right, c, r):
    """Exact mean of the trilinear interpolant over each pixel's slab when the slab normal is voxel axis k.

    The usual case (dcm2niix keeps the slice axis, tilted or not): the mean along
    the normal is then a weighted sum of a few voxel planes (weights: the
    linear-interpolation kernel integrated over the slab), and one bilinear 2-D
    sampling per frame does the rest, with no sub-plane discretisation.
    """
    from scipy.ndimage import map_coordinates

    ends = sorted((origin[k] - left * axes[k, 2], origin[k] + right * axes[k, 2]))
    m = np.arange(max(0, int(np.floor(ends[0]))), min(box.shape[k] - 1, int(np.ceil(ends[1]))) + 1)
    weights = (_hat_integral(ends[1] - m) - _hat_integral(ends[0] - m)) / (ends[1] - ends[0])
    flat = np.tensordot(np.take(box, m, axis=k), weights.astype(np.float32), axes=([k], [0]))
    inplane = [j for j in range(3) if j != k]  # the in-plane pixel steps have no component along k
    at = np.stack([origin[j] + axes[j, 0] * c + axes[j, 1] * r for j in inplane])
    return map_coordinates(flat, at, order=1, mode="constant", cval=0.0, prefilter=False)


def binarize_slabs(occupancy):
    """Binary frames whose area equals each slab's content: the ``round(sum)`` most occupied pixels.

    occupancy: (n, rows, cols) fractions from :func:`resample_to_slices`. A plain
    0.5 cut of thick (7 mm) slabs shifts a 25 mL hematoma's planimetric volume by
    about 5 % (its caps); keeping each frame's area true keeps the SEG's volume
    (sum of area x slab width) equal to the NIfTI's, and the chosen pixels are the
    ones the slab holds most of.
    """
    occupancy = np.asarray(occupancy, np.float32)
    out = np.zeros(occupancy.shape, bool)
    for i, frame in enumerate(occupancy):
        k = int(round(float(frame.sum())))
        if k <= 0:
            continue
        flat = frame.ravel()
        top = np.argpartition(-flat, k - 1)[:k]
        out[i].ravel()[top[flat[top] > 0]] = True
    return out


def slab_bounds(datasets):
    """(n, 2) extent (mm) of each sorted slice's slab behind and ahead of its plane, along the normal.

    The slabs meet half-way between neighbouring planes (the real spacing along
    the normal: with gantry tilt that is the table increment x cos(tilt), not
    SliceThickness), so they tile the series without gap or overlap even when the
    spacing changes (GE head: 4 mm, one 1.1 mm step, then 7 mm). The end slices
    reach out by half their one gap.
    """
    normal = _normal(datasets[0])
    pos = np.array([float(np.dot(normal, ds.ImagePositionPatient)) for ds in datasets])
    if len(pos) == 1:
        half = float(datasets[0].get("SliceThickness") or 1.0) / 2
        return np.array([[half, half]])
    gaps = np.diff(pos) / 2
    return np.stack([np.concatenate([gaps[:1], gaps]), np.concatenate([gaps, gaps[-1:]])], 1)


def slab_widths(datasets):
    """Thickness (mm) each sorted slice stands for: half the gap to each neighbour along the normal."""
    return slab_bounds(datasets).sum(axis=1)


def _codes():
    from pydicom.sr.codedict import codes

    return codes


def segment_description(number, kind, algorithm):
    """SegmentDescription for a kind: hemorrhage (ICH+IVH), ich, ivh or brain."""
    import highdicom as hd

    codes = _codes()
    table = {
        "hemorrhage": ("Hemorrhage (ICH+IVH)", codes.SCT.MorphologicallyAbnormalStructure,
                       codes.SCT.Hemorrhage, [codes.SCT.Brain], (255, 0, 0)),
        "ich": ("Intracerebral hemorrhage", codes.SCT.MorphologicallyAbnormalStructure,
                codes.SCT.Hemorrhage, [codes.SCT.Brain], (255, 128, 0)),
        "ivh": ("Intraventricular hemorrhage", codes.SCT.MorphologicallyAbnormalStructure,
                codes.SCT.Hemorrhage, [codes.SCT.BrainVentricle], (255, 255, 0)),
        "brain": ("Brain", codes.SCT.Organ, codes.SCT.Brain, None, (0, 128, 255)),
    }
    label, category, prop, regions, rgb = table[kind]
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label, segmented_property_category=category,
        segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=regions,
        tracking_id=kind, tracking_uid=hd.UID(),
        display_color=hd.color.CIELabColor.from_rgb(*rgb))


def algorithm_identification(model):
    """highdicom AlgorithmIdentificationSequence for the model (name, version, sha256)."""
    import highdicom as hd

    from .. import __version__

    params = {"sha256": model.get("sha256") or "unknown"}
    if model.get("threshold") is not None:
        params["threshold"] = str(model["threshold"])
    return hd.AlgorithmIdentificationSequence(
        name=str(model.get("id") or "unknown")[:64], version=str(model.get("version") or __version__)[:64],
        family=_codes().cid7162.ArtificialIntelligence, source="deepbleed-bids", parameters=params)


def deidentify(ds):
    """Empty the patient/study identifiers copied from the source (UIDs stay: they are the references)."""
    for key in IDENTIFYING:
        if key in ds:
            setattr(ds, key, "")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "deepbleed-bids --dicom-deidentify: identifiers emptied"
    return ds


def build_segmentation(datasets, masks, model, series_number=None, deidentify_output=False):
    """A BINARY DICOM Segmentation of ``masks`` on the source slices.

    datasets: sorted source headers (:func:`read_series`); masks: ordered dict
    kind -> bool array (n_slices, rows, cols) (kinds of :func:`segment_description`).
    """
    import highdicom as hd

    algorithm = algorithm_identification(model)
    kinds = list(masks)
    pixels = np.stack([np.asarray(masks[k], bool) for k in kinds], axis=-1).astype(np.uint8)
    src = datasets[0]
    with warnings.catch_warnings():  # single-part source names ("REMOVED", "HEAD") are copied as they are
        warnings.filterwarnings("ignore", message="The string .* person name", category=UserWarning)
        seg = _segmentation(hd, datasets, pixels, kinds, algorithm, model, src, series_number)
    return finish(seg, src, deidentify_output)


def _segmentation(hd, datasets, pixels, kinds, algorithm, model, src, series_number):
    from .. import __version__

    return hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(i + 1, k, algorithm) for i, k in enumerate(kinds)],
        series_instance_uid=hd.UID(), series_number=series_number or _derived_number(src, 1),
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="deepbleed-bids", manufacturer_model_name="deepbleed-bids",
        software_versions=__version__, device_serial_number="none",
        content_label="HEMORRHAGE", content_description="deepbleed-bids hemorrhage and brain",
        content_creator_name="deepbleed-bids^",
        omit_empty_frames=bool(pixels.any()),  # all empty: keep every frame (a SEG needs one)
        series_description=f"DeepBleed segmentation ({str(model.get('id') or '')[:30]})")


def finish(ds, src, deidentify_output):
    """Identifiers out when asked; a source marked de-identified keeps a (Type 1C) method."""
    if deidentify_output:
        return deidentify(ds)
    if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and not ds.get("DeidentificationMethod"):
        ds.DeidentificationMethod = str(src.get("DeidentificationMethod") or "") or \
            "source de-identified before conversion (method not recorded)"
    return ds


def _derived_number(src, offset):
    """Series number of a derived object: the source's number in the thousands (e.g. 3 -> 1003)."""
    number = src.get("SeriesNumber")
    return 1000 * offset + (int(number) % 1000 if number not in (None, "") else 0)


def frame_sources(seg):
    """For each frame: (segment number, referenced source SOPInstanceUID, frame IPP)."""
    out = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        ipp = [float(x) for x in frame.PlanePositionSequence[0].ImagePositionPatient]
        out.append((number, uid, ipp))
    return out


def segment_volumes(seg, datasets):
    """Volume (mL) of each segment label, recomputed from the SEG frames on the source slabs."""
    widths = dict(zip((str(ds.SOPInstanceUID) for ds in datasets), slab_widths(datasets)))
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    area = float(spacing[0]) * float(spacing[1])
    pixels = seg.pixel_array.reshape((-1, int(seg.Rows), int(seg.Columns)))
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    vol = {label: 0.0 for label in labels.values()}
    for i, (number, uid, _) in enumerate(frame_sources(seg)):
        vol[labels[number]] += np.count_nonzero(pixels[i]) * area * widths[uid] / 1000.0
    return vol
