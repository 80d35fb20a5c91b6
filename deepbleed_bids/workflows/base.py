"""Top-level workflows: one per participant, one ``init_ct_wf`` per CT image."""
from nipype.pipeline import engine as pe

from .ct import init_ct_wf


def init_participant_wf(config, subject, images, name=None):
    """All CT images of one participant (every session, run and acquisition)."""
    wf = pe.Workflow(name=name or f"sub_{subject}_wf")
    for source in images:
        wf.add_nodes([init_ct_wf(config, source)])
    return wf


def init_deepbleed_wf(config, images):
    """The whole participant-level run, grouped by participant."""
    wf = pe.Workflow(name="deepbleed_wf", base_dir=config.work_dir)
    by_subject = {}
    for source in images:
        by_subject.setdefault(source["entities"]["subject"], []).append(source)
    for subject, subject_images in sorted(by_subject.items()):
        wf.add_nodes([init_participant_wf(config, subject, subject_images)])
    return wf
