"""Faster code paths of issue #13 give what the plain ones give (real head, real ANTs)."""
import nibabel as nib
import numpy as np
import pytest

from deepbleed_bids import atlas as A
from deepbleed_bids import midline as M
from deepbleed_bids.reports import figures as F


@pytest.fixture(scope="module")
def rigid(tmp_path_factory):
    """A rigid ITK transform (template -> scan points): 7 deg about the vertical axis and a
    shift, written with ANTs as the registration writes its transforms."""
    import ants

    a = np.deg2rad(7.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="double", dimension=3,
                                    matrix=rot, translation=[4.0, -6.0, 10.0])
    path = str(tmp_path_factory.mktemp("xfm") / "rigid0GenericAffine.mat")
    ants.write_transform(tx, path)
    return path


def test_carry_labels_within_the_brain_is_the_whole_grid_result_there(head_and_brain, rigid):
    img, brain = head_and_brain
    whole = np.asanyarray(A.carry_labels(A.atlas_image(), img, rigid).dataobj)
    boxed_img = A.carry_labels(A.atlas_image(), img, rigid, within=brain)
    boxed = np.asanyarray(boxed_img.dataobj)
    assert boxed_img.shape == img.shape and np.array_equal(boxed_img.affine, img.affine)
    assert np.array_equal(boxed_img.header.get_qform(), img.header.get_qform())
    assert not boxed[~brain].any()
    inside = whole[brain]
    assert (inside > 0).mean() > 0.5  # the atlas does land on the brain
    # genericLabel per voxel depends only on its position: the same labels, but for ties
    # broken by float rounding of the shifted origin
    assert (boxed[brain] != inside).mean() < 1e-4
    # linear interpolation (the ventricle prior): the same values to float precision
    prior = nib.Nifti1Image(A.ventricle_prior().astype(np.float32), A.atlas_image().affine)
    lin_whole = np.asanyarray(A.carry_labels(prior, img, rigid, "linear").dataobj)
    lin_boxed = np.asanyarray(A.carry_labels(prior, img, rigid, "linear", within=brain).dataobj)
    assert np.abs(lin_boxed - np.where(brain, lin_whole, 0)).max() < 1e-3
    empty = A.carry_labels(A.atlas_image(), img, rigid, within=np.zeros(img.shape, bool))
    assert not np.asanyarray(empty.dataobj).any()
    with pytest.raises(ValueError, match="shape"):
        A.carry_labels(A.atlas_image(), img, rigid, within=brain[:-1])


def _line_by_line(lines, us, vs, ws, du):
    """The septum / slit scan one line at a time (the code before vectorisation)."""
    septum, slits = [], []
    min_run, free = int(round(2.0 / du)), int(round(5.0 / du))
    for j in range(lines.shape[1]):
        for k in range(lines.shape[2]):
            row = np.concatenate([[False], lines[:, j, k], [False]]).astype(np.int8)
            edges = np.flatnonzero(np.diff(row))
            runs = list(zip(edges[::2], edges[1::2]))
            for (a0, a1), (b0, b1) in zip(runs[:-1], runs[1:]):
                gap = (b0 - a1) * du
                if 0.5 <= gap <= 6.0 and a1 - a0 >= min_run and b1 - b0 >= min_run:
                    c = 0.5 * (us[a1 - 1] + us[b0])
                    if abs(c) <= M.MAX_SHIFT_MM:
                        septum.append((c, vs[j], ws[k], j, k))
            for a0, a1 in runs:
                c = 0.5 * (us[a0] + us[a1 - 1])
                if 1.5 <= (a1 - a0) * du <= 8.0 and abs(c) <= M.MAX_SHIFT_MM and a0 >= free \
                        and a1 + free <= len(us) and not lines[a0 - free:a0, j, k].any() \
                        and not lines[a1:a1 + free, j, k].any():
                    slits.append((c, vs[j], ws[k], j, k))
    return septum, slits


@pytest.mark.parametrize("density", [0.03, 0.15, 0.4])
def test_vectorised_septum_scan_finds_what_a_line_by_line_scan_finds(density):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(int(density * 100))
    # runs of CSF a few samples long along u, as on lines across the plane
    lines = ndi.binary_dilation(rng.random((121, 30, 20)) < density, np.ones((5, 1, 1), bool))
    us, vs, ws = np.arange(-30.0, 30.25, 0.5), np.arange(30.0), np.arange(20.0)
    septum, slits = M._line_candidates(lines, us, vs, ws, 0.5)
    ref_septum, ref_slits = _line_by_line(lines, us, vs, ws, 0.5)
    assert len(ref_septum) + len(ref_slits) > 0
    assert np.array_equal(np.array(septum, float).reshape(-1, 5), np.array(ref_septum, float).reshape(-1, 5))
    assert np.array_equal(np.array(slits, float).reshape(-1, 5), np.array(ref_slits, float).reshape(-1, 5))


def test_mosaic_panels_edges_and_labels():
    from io import BytesIO

    from PIL import Image

    mask = np.zeros((40, 30), bool)
    mask[10:20, 5:15] = True
    rgb = F.gray(np.full((40, 30), 40.0))
    assert np.allclose(rgb, 0.5)  # 40 HU in the 0-80 HU window
    F.edge(rgb, mask, F.BLEED_COLOR)
    red = np.all(rgb == F._rgb(F.BLEED_COLOR), axis=2)
    assert red[10, 5:15].all() and red[19, 5:15].all() and not red[12:18, 7:13].any()
    full = F.gray(np.zeros((8, 8)))
    F.edge(full, np.ones((8, 8), bool), F.BLEED_COLOR)  # a mask filling the panel has no edge
    assert not full.any()
    assert F.thin(np.arange(16.0).reshape(4, 4), 2).tolist() == [[2.5, 4.5], [10.5, 12.5]]
    mosaic = F.Mosaic(3, 2, (30, 40))  # 3 panels of 30 rows x 40 columns, 2 per row
    for k in range(3):
        mosaic.put(k, F.displayed(rgb))
        mosaic.label(k, f"z {k}", "bl", 7)
    with Image.open(BytesIO(mosaic.png())) as im:
        out = np.asarray(im.convert("RGB"))
    assert out.shape[0] == 2 * mosaic.h + mosaic.gap and out.shape[1] == 2 * mosaic.w + mosaic.gap
    assert mosaic.zoom == 5  # small panels are scaled up to ~200 px
    # radiological display: data x runs right to left, data y bottom to top
    shown = F.displayed(rgb)
    assert np.array_equal(shown[-1, -1], rgb[0, 0])


def _slow_module(name, seconds):
    """A meta-path finder whose module ``name`` takes ``seconds`` to import."""
    import importlib.util
    import time

    class Loader:
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            time.sleep(seconds)

    class Finder:
        def find_spec(self, fullname, path=None, target=None):
            return importlib.util.spec_from_loader(fullname, Loader()) if fullname == name else None

    return Finder()


def test_while_importing_overlaps_the_imports_and_returns_after_both():
    """The validator's wait and the nodes' imports (ANTs) overlap; nothing runs after until both end."""
    import sys
    import threading
    import time

    from deepbleed_bids.execution import while_importing

    name = "deepbleed_bids_slow_test_module"
    sys.meta_path.insert(0, _slow_module(name, 0.6))
    try:
        start = time.monotonic()
        out = while_importing(lambda: (time.sleep(0.6), "validated")[1], modules=(name,))
        elapsed = time.monotonic() - start
        assert out == "validated" and name in sys.modules
        assert elapsed < 1.1, f"{elapsed:.2f} s: the import and the wait ran one after the other"
        assert not [t for t in threading.enumerate() if t.name == "deepbleed-warm-imports"]
        sys.modules.pop(name)
        with pytest.raises(RuntimeError, match="refused"):  # the caller's error comes through
            while_importing(lambda: (_ for _ in ()).throw(RuntimeError("refused")), modules=(name,))
        assert name in sys.modules
    finally:
        sys.meta_path.pop(0)
        sys.modules.pop(name, None)


@pytest.mark.parametrize("settings, expected", [
    ({"nprocs": 1}, True),
    ({"nprocs": 2}, True),  # MultiProc workers fork from this process after the import
    ({"nprocs": 2, "plugin": "SLURM", "work_dir": "/w"}, False),  # nodes run elsewhere
    ({"nprocs": 1, "skip_bids_validation": True}, False),
    ({"nprocs": 1, "boilerplate_only": True}, False),  # no node runs
])
def test_node_modules_load_during_validation_for_local_runs_only(tmp_path, settings, expected):
    from deepbleed_bids.config import Config
    from deepbleed_bids.runner import imports_during_validation

    config = Config(bids_dir=str(tmp_path), output_dir=str(tmp_path / "out"), **settings)
    assert imports_during_validation(config) is expected


def test_quick_exit_freezes_the_objects_left_for_the_last_collection():
    import gc

    from deepbleed_bids.cli.main import quick_exit

    gc.unfreeze()
    try:
        assert quick_exit(3) == 3 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _scipy_largest(mask, connectivity):
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask, structure=ndi.generate_binary_structure(mask.ndim, connectivity))
    if n <= 1:
        return lab > 0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == np.argmax(sizes)


@pytest.mark.parametrize("shape", [(40, 50, 30), (64, 48)])
def test_largest_component_is_scipys_choice_ties_included(shape):
    """cc3d labels faster; the component chosen is the one scipy.ndimage.label picks, in
    every connectivity, for C and Fortran arrays, and when two components tie for largest."""
    from deepbleed_bids.nifti import largest_component

    rng = np.random.default_rng(5)
    for density in (0.05, 0.3, 0.45):
        mask = rng.random(shape) < density
        for connectivity in (1, 2, 3)[:len(shape)]:
            for m in (mask, np.asfortranarray(mask)):
                assert np.array_equal(largest_component(m, connectivity), _scipy_largest(m, connectivity))
    tie = np.zeros(shape, bool)  # two single voxels and two 2-voxel bars: the first bar wins
    tie[(5,) * len(shape)] = tie[(20,) * len(shape)] = True
    tie[(30, 3) + (3,) * (len(shape) - 2)] = tie[(31, 3) + (3,) * (len(shape) - 2)] = True
    tie[(10, 40) + (8,) * (len(shape) - 2)] = tie[(11, 40) + (8,) * (len(shape) - 2)] = True
    for m in (tie, np.asfortranarray(tie)):
        out = largest_component(m, 1)
        assert np.array_equal(out, _scipy_largest(m, 1)) and out.sum() == 2 and out[(10, 40) + (8,) * (len(shape) - 2)]
    assert not largest_component(np.zeros(shape, bool), 1).any()
    grid = np.zeros(shape, bool)  # hundreds of single voxels, all tied
    grid[(slice(3, None, 4),) * len(shape)] = True
    assert np.array_equal(largest_component(np.asfortranarray(grid), 1), _scipy_largest(grid, 1))
