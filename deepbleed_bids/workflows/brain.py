"""Brain extraction workflow: native (scipy) or the DeepBleed paper's FSL protocol."""
import shutil

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..errors import DeepBleedError
from ..interfaces.brain import ApplyBrainMask, NativeBrainExtraction

METHODS = ("native", "fsl")


def init_brain_extraction_wf(method="native", omp_nthreads=1, name="brain_extraction_wf"):
    """Skull stripping of a clamped head CT.

    inputnode.in_file -> outputnode.out_mask (uint8), outputnode.out_file (CT, 0 outside
    the brain), outputnode.brain_volume_ml; outputs keep the input's header.
    ``omp_nthreads`` is accepted for a uniform API: both methods run single-threaded.
    inputnode.hu_stats (ClampCT's): a CT found or said to be skull-stripped gets the
    non-background voxels as its mask (native method; outputnode.info says so).
    """
    if method not in METHODS:
        raise DeepBleedError(
            f"unknown brain extraction method {method!r}; use one of {', '.join(METHODS)} "
            "(--brain-extraction)."
        )
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "hu_stats"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["out_mask", "out_file", "brain_volume_ml", "elapsed", "info"]), name="outputnode")
    if method == "native":
        strip = pe.Node(NativeBrainExtraction(), name="native_brain", mem_gb=1.0)
        wf.connect([(inputnode, strip, [("in_file", "in_file"), ("hu_stats", "hu_stats")]),
                    (strip, outputnode, [("info", "info")])])
    else:
        strip = _connect_fsl(wf, inputnode)
    wf.connect([(strip, outputnode, [("out_mask", "out_mask"), ("out_file", "out_file"),
                                     ("brain_volume_ml", "brain_volume_ml"), ("elapsed", "elapsed")])])
    return wf


def _connect_fsl(wf, inputnode):
    """Muschelli et al. 2015 as run by the original DeepBleed code, with FSL."""
    from nipype.interfaces import fsl

    if fsl.Info.version() is None or shutil.which("bet") is None:
        raise DeepBleedError(
            "--brain-extraction fsl needs FSL (bet, fslmaths), which was not found: "
            "install FSL and set FSLDIR (with $FSLDIR/bin on PATH), "
            "or use --brain-extraction native."
        )
    out = "NIFTI_GZ"
    threshold = pe.Node(fsl.ImageMaths(op_string="-thr 0 -uthr 100 -bin -fillh", output_type=out),
                        name="fsl_threshold")
    premask = pe.Node(fsl.ApplyMask(output_type=out), name="fsl_premask")
    bet = pe.Node(fsl.BET(frac=0.01, output_type=out), name="fsl_bet")
    binarize = pe.Node(fsl.ImageMaths(op_string="-bin -fillh", output_type=out), name="fsl_mask")
    apply = pe.Node(ApplyBrainMask(), name="apply_brain_mask")
    wf.connect([
        (inputnode, threshold, [("in_file", "in_file")]),
        (inputnode, premask, [("in_file", "in_file")]),
        (threshold, premask, [("out_file", "mask_file")]),
        (premask, bet, [("out_file", "in_file")]),
        (bet, binarize, [("out_file", "in_file")]),
        (inputnode, apply, [("in_file", "in_file")]),
        (binarize, apply, [("out_file", "in_mask")]),
    ])
    return apply
