"""DICOM Structured Report (TID 1500 measurement report) of one segmented CT (highdicom.sr).

One volumetric ROI group per SEG segment (hemorrhage, ICH and IVH parts when
present, brain), each referencing its segment; the hemorrhage group adds ABC/2
and the QC verdict and flags. The model (name, version, sha256) is the
algorithm of every measurement. Pure DICOM code: no nipype.
"""
import warnings

import numpy as np

from .seg import _derived_number, finish

SCHEME = "99DEEPBLEED"  # private coding scheme (ABC/2 method, QC flags), declared in the SR
_FINDINGS = {  # segment tracking id -> finding type
    "hemorrhage": ("SCT", "Hemorrhage"), "ich": ("SCT", "Hemorrhage"),
    "ivh": ("SCT", "Hemorrhage"), "brain": ("SCT", "Brain"),
}


def _code(value, meaning):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


def _ml(name, value, algorithm, method=None):
    import highdicom as hd

    return hd.sr.Measurement(name=name, value=float(value), method=method, algorithm_id=algorithm,
                             unit=hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter"))


def _qc_evaluations(qc):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not qc:
        return []
    verdict = (codes.DCM.UsableMeetsTheQualityControlStandard if qc.get("Pass")
               else codes.DCM.UsableDoesNotMeetTheQualityControlStandard)
    out = [hd.sr.QualitativeEvaluation(name=codes.DCM.QualityControl, value=verdict)]
    for flag in sorted(qc.get("Flags") or {}):
        out.append(hd.sr.QualitativeEvaluation(name=_code("qc-flag", "Quality control flag"),
                                               value=_code(flag[:16], flag.replace("_", " "))))
    return out


def build_report(seg, measures, model, series_number=None, deidentify_output=False):
    """A Comprehensive 3D SR (TID 1500) of ``measures`` referencing ``seg``'s segments.

    measures: {"volumes": {tracking id: mL}, "abc2_ml": float or None, "qc": QC record};
    model: {"id", "version", "sha256"}.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from .. import __version__

    name, version = str(model.get("id") or "unknown"), str(model.get("version") or __version__)
    algorithm = hd.sr.AlgorithmIdentification(
        name=name[:64], version=version[:64], parameters=[f"sha256={model.get('sha256') or 'unknown'}"])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["deepbleed-bids", __version__]), name="deepbleed-bids",
        manufacturer_name="deepbleed-bids", model_name=name[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    groups = []
    for segment in seg.SegmentSequence:
        kind = str(segment.get("TrackingID", "")) or "hemorrhage"
        if kind not in measures["volumes"]:
            continue
        scheme, key = _FINDINGS.get(kind, ("SCT", "Hemorrhage"))
        items = [_ml(codes.SCT.Volume, measures["volumes"][kind], algorithm)]
        evaluations = []
        if kind == "hemorrhage":
            if measures.get("abc2_ml") is not None and np.isfinite(measures["abc2_ml"]):
                items.append(_ml(codes.SCT.Volume, measures["abc2_ml"], algorithm,
                                 method=_code("abc2", "ABC/2 (Kothari 1996), largest component")))
            evaluations = _qc_evaluations(measures.get("qc"))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=str(segment.SegmentLabel)),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=int(segment.SegmentNumber),
                source_series=hd.sr.SourceSeriesForSegmentation(source_series)),
            finding_type=getattr(getattr(codes, scheme), key), algorithm_id=algorithm,
            measurements=items, qualitative_evaluations=evaluations or None))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion
                                     if not hasattr(codes.LN, "HeadCT") else codes.LN.HeadCT,
                                     imaging_measurements=groups)
    with warnings.catch_warnings():  # single-part source names are copied as they are
        warnings.filterwarnings("ignore", message="The string .* person name", category=UserWarning)
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg], content=report, series_instance_uid=hd.UID(),
            series_number=series_number or _derived_number(seg, 2), sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="deepbleed-bids", is_complete=True, is_final=False,
            series_description=f"DeepBleed volumes ({name[:30]})")
    scheme = Dataset()  # declare the private coding scheme used above
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "deepbleed-bids codes"
    scheme.CodingSchemeResponsibleOrganization = "deepbleed-bids project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return finish(sr, seg, deidentify_output)


def read_report(sr):
    """{segment label: {"volume_ml", "abc2_ml"?}} and the QC codes, read back from an SR dataset."""
    import highdicom as hd

    parsed = hd.sr.srread(sr) if isinstance(sr, str) else hd.sr.Comprehensive3DSR.from_dataset(sr)
    content = parsed.content
    out = {}
    for group in content.get_volumetric_roi_measurement_groups():
        label = group.tracking_identifier
        entry = {}
        for m in group.get_measurements():
            key = "abc2_ml" if m.method is not None and m.method.value == "abc2" else "volume_ml"
            entry[key] = float(m.value)
        entry["qc"] = [str(q.value.meaning) for q in group.get_qualitative_evaluations()]
        out[label] = entry
    return out
