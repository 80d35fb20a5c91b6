"""Brain extraction on the real GE head CT (no hemorrhage) and on copies of it.

Reference checks are built independently of the algorithm: the skull is
HU >= 300, the intracranial cavity of an axial slice is what its closed bone
ring encloses, and the globes were located on this image as the two ~4 mL
vitreous blobs (0-30 HU) in front of the orbits.
"""
import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation
from scipy import ndimage as ndi

from deepbleed_bids.brain import brain_volume_ml, extract_brain
from deepbleed_bids.errors import DeepBleedError, InputError
from deepbleed_bids.nifti import like

SKULL_HU = 300
# World (scanner mm) centres of the globes of this head; the globe radius is ~12 mm.
GLOBES_MM = ((54.5, 63.5, 13.3), (-17.2, 78.0, 15.3))


@pytest.fixture(scope="module")
def head(ge_head):
    img = nib.load(ge_head)
    data = np.clip(np.asanyarray(img.dataobj), -1024, 3071).astype(np.int16)
    return data, img.affine, img


@pytest.fixture(scope="module")
def mask(head):
    data, affine, _ = head
    return extract_brain(data, affine)


@pytest.fixture(scope="module")
def clamped_file(head, tmp_path_factory):
    data, _, img = head
    hdr = img.header.copy()
    path = tmp_path_factory.mktemp("brain") / "head_clamped.nii.gz"
    nib.save(nib.Nifti1Image(data, None, hdr), path)
    return path


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _slice_cavities(data):
    """Per axial slice (3rd axis here): largest region enclosed by a closed bone ring."""
    disk = ndi.generate_binary_structure(2, 1)
    out = np.zeros(data.shape, bool)
    filled = np.zeros(data.shape, bool)
    for k in range(data.shape[2]):
        bone = ndi.binary_closing(data[:, :, k] >= 200, disk, iterations=3)
        filled[:, :, k] = ndi.binary_fill_holes(bone)
        labels, n = ndi.label(filled[:, :, k] & ~bone)
        if n:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            # Stay 1 mm clear of bone partial volume.
            out[:, :, k] = ndi.binary_erosion(labels == sizes.argmax(), disk, iterations=2)
    return out, filled


def _world_distance(shape, affine, point, box=None):
    """Distance in mm from ``point`` of the voxels of ``box`` (a tuple of slices)."""
    box = box or tuple(slice(0, n) for n in shape)
    ijk = np.mgrid[box].reshape(3, -1).astype(np.float32)
    xyz = (affine[:3, :3] @ ijk).T + affine[:3, 3]
    return np.linalg.norm(xyz - np.asarray(point), axis=1).reshape([b.stop - b.start for b in box])


def _box_around(shape, affine, point, radius_mm):
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    centre = np.linalg.solve(affine[:3, :3], np.asarray(point) - affine[:3, 3])
    lo = np.maximum(np.floor(centre - radius_mm / zooms), 0).astype(int)
    hi = np.minimum(np.ceil(centre + radius_mm / zooms) + 1, shape).astype(int)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _add_blood(data, region, seed=0):
    """Set ``region`` to textured clotted-blood density (60-80 HU)."""
    rng = np.random.default_rng(seed)
    texture = ndi.gaussian_filter(rng.standard_normal(data.shape).astype(np.float32), 1.5)
    out = data.copy()
    out[region] = np.clip(70 + 30 * texture[region], 60, 80).astype(data.dtype)
    return out


def _blob_at_inner_table(data, affine, direction, volume_ml=15.0, seed=0):
    """A lobulated ~15 mL blob whose edge is pressed into the skull along ``direction``.

    Start at the head's centre (slice 30), walk outwards in world mm to the
    first bone voxel, and centre a sphere so it reaches 2 mm into the bone;
    only non-bone voxels become blood, so the blob lies flat on the inner table.
    """
    inv = np.linalg.inv(affine)
    k = 30
    centre = affine[:3, :3] @ np.r_[np.argwhere(data[:, :, k] > -300).mean(0), k] + affine[:3, 3]
    u = np.asarray(direction, float) / np.linalg.norm(direction)
    for t in np.arange(0.0, 150.0, 0.25):
        vox = np.rint(inv[:3, :3] @ (centre + t * u) + inv[:3, 3]).astype(int)
        if data[tuple(vox)] >= SKULL_HU:
            break
    radius = (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    point = centre + (t - radius + 2.0) * u
    box = _box_around(data.shape, affine, point, 1.2 * radius)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    wobble = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(data[box].shape)
                                 .astype(np.float32), 4.0 / zooms)
    wobble /= np.abs(wobble).max()
    blob = np.zeros(data.shape, bool)
    blob[box] = (_world_distance(data.shape, affine, point, box) <= radius * (1 + 0.15 * wobble))
    return blob & (data < 200)


def test_brain_volume_is_adult_range(head, mask):
    # The field of view holds the whole brain, vertex to foramen magnum, plus the
    # upper cervical cord. Adult intracranial volume is ~1.2-1.8 L; a 0-100 HU
    # brain mask drops dura and sub-zero CSF. Measured here: ~1440 mL.
    _, affine, _ = head
    assert 1150 <= brain_volume_ml(mask, affine) <= 1700


def test_mask_excludes_skull_scalp_eyes(head, mask):
    data, affine, _ = head
    # Only small calcifications inside the brain (choroid plexus) exceed 150 HU.
    assert np.mean(data[mask] > 150) < 1e-3
    labels, _ = ndi.label(data >= SKULL_HU)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    skull = labels == sizes.argmax()
    assert skull.sum() * brain_volume_ml(np.ones(1), affine) > 200  # it is the skull
    assert not np.any(mask & skull)
    # Scalp and head holder: above the skull base (the first slice whose ring
    # encloses >= 80 cm2) the skull is a closed ring; no mask voxel lies outside it.
    cavity, filled = _slice_cavities(data)
    area_cm2 = cavity.sum(axis=(0, 1)) * 0.488 ** 2 / 100
    vault = [k for k in range(np.argmax(area_cm2 >= 80), data.shape[2]) if area_cm2[k] >= 10]
    assert len(vault) >= 30
    assert not np.any(mask[:, :, vault] & ~filled[:, :, vault])
    for centre in GLOBES_MM:
        box = _box_around(data.shape, affine, centre, 9.0)
        globe = _world_distance(data.shape, affine, centre, box) <= 9.0
        assert np.all((data[box][globe] > -100) & (data[box][globe] < 150))  # it is a globe
        assert not np.any(mask[box][globe])


def test_mask_covers_whole_brain(head, mask):
    """Brain density (15-45 HU) enclosed by skull is in the mask, slice by slice.

    A slice counts when its closed bone ring encloses >= 2 cm2 of brain density;
    that is the case from the posterior fossa (cerebellum, foramen magnum) to
    the high convexity, so dropping either would fail the per-slice bound.
    """
    data, affine, _ = head
    cavity, _ = _slice_cavities(data)
    tissue = cavity & (data >= 15) & (data <= 45)
    pixel_cm2 = 0.488 ** 2 / 100
    counted = [k for k in range(data.shape[2]) if tissue[:, :, k].sum() * pixel_cm2 >= 2]
    # Slices are 2.6 mm thick and the brain spans ~15 cm (56 slices in all).
    assert len(counted) >= 40
    world_z = [(affine @ [256, 300, k, 1])[2] for k in (min(counted), max(counted))]
    assert world_z[1] - world_z[0] > 100
    coverage = [mask[:, :, k][tissue[:, :, k]].mean() for k in counted]
    assert min(coverage) >= 0.9, dict(zip(counted, np.round(coverage, 3)))
    assert mask[tissue].mean() >= 0.99


@pytest.mark.parametrize("direction", [(1, 0, 0), (0, -1, 0.3)], ids=["lateral", "posterior"])
def test_blood_against_inner_table_stays_in_mask(head, direction):
    data, affine, _ = head
    blob = _blob_at_inner_table(data, affine, direction)
    assert 10 <= brain_volume_ml(blob, affine) <= 20
    touching = ndi.binary_dilation(blob) & (data >= SKULL_HU)
    assert touching.sum() > 50  # it really lies on the bone
    mask = extract_brain(_add_blood(data, blob), affine)
    assert mask[blob].mean() >= 0.99  # brief asks 0.95; measured 0.9995-1.0


def test_intraventricular_blood_stays_in_mask(head, mask):
    """Lateral ventricles (CSF > 20 mm deep in the brain) filled with a blood cast."""
    data, affine, _ = head
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    box = ndi.find_objects(mask.view(np.uint8))[0]
    deep = ndi.distance_transform_edt(mask[box], sampling=zooms) > 20
    smooth = ndi.gaussian_filter(data[box].astype(np.float32), 1.0 / zooms)
    labels, _ = ndi.label(deep & (smooth < 12) & (data[box] > -20))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    ventricles = np.zeros(mask.shape, bool)
    ventricles[box] = labels == sizes.argmax()
    assert 10 <= brain_volume_ml(ventricles, affine) <= 60  # ~28 mL
    blood = _add_blood(data, ventricles, seed=1)
    assert extract_brain(blood, affine)[ventricles].mean() >= 0.95


def test_reoriented_copy_gives_same_physical_mask(head, mask):
    data, _, img = head
    ornt = np.array([[1, -1], [2, 1], [0, -1]])  # axis i -> axis ornt[i, 0], flipped if -1
    moved = nib.Nifti1Image(data, img.affine).as_reoriented(ornt)
    assert moved.shape == (56, 512, 611)
    # Same physical image: a voxel and its moved copy share value and world point.
    ijk = np.array([100, 200, 10])
    new = np.zeros(3, int)
    for axis, (new_axis, flip) in enumerate(ornt):
        new[new_axis] = ijk[axis] if flip == 1 else data.shape[axis] - 1 - ijk[axis]
    assert np.asanyarray(moved.dataobj)[tuple(new)] == data[tuple(ijk)]
    assert np.allclose(img.affine @ np.r_[ijk, 1], moved.affine @ np.r_[new, 1])

    back = np.zeros_like(ornt)
    back[ornt[:, 0]] = np.column_stack([np.arange(3), ornt[:, 1]])
    moved_mask = extract_brain(np.asanyarray(moved.dataobj), moved.affine)
    assert _dice(apply_orientation(moved_mask, back), mask) >= 0.98


def test_thick_slices_give_same_brain(head, mask):
    """Sizes are in mm: 5.2 mm slices (pairs averaged) give the same brain."""
    data, affine, _ = head
    thick = data.reshape(512, 611, 28, 2).mean(axis=-1)
    thick_affine = affine.copy()
    thick_affine[:3, 2] *= 2
    thick_affine[:3, 3] += affine[:3, 2] / 2
    thick_mask = extract_brain(thick, thick_affine)
    assert abs(brain_volume_ml(thick_mask, thick_affine) / brain_volume_ml(mask, affine) - 1) < 0.05
    reference = mask.reshape(512, 611, 28, 2).mean(axis=-1) >= 0.5
    assert _dice(thick_mask, reference) >= 0.95


def test_not_a_head_raises():
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    water = np.full((64, 64, 20), -1024, np.int16)
    water[8:56, 8:56, 2:18] = 10  # soft tissue with no skull around it
    with pytest.raises(InputError, match="no brain"):
        extract_brain(water, affine)
    with pytest.raises(InputError, match="3D"):
        extract_brain(water[:, :, 0], affine)


def test_interface_keeps_geometry(head, mask, clamped_file, tmp_path, monkeypatch):
    from deepbleed_bids.interfaces.brain import NativeBrainExtraction

    data, affine, _ = head
    monkeypatch.chdir(tmp_path)  # a bare interface writes into the working directory
    out = NativeBrainExtraction(in_file=str(clamped_file)).run().outputs
    ref = nib.load(clamped_file)
    for path, dtype in ((out.out_mask, np.uint8), (out.out_file, np.int16)):
        img = nib.load(path)
        assert img.get_data_dtype() == dtype
        assert np.array_equal(img.affine, ref.affine)
        assert np.array_equal(img.header.get_qform(), ref.header.get_qform())
        assert np.array_equal(img.header.get_sform(), ref.header.get_sform())
        assert img.header["qform_code"] == ref.header["qform_code"]
        assert img.header["sform_code"] == ref.header["sform_code"]
        assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(ref.affine)
    out_mask = np.asanyarray(nib.load(out.out_mask).dataobj)
    brain = np.asanyarray(nib.load(out.out_file).dataobj)
    assert set(np.unique(out_mask)) == {0, 1}
    assert np.array_equal(out_mask > 0, mask)
    assert not np.any(brain[~mask])
    assert np.array_equal(brain[mask], data[mask])
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    assert out.brain_volume_ml == pytest.approx(mask.sum() * voxel_ml)


def _collect(out_mask, out_file, brain_volume_ml):
    return out_mask, out_file, brain_volume_ml


def test_native_workflow_runs(clamped_file, mask, tmp_path):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from deepbleed_bids.workflows.brain import init_brain_extraction_wf

    brain_wf = init_brain_extraction_wf(method="native")
    brain_wf.inputs.inputnode.in_file = str(clamped_file)
    # Identity nodes leave the executed graph, so read outputnode through a consumer.
    collect = pe.Node(niu.Function(function=_collect, output_names=["out_mask", "out_file", "ml"]),
                      name="collect")
    wf = pe.Workflow(name="test_brain_wf", base_dir=str(tmp_path))
    wf.connect(brain_wf, "outputnode.out_mask", collect, "out_mask")
    wf.connect(brain_wf, "outputnode.out_file", collect, "out_file")
    wf.connect(brain_wf, "outputnode.brain_volume_ml", collect, "brain_volume_ml")
    graph = wf.run()
    out = next(n for n in graph.nodes() if n.name == "collect").result.outputs
    assert np.array_equal(np.asanyarray(nib.load(out.out_mask).dataobj) > 0, mask)
    assert not np.any(np.asanyarray(nib.load(out.out_file).dataobj)[~mask])
    assert 1150 <= out.ml <= 1700


def test_fsl_method_needs_fsl():
    from nipype.interfaces import fsl

    from deepbleed_bids.workflows.brain import init_brain_extraction_wf

    if fsl.Info.version() is not None:
        pytest.skip("FSL is installed here; the missing-FSL error cannot be exercised")
    with pytest.raises(DeepBleedError, match="install FSL.*--brain-extraction native"):
        init_brain_extraction_wf(method="fsl")


def test_unknown_method_raises():
    from deepbleed_bids.workflows.brain import init_brain_extraction_wf

    with pytest.raises(DeepBleedError, match="unknown brain extraction method 'bet'"):
        init_brain_extraction_wf(method="bet")


# ---------------------------------------------- already skull-stripped or windowed CT (issue 10)


def _dice_of(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("kind", ["brain-only", "windowed", "windowed-air-1024"])
def test_skull_stripped_input_is_detected_and_masked(head_and_brain, kind):
    from deepbleed_bids.brain import mask_from_background
    from deepbleed_bids.ct import check_hounsfield, clamp_hu

    img, brain = head_and_brain
    hu = clamp_hu(np.asanyarray(img.dataobj))
    if kind == "brain-only":
        data = np.where(brain, hu, 0)
    else:  # as a shared dataset thresholded to -66..320 HU: bone and air blanked
        data = np.where((hu >= -66) & (hu <= 320), hu, 0 if kind == "windowed" else -1024)
    stats = check_hounsfield(data, "x.nii.gz", zooms=img.header.get_zooms())
    assert stats["skull_stripped"] and stats["skull_stripped_reason"].startswith("detected")
    mask = mask_from_background(data, img.affine)
    assert _dice_of(mask, brain) >= 0.99
    assert brain_volume_ml(mask, img.affine) == pytest.approx(brain_volume_ml(brain, img.affine), rel=0.02)
    # the full head is not taken for a skull-stripped one
    assert not check_hounsfield(hu, "head.nii.gz", zooms=img.header.get_zooms())["skull_stripped"]


def test_non_ct_is_refused_even_when_said_skull_stripped(head_and_brain):
    from deepbleed_bids.ct import check_hounsfield

    img, _ = head_and_brain
    mri = np.abs(np.asanyarray(img.dataobj)).astype(np.int16) % 400  # arbitrary units, no HU
    with pytest.raises(InputError, match="does not look like a head CT.*nor like an already"):
        check_hounsfield(mri, "mri.nii.gz", zooms=img.header.get_zooms())
    with pytest.raises(InputError, match="--skull-stripped"):
        check_hounsfield(mri, "mri.nii.gz", skull_stripped=True, zooms=img.header.get_zooms())


@pytest.fixture(scope="module")
def thick_ratios(head_and_brain):
    """Brain volume of the real head re-sliced to 5 and 7 mm axial slices, relative to the
    2.6 mm original; also the original mask re-sliced the same way (slab average >= 50 %),
    which shows the re-slicing itself keeps the volume, so the comparison is fair."""
    from deepbleed_bids import synth

    img, brain = head_and_brain
    data = np.asanyarray(img.dataobj)
    # the mask as an image on the same re-slice grid (reslice sizes its grid on the head > -300 HU)
    marked = like(np.where(brain, 2000, np.where(data > -300, 0, -1024)).astype(np.int16), img)
    volume = brain_volume_ml(brain, img.affine)
    out = {}
    for slice_mm in (5.0, 7.0):
        thick, _ = synth.reslice(img, slice_mm=slice_mm)
        assert thick.shape[2] >= 20 and thick.header.get_zooms()[2] == pytest.approx(slice_mm)
        reference, _ = synth.reslice(marked, slice_mm=slice_mm)
        assert reference.shape == thick.shape and np.allclose(reference.affine, thick.affine)
        reference = np.asanyarray(reference.dataobj) > 1000
        mask = extract_brain(np.asanyarray(thick.dataobj), thick.affine)
        out[slice_mm] = dict(mask=brain_volume_ml(mask, thick.affine) / volume,
                             reference=brain_volume_ml(reference, thick.affine) / volume,
                             dice=_dice(mask, reference),
                             bone=np.mean(np.asanyarray(thick.dataobj)[mask] >= 200))
    print("thick slices, brain volume / original:", out)
    return out


def test_thick_slices_keep_brain_volume_within_5_percent(thick_ratios):
    # Issue 10: 5 and 7 mm within 5 % of the 2.6 mm original. Measured 0.980 (5 mm) and
    # 0.969 (7 mm); 0.943 and 0.900 before thin bone partial-volumed below 200 HU stopped
    # opening the skull base.
    for r in thick_ratios.values():
        assert abs(r["reference"] - 1.0) <= 0.01  # re-slicing alone keeps the volume
        assert abs(r["mask"] - 1.0) <= 0.05
        assert r["dice"] >= 0.97  # the same brain, not just the same volume (measured 0.982-0.986)
        # the lower shell threshold lets no skull base, petrous bone or streak into the mask
        assert r["bone"] < 1e-3


def test_skull_stripped_flag_reaches_the_config(tmp_path):
    from deepbleed_bids.cli.parser import build_parser
    from deepbleed_bids.cli.run import config_from_args

    args = ["bids", str(tmp_path / "out"), "participant"]
    assert not config_from_args(build_parser().parse_args(args)).skull_stripped
    config = config_from_args(build_parser().parse_args(args + ["--skull-stripped"]))
    assert config.skull_stripped and config.parameters()["skull_stripped"]


@pytest.fixture(scope="module")
def cut_heads(head_and_brain):
    """The real head turned (24, 5, -18 deg about its brain's centre), re-sliced to 6 mm and cut
    at the top or the bottom (26 % of its extent missing), as partial-coverage scans are; with
    the original brain mask re-sliced the same way as the reference."""
    from scipy.spatial.transform import Rotation

    from deepbleed_bids import synth

    img, brain = head_and_brain
    data = np.asanyarray(img.dataobj)
    marked = like(np.where(brain, 2000, np.where(data > -300, 0, -1024)).astype(np.int16), img)
    centre = (img.affine @ np.r_[np.argwhere(brain).mean(axis=0), 1.0])[:3]
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", (24.0, 5.0, -18.0), degrees=True).as_matrix()
    motion[:3, 3] = centre - motion[:3, :3] @ centre
    out = {}
    for name, keep in (("top cut", (0.0, 0.74)), ("bottom cut", (0.26, 1.0))):
        case, _ = synth.reslice(img, motion, slice_mm=6.0, keep=keep)
        reference, _ = synth.reslice(marked, motion, slice_mm=6.0, keep=keep)
        reference = np.asanyarray(reference.dataobj) > 1000
        mask = extract_brain(np.asanyarray(case.dataobj), case.affine)
        out[name] = {"ratio": brain_volume_ml(mask, case.affine) / brain_volume_ml(reference, case.affine),
                     "dice": _dice(mask, reference),
                     "worst_slice": min(_dice(mask[:, :, k], reference[:, :, k])
                                        for k in range(mask.shape[2]) if reference[:, :, k].sum() > 2000)}
    print("cut heads:", out)
    return out


@pytest.mark.parametrize("name", ["top cut", "bottom cut"])
def test_head_cut_through_the_cranium_keeps_its_brain(cut_heads, name):
    # Issue 10: a scan that misses the vertex or the skull base. The array's border had counted as
    # air, so every section reaching the cut was open, and where the skull base opened the others
    # too whole blocks of brain were dropped (top cut: 0.53 of the brain kept, a slice's Dice 0.3).
    r = cut_heads[name]
    assert abs(r["ratio"] - 1.0) <= 0.05
    assert r["dice"] >= 0.95
    assert r["worst_slice"] >= 0.85  # no block missing from any slice with brain in it
