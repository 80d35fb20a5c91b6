"""Report figures and pages (deepbleed_bids.reports) on the real head, without the network."""
from html.parser import HTMLParser
from io import BytesIO

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from deepbleed_bids import qc
from deepbleed_bids.reports import figures as F
from deepbleed_bids.reports.participant import write_participant_report
from deepbleed_bids.synth import insert_hematoma


@pytest.fixture(scope="module")
def head(head_and_brain):
    return head_and_brain


def _rgb(png):
    with Image.open(BytesIO(png)) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _red(rgb):
    return (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)


def test_mosaic_is_radiological_and_shows_the_lesion(head):
    """A bleed in the patient's right hemisphere appears on the left of the panel."""
    img, brain = head
    ras = nib.as_closest_canonical(img)
    bleed, truth, info = insert_hematoma(img, brain, 15.0, np.random.default_rng(2), "deep")
    ct, zooms = F.canonical(bleed)
    b, _ = F.canonical(nib.Nifti1Image(brain.astype(np.uint8), img.affine))
    h, _ = F.canonical(nib.Nifti1Image(truth.astype(np.uint8), img.affine))
    right = (ras.affine @ [*np.argwhere(h).mean(0), 1])[0] > (ras.affine @ [*np.argwhere(b).mean(0), 1])[0]
    k = int(np.argmax(h.sum((0, 1))))
    one = np.zeros_like(h)
    one[:, :, k] = h[:, :, k]
    only = np.zeros_like(b)
    only[:, :, k] = b[:, :, k]  # the mosaic spans the brain: keep one slice, the lesion's
    rgb = _rgb(F.overview_mosaic(ct, only, one, zooms, n=1, cols=1))
    cols = np.nonzero(_red(rgb))[1]
    assert cols.size > 50
    assert (cols.mean() < rgb.shape[1] / 2) == right  # radiological: patient's right on the left
    # the detail mosaic exists and draws the ABC/2 diameters on the slice of largest area
    abc = qc.abc2(h > 0, ras.affine)
    assert abc["slice"] == k
    detail = _rgb(F.detail_mosaic(ct, b, h, zooms, abc))
    green = (detail[..., 1] > 200) & (detail[..., 0] < 160) & (detail[..., 2] < 100)
    assert green.sum() > 20  # the A line
    assert F.detail_mosaic(ct, b, np.zeros_like(h), zooms) is None


def test_skull_base_figure_cuts_through_the_petrous_bones(head):
    """The report's skull-base panels: a coronal plane through the petrous bones, the mask
    outlined, and no mask voxel on bone in either plane."""
    img, brain = head
    ct, zooms = F.canonical(img)
    b, _ = F.canonical(nib.Nifti1Image(brain.astype(np.uint8), img.affine))
    x, y = F.skull_base_planes(ct, b > 0)
    coronal, sagittal = ct[:, y], ct[x]
    # dense bone (petrous pyramids, >= 600 HU) below the brain in the coronal plane
    assert np.count_nonzero(coronal >= 600) * zooms[0] * zooms[2] > 300  # mm2
    for plane, mask in ((coronal, b[:, y] > 0), (sagittal, b[x] > 0)):
        assert mask.sum() > 1000 and np.mean(plane[mask] >= 200) < 1e-3
    rgb = _rgb(F.skull_base_figure(ct, b, zooms))
    cyan = (rgb[..., 0] < 90) & (rgb[..., 1] > 170) & (rgb[..., 2] > 200)
    half = rgb.shape[1] // 2
    assert cyan[:, :half].sum() > 100 and cyan[:, half:].sum() > 100  # an outline in both panels
    assert F.skull_base_figure(ct, np.zeros_like(b), zooms) is None


def test_alignment_figure_renders(template_path, head):
    tpl = nib.load(template_path)
    rgb = _rgb(F.alignment_figure(tpl, tpl))  # the template on itself: edges sit on its brain
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 170) & (rgb[..., 2] < 80)
    assert yellow.sum() > 500 and rgb.shape[0] > 300


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.text = set(), []

    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k == "id")

    def handle_data(self, data):
        self.text.append(data)


def test_report_of_a_participant_whose_images_all_failed(tmp_path):
    failures = [("sub-07/ses-1/ct/sub-07_ses-1_ct.nii.gz", "not a 3D volume (shape (512, 512, 1))"),
                ("sub-08/ct/sub-08_ct.nii.gz", "someone else's")]
    skipped = [("sub-07/ses-1/ct/sub-07_ses-1_acq-bone_ct.nii.gz", "bone kernel")]
    path = write_participant_report(tmp_path, None, "07", failures, skipped)
    page = _Ids()
    page.feed(path.read_text())
    text = " ".join(page.text)
    assert {"sub-07_ses-1", "sub-07_ses-1_acq-bone"} <= page.ids
    assert "FAILED" in text and "not a 3D volume" in text and "skipped" in text
    assert "someone else" not in text
    assert write_participant_report(tmp_path, None, "09") is None  # nothing known: no page


def test_summary_row_carries_the_split_caution():
    """A mass-effect fit's caution reaches the reader beside the IVH / parenchymal volumes."""
    from deepbleed_bids.reports.participant import _summary

    meta = {"HemorrhageVolume": 40.0, "IntraventricularVolume": 2.9, "ParenchymalVolume": 37.1,
            "HemorrhageSplit": {"PriorFit": "SyN", "Caution": "mass-effect fit ran: review the IVH part <x>"}}
    html = _summary(meta)
    assert "2.90 mL / 37.10 mL (mass-effect fit ran: review the IVH part &lt;x&gt;)" in html
    del meta["HemorrhageSplit"]["Caution"]
    assert "review" not in _summary(meta) and "2.90 mL / 37.10 mL" in _summary(meta)


def test_uncertainty_text_shows_the_calibration_interval():
    """--tta ...+hu: the volume with the brain's HU shifted by -/+4 is shown beside the pass interval."""
    from deepbleed_bids.reports.participant import _uncertainty_text

    unc = {"TTA": "flip+hu", "Passes": 2, "UncertainVolume": 0.2, "VolumeInterval": [1.9, 2.3], "PassDice": 0.91,
           "CalibrationShiftHU": 4.0, "CalibrationInterval": [0.0, 9.8]}
    text = _uncertainty_text({"Uncertainty": unc})
    assert "volume 1.9-2.3 mL" in text and "HU shifted by -/+4: 0.0-9.8 mL" in text
    del unc["CalibrationInterval"]
    assert "HU shifted" not in _uncertainty_text({"Uncertainty": unc})
