"""Nipype interface: DICOM SEG and SR of one CT (see deepbleed_bids.dicom.results).

Runs after the NIfTI derivatives are written; any failure becomes a warning in
the hemorrhage mask's sidecar and the log, never a failed image.
"""
from nipype import logging
from nipype.interfaces.base import BaseInterfaceInputSpec, SimpleInterface, TraitedSpec, traits

LOGGER = logging.getLogger("nipype.interface")


class _DicomInputSpec(BaseInterfaceInputSpec):
    config = traits.Dict(mandatory=True)
    source = traits.Dict(mandatory=True, desc="the source image: path, relpath, entities, metadata")
    out_files = traits.List(traits.Str, mandatory=True, desc="the written derivatives (runs after them)")


class _DicomOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="the DICOM files written (empty on failure)")
    error = traits.Str(desc="why no DICOM was written, or empty")


class WriteDicom(SimpleInterface):
    input_spec = _DicomInputSpec
    output_spec = _DicomOutputSpec
    always_run = True  # the derivatives' sidecars are rewritten on every run

    def _run_interface(self, runtime):
        from ..derivatives import plan_outputs
        from ..dicom.results import dicom_paths, record, write_dicom

        config, source = self.inputs.config, self.inputs.source
        planned = plan_outputs(config["output_dir"], source["relpath"])
        self._results["out_files"], self._results["error"] = [], ""
        try:
            entry = write_dicom(config, source, planned, self.inputs.out_files)
        except Exception as err:  # noqa: BLE001 - DICOM output must never cost the NIfTI results
            reason = f"DICOM output not written: {type(err).__name__}: {err}"
            LOGGER.warning("%s: %s", source["relpath"], reason)
            record(planned, warning=reason)
            self._results["error"] = reason
            return runtime
        record(planned, entry)
        self._results["out_files"] = [str(p) for p in dicom_paths(config["output_dir"], source["relpath"]).values()]
        return runtime
