"""Workflow for one CT image: preprocessing -> VNet -> native space -> derivatives."""
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.derivatives import WriteDerivatives
from ..interfaces.dicom import WriteDicom
from ..interfaces.qc import ComputeQC
from ..interfaces.registration import ToNative
from ..interfaces.segment import Uncertainty, VNetSegment
from ..interfaces.trial import TrialMeasures
from ..interfaces.ventricles import HemorrhageSplit
from .preproc import init_preproc_wf


def _timings(clamp, brain, register, segment, forward, native, split=0.0, trial=0.0):
    return {"clamp": clamp, "brain_extraction": brain, "registration": register,
            "segmentation": segment, "vnet_forward": forward, "to_native": native,
            "ivh_split": split, "trial_measures": trial}


def init_ct_wf(config, source, name=None):
    """Build the workflow for one source image (``source`` from :func:`deepbleed_bids.bids.collect_ct`)."""
    from ..execution import workflow_name

    threads = max(1, int(config.omp_nthreads))
    wf = pe.Workflow(name=name or workflow_name(source["relpath"]))
    preproc = init_preproc_wf(source["path"], config.template, config.brain_extraction,
                              config.seed, threads, getattr(config, "skull_stripped", False))
    segment = pe.Node(VNetSegment(model_spec=config.model_spec, device=config.device,
                                  model_sha256=config.model_spec.get("sha256", ""),
                                  mixed_precision=config.mixed_precision, num_threads=threads,
                                  precision=config.precision,
                                  tta=getattr(config, "tta", "auto") or "auto", threshold=config.threshold,
                                  seed=config.seed),
                      name="segment", n_procs=threads, mem_gb=3.0)
    native = pe.Node(ToNative(method=config.mask_method, threshold=config.threshold),
                     name="to_native", n_procs=threads, mem_gb=1.0)  # ITK resampling threads
    uncertainty = pe.Node(Uncertainty(), name="uncertainty", mem_gb=1.0)
    split = pe.Node(HemorrhageSplit(threshold=config.threshold, seed=config.seed), name="ivh_split",
                    n_procs=threads, mem_gb=2.0)
    trial = pe.Node(TrialMeasures(bids_dir=str(getattr(config, "bids_dir", "") or ""),
                                  entities=source.get("entities", {})),
                    name="trial_measures", mem_gb=2.0)
    timings = pe.Node(niu.Function(function=_timings, output_names=["timings"]), name="timings")
    qc = pe.Node(ComputeQC(template=config.template, metadata=source.get("metadata", {}),
                           thresholds=getattr(config, "qc_thresholds", {}) or {}),
                 name="qc", mem_gb=1.5)
    sink = pe.Node(WriteDerivatives(config=config.to_dict(), source=source,
                                    warnings=source.get("warnings", [])),
                   name="ds_outputs", run_without_submitting=True)
    # The sink's inputs are this run's own work files (~50 MB): hashing them by content cost
    # 1.5 s per CT. Size and time suffice: a step that runs again writes new files.
    sink.config = {"execution": {"hash_method": "timestamp"}}
    po = "outputnode."
    wf.connect([
        (preproc, segment, [(po + "template_ct", "in_file")]),
        (segment, native, [("out_probseg", "in_probseg")]),
        (preproc, native, [(po + "clamped", "reference"), (po + "transform", "transform")]),
        (preproc, timings, [(po + "clamp_s", "clamp"), (po + "brain_s", "brain"),
                                (po + "register_s", "register")]),
        (segment, timings, [("elapsed", "segment"), ("forward_s", "forward")]),
        (native, timings, [("elapsed", "native")]),
        (split, timings, [("elapsed", "split")]),
        (segment, uncertainty, [("agreement", "agreement")]),
        (native, uncertainty, [("out_probseg", "native_probseg"), ("volume_ml", "volume_ml")]),
        (preproc, split, [(po + "template_ct", "template_ct"), (po + "clamped", "reference"),
                          (po + "transform", "transform"), (po + "brain_mask", "brain_mask")]),
        (segment, split, [("out_probseg", "probseg_template")]),
        (native, split, [("out_mask", "hemorrhage_mask")]),
        (split, sink, [("out_dseg", "hemorrhage_dseg"), ("split", "split")]),
        (preproc, trial, [(po + "clamped", "reference"), (po + "brain_mask", "brain_mask"),
                          (po + "transform", "transform")]),
        (native, trial, [("out_mask", "hemorrhage_mask")]),
        (split, trial, [("out_dseg", "hemorrhage_dseg"), ("split", "split")]),
        (trial, timings, [("elapsed", "trial")]),
        (trial, sink, [("out_edema", "edema_mask"), ("out_atlas", "atlas_dseg"), ("measures", "trial")]),
        (uncertainty, sink, [("uncertainty", "uncertainty")]),
        (uncertainty, qc, [("uncertainty", "uncertainty")]),
        (preproc, sink, [(po + "brain_mask", "brain_mask"), (po + "brain_volume_ml", "brain_volume_ml"),
                         (po + "template_ct", "preproc_template"), (po + "transform", "transform"),
                         (po + "similarity", "similarity"), (po + "registration", "registration"),
                         (po + "brain_info", "brain_extraction")]),
        (native, sink, [("out_mask", "hemorrhage_mask"), ("out_probseg", "hemorrhage_probseg"),
                        ("volume_ml", "hemorrhage_volume_ml"), ("voxel_count", "hemorrhage_voxel_count")]),
        (segment, sink, [("out_probseg", "probseg_template"), ("device_plan", "device_plan")]),
        (timings, sink, [("timings", "timings")]),
        (preproc, qc, [(po + "clamped", "in_ct"), (po + "brain_mask", "brain_mask"),
                       (po + "similarity", "similarity"), (po + "coverage", "coverage"),
                       (po + "template_ct", "registered")]),
        (native, qc, [("out_mask", "hemorrhage_mask"), ("volume_ml", "hemorrhage_volume_ml")]),
        (qc, sink, [("qc", "qc")]),
    ])
    from ..dicom.results import wanted

    if wanted(config.to_dict(), source):  # --dicom-output, or a dicom2bids dataset
        dicom = pe.Node(WriteDicom(config=config.to_dict(), source=source), name="ds_dicom",
                        mem_gb=1.5)
        wf.connect(sink, "out_files", dicom, "out_files")
    return wf
