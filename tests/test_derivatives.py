"""Derivative names both ways: what plan_outputs writes, find_outputs finds back."""
import json
from pathlib import Path

from deepbleed_bids.derivatives import derivative_path, entities, find_outputs, plan_outputs, raw_source, \
    raw_uri, sidecar_path

SOURCES = [
    "sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz",
    "sub-01/ses-2/ct/sub-01_ses-2_acq-thin_run-2_ct.nii.gz",
    "sub-02/anat/sub-02_rec-soft_CT.nii.gz",  # anat/ layout, upper-case suffix
]


def _write(out, relpath, sidecar=True):
    planned = plan_outputs(out, relpath)
    for key, path in planned.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"image")
        if sidecar:
            sidecar_path(path).write_text(json.dumps({"Sources": [raw_uri(relpath)], "Key": key}))
    return planned


def test_names_written_are_found_back(tmp_path):
    out = tmp_path / "out"
    planned = {rel: _write(out, rel) for rel in SOURCES}
    # not native-space hemorrhage outputs of a CT: must not be found
    (out / "sub-01" / "figures").mkdir(parents=True)
    (out / "sub-01" / "figures" / "sub-01_ses-1_desc-hemorrhage_mask.json").write_text("{}")
    (out / "sub-01" / "ses-1" / "ct" / "sub-01_ses-1_desc-hemorrhage_mask.tsv").write_text("x")
    (out / "sub-01" / "ses-1" / "ct" / "sub-01_ses-1_space-DeepBleedCT_desc-hemorrhage_mask.nii.gz").write_bytes(b"")

    found = find_outputs(out)
    assert sorted(f.source for f in found) == sorted(SOURCES)
    for f in found:
        want = planned[f.source]
        assert f.mask == want["hemorrhage_mask"]
        assert f.sidecar == sidecar_path(want["hemorrhage_mask"])
        assert f.meta == {"Sources": [raw_uri(f.source)], "Key": "hemorrhage_mask"}
        assert f.error is None
        assert f.paths == want  # every planned output, template-space ones included
        assert f.folder == want["hemorrhage_mask"].parent
    ents = {f.source: f.entities for f in found}
    assert ents[SOURCES[1]] == {"sub": "01", "ses": "2", "acq": "thin", "run": "2"}
    assert ents[SOURCES[2]] == {"sub": "02", "rec": "soft"}
    # one participant only
    assert [f.source for f in find_outputs(out, subject="02")] == [SOURCES[2]]
    assert [f.source for f in find_outputs(out, subject="sub-02")] == [SOURCES[2]]


def test_without_sidecar_or_unreadable(tmp_path):
    out = tmp_path / "out"
    _write(out, SOURCES[0], sidecar=False)  # e.g. a folder of reference masks
    bad = _write(out, SOURCES[1])
    sidecar_path(bad["hemorrhage_mask"]).write_text("{not json")
    found = {f.prefix: f for f in find_outputs(out)}
    first = found["sub-01_ses-1"]
    assert first.sidecar is None and first.meta is None
    assert first.mask == plan_outputs(out, SOURCES[0])["hemorrhage_mask"]
    # no Sources to read: the source is named from the output, with the usual suffix
    assert first.source == SOURCES[0]
    second = found["sub-01_ses-2_acq-thin_run-2"]
    assert second.error and "Expecting" in second.error
    assert second.source == SOURCES[1]  # from the name, since the sidecar could not be read
    # read=False leaves the sidecars alone
    assert all(f.meta is None and f.error is None for f in find_outputs(out, read=False))


def test_raw_uris_round_trip():
    rel = SOURCES[1]
    assert raw_uri(rel) == f"bids:raw:{rel}"
    assert raw_source({"Sources": ["bids::other.nii.gz", raw_uri(rel)]}) == rel
    assert raw_source({"Sources": []}) is None and raw_source(None) is None
    name = derivative_path("/o", rel, "mask", desc="hemorrhage").name
    assert entities(name[: -len("_desc-hemorrhage_mask.nii.gz")]) == entities(Path(rel).name[: -len("_ct.nii.gz")])
