"""Preprocessing shared by inference and training: clamp -> brain -> template grid."""
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.ct import ClampCT
from ..interfaces.registration import RigidRegistration
from .brain import init_brain_extraction_wf


def init_preproc_wf(in_file, template, brain_extraction="native", seed=1, omp_nthreads=1,
                    skull_stripped=False, name="preproc_wf"):
    """Outputs (``outputnode``): ``clamped`` (native CT), ``brain_mask``, ``brain_volume_ml``,
    ``template_ct`` (network input on the template grid, nearest neighbour), ``transform``
    (native -> template), ``similarity``, ``coverage`` (share of the template brain scanned), ``registration`` (parameters, global-search start
    and score), ``brain_info`` (skull-stripped input or not), and the stages' ``elapsed`` seconds.
    ``skull_stripped``: the user's word that the input is already brain-extracted (else detected)."""
    wf = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "clamped", "brain_mask", "brain_volume_ml", "template_ct", "transform", "similarity",
        "coverage", "registration", "brain_info", "clamp_s", "brain_s", "register_s"]), name="outputnode")
    clamp = pe.Node(ClampCT(in_file=in_file, skull_stripped=bool(skull_stripped)), name="clamp")
    brain_wf = init_brain_extraction_wf(method=brain_extraction, omp_nthreads=omp_nthreads)
    # The registration scores poses on omp_nthreads threads, each score summed alone in a
    # fixed order: the same transform whatever the thread count.
    register = pe.Node(RigidRegistration(template=template, seed=seed, num_threads=omp_nthreads),
                       name="register", n_procs=omp_nthreads, mem_gb=1.0)
    wf.connect([
        (clamp, brain_wf, [("out_file", "inputnode.in_file"), ("hu_stats", "inputnode.hu_stats")]),
        (brain_wf, register, [("outputnode.out_file", "in_file")]),
        (clamp, outputnode, [("out_file", "clamped"), ("elapsed", "clamp_s")]),
        (brain_wf, outputnode, [("outputnode.out_mask", "brain_mask"),
                                ("outputnode.brain_volume_ml", "brain_volume_ml"),
                                ("outputnode.elapsed", "brain_s"),
                                ("outputnode.info", "brain_info")]),
        (register, outputnode, [("out_file", "template_ct"), ("out_transform", "transform"),
                                ("similarity", "similarity"), ("coverage", "coverage"),
                                ("params", "registration"),
                                ("elapsed", "register_s")]),
    ])
    return wf
