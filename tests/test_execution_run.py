"""Running a nipype workflow: one failing image is reported by name and does not stop the others."""
import pytest

from deepbleed_bids.execution import configure_nipype, run_workflow, workflow_name


def _check(value):
    if value < 0:
        raise ValueError(f"negative input {value}: cannot be processed")
    return value


@pytest.mark.parametrize("plugin,args", [("Linear", {}), ("MultiProc", {"n_procs": 2})])
def test_failed_image_named_with_its_reason(tmp_path, plugin, args):
    from nipype import Function, Node, Workflow

    _, crash_dir = configure_nipype(tmp_path / "work")  # before the workflow, which copies the config
    sources = {"sub-01/ct/sub-01_ct.nii.gz": 1, "sub-02/ct/sub-02_ct.nii.gz": -1}
    top = Workflow(name="deepbleed_wf", base_dir=str(tmp_path / "work"))
    for rel, value in sources.items():
        wf = Workflow(name=workflow_name(rel))
        node = Node(Function(input_names=["value"], output_names=["out"], function=_check), name="check")
        node.inputs.value = value
        wf.add_nodes([node])
        top.add_nodes([wf])
    seen = []
    crashes = run_workflow(top, plugin, args, crash_dir, callbacks=[lambda node, state: seen.append(state)])
    assert set(crashes) == {"ct_sub_02_wf"}
    reason, crash = crashes["ct_sub_02_wf"]
    assert reason == "ValueError: negative input -1: cannot be processed"
    assert crash.parent == crash_dir
    assert "end" in seen  # the status callbacks ran
