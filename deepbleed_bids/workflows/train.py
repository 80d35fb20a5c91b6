"""Training data preparation: the inference preprocessing plus the reference mask on the template grid."""
from nipype.pipeline import engine as pe

from ..interfaces.train import ExportCase, MaskToTemplate
from .preproc import init_preproc_wf


def init_training_case_wf(pair, template, out_file, brain_extraction="native", seed=1,
                          omp_nthreads=1, name=None):
    """One CT and its reference mask -> ``out_file`` (.npz: template-grid image, mask, metadata).

    ``pair`` comes from :func:`deepbleed_bids.training.data.collect_pairs`. The image goes
    through :func:`init_preproc_wf` exactly as at inference (clamp, brain extraction, rigid
    registration, nearest neighbour); the mask follows with the same transform
    (:class:`MaskToTemplate`: linear, then >= 0.5).
    """
    from pathlib import Path

    from ..execution import workflow_name

    source = pair["source"]
    wf = pe.Workflow(name=name or workflow_name(source["relpath"], kind="case"))
    preproc = init_preproc_wf(source["path"], template, brain_extraction, seed, omp_nthreads)
    to_template = pe.Node(MaskToTemplate(in_mask=pair["mask"], reference=source["path"],
                                         template=template), name="mask_to_template", mem_gb=1.0)
    meta = {"relpath": source["relpath"], "subject": source["entities"]["subject"],
            "session": source["entities"].get("session"), "mask": pair["mask"],
            "source": source["path"]}
    export = pe.Node(ExportCase(out_dir=str(Path(out_file).parent), out_name=Path(out_file).name, meta=meta),
                     name="export")
    po = "outputnode."
    wf.connect([
        (preproc, to_template, [(po + "transform", "transform")]),
        (preproc, export, [(po + "template_ct", "template_ct"), (po + "similarity", "similarity")]),
        (to_template, export, [("out_file", "template_mask"), ("native_volume_ml", "native_volume_ml"),
                               ("template_volume_ml", "template_volume_ml")]),
    ])
    return wf


def init_training_data_wf(pairs, template, cases_dir, work_dir, brain_extraction="native", seed=1,
                          omp_nthreads=1, name="training_data_wf"):
    """Every pair's case workflow; case files land in ``cases_dir/<image id>.npz``."""
    from pathlib import Path

    from ..bids import image_id

    wf = pe.Workflow(name=name, base_dir=str(work_dir))
    for pair in pairs:
        out = Path(cases_dir) / f"{image_id(pair['source']['relpath'])}.npz"
        wf.add_nodes([init_training_case_wf(pair, template, out, brain_extraction, seed, omp_nthreads)])
    return wf
