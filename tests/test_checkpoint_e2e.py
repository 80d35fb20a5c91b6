"""The published-weights path through ``run.py participant``: each checkpoint form a user has.

The weights are known: the bundled synthetic-demo network (width 4, 3^3 kernels,
trained, so its output means something) written into the published object graph
(deepbleed-checkpoint-variables.txt names) by tf.Module objects, as the original
model code's ``save_weights`` writes it. Three runs share one work folder (the
preprocessing is cached; only the network and the outputs run again):

- the published zip (``mistie_2/_index``, ``mistie_2/_data-...``, ``checkpoint``);
- the unzipped published folder (``.index``, ``.data-...``: an EMPTY prefix);
- that folder renamed to ``weights.*`` as the DeepBleed README suggests.

Each run's template-space probability map must equal the network with the same
weights loaded directly (``.weights.h5``, no checkpoint) on the run's own
network input, and its mask must find the inserted hematoma. Every run also
passes ``--bids-filter-file``: the filtered-out session must not be processed.
"""
import json
import shutil
import zipfile

import nibabel as nib
import numpy as np
import pytest

from deepbleed_bids import synth
from deepbleed_bids.metrics import dice
from deepbleed_bids.model.weights import sha256_file, weights_sha256
from deepbleed_bids.testing import run_bids_app, write_bids_dataset

from test_vnet import _write_checkpoint  # the published object graph from tf.Module objects

FORMS = ("zip", "folder", "renamed")
CT = "sub-01/ses-1/ct/sub-01_ses-1_ct.nii.gz"
EXCLUDED = "sub-01/ses-2/ct/sub-01_ses-2_ct.nii.gz"


def _demo_variables():
    """The synthetic-demo weights as checkpoint variables (``down_1/convolution/kernel``...)."""
    from deepbleed_bids.model.vnet import weight_layers
    from deepbleed_bids.model.zoo import load_model, resolve_model

    spec = resolve_model("synthetic-demo")
    model = load_model(spec)
    out = {}
    for obj, layer in weight_layers(model).items():
        out[f"{obj}/kernel"], out[f"{obj}/bias"] = (w.numpy() for w in layer.weights)
    return spec, out


def _checkpoint_forms(root, variables):
    """{form: --model argument} for the three forms, written from ``variables``."""
    staging = root / "staging"
    _write_checkpoint(variables, staging / "weights")
    files = sorted(staging.glob("weights.*"))
    assert any(f.name == "weights.index" for f in files) and any(".data-" in f.name for f in files)
    published = root / "mistie_2"  # the published folder: files with an EMPTY prefix
    published.mkdir()
    for f in files:
        shutil.copy(f, published / f.name[len("weights"):])
    (published / "checkpoint").write_text('model_checkpoint_path: "."\nall_model_checkpoint_paths: "."\n')
    zpath = root / "mistie_2-20200122T175000Z-001.zip"
    with zipfile.ZipFile(zpath, "w") as archive:
        for f in sorted(published.iterdir()):  # the zip spells the leading '.' as '_'
            name = f.name if f.name == "checkpoint" else "_" + f.name[1:]
            archive.write(f, f"mistie_2/{name}")
    renamed = root / "renamed"
    renamed.mkdir()
    for f in published.glob(".*"):
        shutil.copy(f, renamed / ("weights" + f.name))
    return {"zip": zpath, "folder": published, "renamed": renamed}


@pytest.fixture(scope="module")
def runs(head_and_brain, asset_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_e2e")
    head, brain = head_and_brain
    img, truth, info = synth.insert_hematoma(head, brain, 25.0, rng=np.random.default_rng(1007),
                                             location="deep", shape_seed=7)
    bids = write_bids_dataset(root / "bids", {CT: img, EXCLUDED: head})
    filters = root / "filter.json"
    filters.write_text(json.dumps({"ct": {"session": "1"}}))
    spec, variables = _demo_variables()
    models = _checkpoint_forms(root, variables)
    outs = {}
    for form in FORMS:
        out = root / f"out-{form}"
        proc = run_bids_app(bids, out, "--bids-filter-file", filters, "--work-dir", root / "work",
                            "--nprocs", "2", model=models[form], home=asset_home)
        assert proc.returncode == 0, f"{form}: {proc.stderr[-3000:]}"
        outs[form] = out
    return {"outs": outs, "models": models, "truth": truth, "info": info, "spec": spec}


def _output(out, kind):
    stem = CT.replace("_ct.nii.gz", "")
    return out / {"prob": f"{stem}_space-DeepBleedCT_desc-hemorrhage_probseg.nii.gz",
                  "input": f"{stem}_space-DeepBleedCT_desc-preproc_ct.nii.gz",
                  "mask": f"{stem}_desc-hemorrhage_mask.nii.gz",
                  "sidecar": f"{stem}_desc-hemorrhage_mask.json"}[kind]


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_checkpoint_equals_the_weights_loaded_directly(runs, form):
    from deepbleed_bids.model.predict import predict_volume
    from deepbleed_bids.model.vnet import build_vnet

    out = runs["outs"][form]
    net_input = np.asanyarray(nib.load(_output(out, "input")).dataobj).astype(np.float32)
    prob = np.asanyarray(nib.load(_output(out, "prob")).dataobj)
    spec = runs["spec"]  # the same weights, from the .weights.h5, with no checkpoint involved
    direct = build_vnet(width=spec.width, kernel_size=spec.kernel_size)
    direct.load_weights(spec.path)
    expected = predict_volume(direct, net_input)
    assert (expected >= 0.5).sum() > 1000  # the hematoma is found: the comparison means something
    np.testing.assert_allclose(prob, expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_checkpoint_run_finds_the_hematoma_and_records_the_weights(runs, form):
    out = runs["outs"][form]
    mask = np.asanyarray(nib.load(_output(out, "mask")).dataobj) > 0
    score = dice(mask, runs["truth"])
    sidecar = json.loads(_output(out, "sidecar").read_text())
    print(f"{form}: Dice {score:.3f}, {sidecar['HemorrhageVolume']:.2f} vs {runs['info']['volume_ml']:.2f} mL")
    assert score >= 0.85
    model = sidecar["Model"]
    assert (model["Format"], model["Width"]) == ("tf-checkpoint", 4)
    if form == "zip":  # the digest of the file the user has (the published one is pinned by it)
        assert model["WeightsSHA256"] == sha256_file(runs["models"]["zip"])
    else:  # the same weights in either folder naming: one digest
        assert model["WeightsSHA256"] == weights_sha256(
            [p for p in runs["models"]["folder"].iterdir() if p.name != "checkpoint"])


@pytest.mark.slow
def test_filter_file_keeps_the_other_session_out(runs):
    for out in runs["outs"].values():
        assert _output(out, "mask").is_file()
        assert not (out / "sub-01" / "ses-2").exists()
        assert not list(out.glob("**/*ses-2*.nii.gz"))
