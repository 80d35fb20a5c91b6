"""Methods boilerplate (fMRIPrep-style): ``logs/CITATION.md``, ``.bib`` and ``.html``,
written from the exact parameters, versions, model and template of a run.

The text is meant to be pasted into a paper's methods section as is; every number
in it comes from the run's configuration, never from defaults written here.
"""
import html
import re
from pathlib import Path

from . import __version__
from .model.predict import tta_parts
from .utils import write_text_atomic

REFERENCES = {
    "deepbleed": dict(
        kind="article", author="Sharrock, Matthew F. and Mould, W. Andrew and Ali, Hasan and Hildreth, Meghan "
        "and Awad, Issam A. and Hanley, Daniel F. and Muschelli, John",
        title="3D Deep Neural Network Segmentation of Intracerebral Hemorrhage: Development and Validation "
        "for Clinical Trials", journal="Neuroinformatics", year="2021", volume="19", number="3",
        pages="403--415", doi="10.1007/s12021-020-09493-5"),
    "muschelli2015": dict(
        kind="article", author="Muschelli, John and Ullman, Natalie L. and Mould, W. Andrew and Vespa, Paul "
        "and Hanley, Daniel F. and Crainiceanu, Ciprian M.",
        title="Validated automatic brain extraction of head CT images", journal="NeuroImage", year="2015",
        volume="114", pages="379--385", doi="10.1016/j.neuroimage.2015.03.074"),
    "ants": dict(
        kind="article", author="Avants, Brian B. and Tustison, Nicholas J. and Song, Gang and Cook, Philip A. "
        "and Klein, Arno and Gee, James C.",
        title="A reproducible evaluation of ANTs similarity metric performance in brain image registration",
        journal="NeuroImage", year="2011", volume="54", number="3", pages="2033--2044",
        doi="10.1016/j.neuroimage.2010.09.025"),
    "antsx": dict(
        kind="article", author="Tustison, Nicholas J. and Cook, Philip A. and Holbrook, Andrew J. and others",
        title="The ANTsX ecosystem for quantitative biological and medical imaging",
        journal="Scientific Reports", year="2021", volume="11", pages="9068",
        doi="10.1038/s41598-021-87564-6"),
    "nipype": dict(
        kind="article", author="Gorgolewski, Krzysztof and Burns, Christopher D. and Madison, Cindee and "
        "Clark, Dav and Halchenko, Yaroslav O. and Waskom, Michael L. and Ghosh, Satrajit S.",
        title="Nipype: a flexible, lightweight and extensible neuroimaging data processing framework in "
        "Python", journal="Frontiers in Neuroinformatics", year="2011", volume="5", pages="13",
        doi="10.3389/fninf.2011.00013"),
    "dcm2niix": dict(
        kind="article", author="Li, Xiangrui and Morgan, Paul S. and Ashburner, John and Smith, Jolinda and "
        "Rorden, Christopher",
        title="The first step for neuroimaging data analysis: DICOM to NIfTI conversion",
        journal="Journal of Neuroscience Methods", year="2016", volume="264", pages="47--56",
        doi="10.1016/j.jneumeth.2016.03.001"),
    "tensorflow": dict(
        kind="inproceedings", author="Abadi, Mart{\\'\\i}n and Barham, Paul and Chen, Jianmin and others",
        title="TensorFlow: A System for Large-Scale Machine Learning",
        booktitle="12th USENIX Symposium on Operating Systems Design and Implementation (OSDI 16)",
        year="2016", pages="265--283"),
    "ctTemplate": dict(
        kind="article", author="Rorden, Christopher and Bonilha, Leonardo and Fridriksson, Julius and "
        "Bender, Benjamin and Karnath, Hans-Otto",
        title="Age-specific CT and MRI templates for spatial normalization", journal="NeuroImage",
        year="2012", volume="61", number="4", pages="957--965", doi="10.1016/j.neuroimage.2012.03.020"),
    "bids": dict(
        kind="article", author="Gorgolewski, Krzysztof J. and Auer, Tibor and Calhoun, Vince D. and others",
        title="The brain imaging data structure, a format for organizing and describing outputs of "
        "neuroimaging experiments", journal="Scientific Data", year="2016", volume="3", pages="160044",
        doi="10.1038/sdata.2016.44"),
    "pybids": dict(
        kind="article", author="Yarkoni, Tal and Markiewicz, Christopher J. and de la Vega, Alejandro and "
        "others", title="PyBIDS: Python tools for BIDS datasets", journal="Journal of Open Source Software",
        year="2019", volume="4", number="40", pages="1294", doi="10.21105/joss.01294"),
    "blastct": dict(
        kind="article", author="Monteiro, Miguel and Newcombe, Virginia F. J. and Mathieu, Francois and others",
        title="Multiclass semantic segmentation and quantification of traumatic brain injury lesions on "
        "head CT using deep learning: an algorithm development and multicentre validation study",
        journal="The Lancet Digital Health", year="2020", volume="2", number="6", pages="e314--e322",
        doi="10.1016/S2589-7500(20)30085-6"),
    "volbers2018": dict(
        kind="article", author="Volbers, Bastian and others",
        title="Semi-automatic volumetric assessment of perihemorrhagic edema with computed tomography",
        journal="European Journal of Neurology", year="2018"),
    "hemphill2001": dict(
        kind="article", author="Hemphill, J. Claude and Bonovich, David C. and Besmertis, Lavrentios and "
        "Manley, Geoffrey T. and Johnston, S. Claiborne",
        title="The ICH score: a simple, reliable grading scale for intracerebral hemorrhage",
        journal="Stroke", year="2001", volume="32", number="4", pages="891--897",
        doi="10.1161/01.STR.32.4.891"),
}


def _v(versions, name):
    return versions.get(name) or "(version not recorded)"


def methods_paragraphs(config, versions=None):
    """The methods text as paragraphs; ``[@key]`` marks a citation."""
    from .assets import TEMPLATE
    from .provenance import software_versions

    versions = versions or software_versions()
    model = config.model_spec or {}
    sha = model.get("sha256") or "(not resolved)"
    tpl_sha = config.template_sha256 or "(not resolved)"
    published_tpl = tpl_sha == TEMPLATE["sha256"]
    if config.brain_extraction == "fsl":
        brain = ("with the CT protocol of Muschelli et al. [@muschelli2015] as run by the original DeepBleed "
                 f"code (FSL BET on 0-100 HU, fslpy {_v(versions, 'fslpy')})")
    else:
        brain = ("following the CT brain-extraction protocol of Muschelli et al. [@muschelli2015] (soft "
                 "tissue 0-100 HU inside the closed skull, holes filled), implemented with SciPy")
    if config.mask_method == "deepbleed":
        back = (f"The probability map was thresholded at {config.threshold:g} on the template grid and the "
                "binary mask brought back to the native space with nearest-neighbour interpolation, as in "
                "the original DeepBleed.")
    else:
        back = ("The probability map was brought back to the native space with the inverse transform "
                f"(linear interpolation) and thresholded there at {config.threshold:g}.")
    notice = model.get("notice")
    paragraphs = [
        "Intracerebral hemorrhage (ICH, with any intraventricular extension) was segmented on non-contrast "
        f"head CT with deepbleed-bids {__version__}, an implementation of DeepBleed [@deepbleed] built on "
        f"Nipype {_v(versions, 'nipype')} [@nipype] and PyBIDS {_v(versions, 'pybids')} [@pybids] for data "
        "organised in the Brain Imaging Data Structure [@bids] (CT as proposed in BEP024). Where images "
        "were converted from DICOM, dcm2niix [@dcm2niix] was used.",
        "Each CT image was clamped to [-1024, 3071] HU and its brain extracted " + brain + ". The brain "
        f"was aligned to the DeepBleed CT template (128x128x128 voxels of 1.5 mm{', derived from the CT template of Rorden et al. [@ctTemplate]' if published_tpl else ''}; "
        f"sha256 {tpl_sha}) with a rigid registration in NumPy/SciPy: a global search over 375 starting "
        "poses (rotations of up to 40 degrees about each axis and head-foot shifts) scored by the correlation "
        "of HU with the template, the best refined with Powell's method, then the mutual information of HU "
        "(a Mattes-like metric as in ANTs [@ants]) maximised at 6 and 3 mm; deterministic, whatever the "
        f"number of threads (random seed {config.seed} for the steps that sample). The brain was resampled "
        f"onto the template grid with ANTsPy {_v(versions, 'antspyx')} [@antsx] with nearest-neighbour "
        "interpolation, keeping raw HU and 0 outside the brain.",
        f"The 3D VNet of DeepBleed [@deepbleed] with the weights '{model.get('id', config.model)}' "
        f"(sha256 {sha}) computed a hemorrhage probability in TensorFlow {_v(versions, 'tensorflow')} "
        f"[@tensorflow] (Keras {_v(versions, 'keras')}; device: {config.device}"
        f"{', mixed precision' if config.mixed_precision else ''}). " + back + " Volumes are voxel counts "
        "times the native voxel volume, in mL.",
    ]
    mode = str(config.tta or "auto")
    tta = {"flip": "averaged with the prediction on the left-right mirrored input",
           "flip+mc": "averaged over the left-right mirrored input and Monte-Carlo dropout passes",
           "auto": "averaged with the mirrored input on a GPU (a single pass on the CPU)"}.get(mode.removesuffix("+hu"))
    shifted = (", with the volume's change when the brain's HU were shifted by -4 and +4 HU (a scanner "
               "calibration's tolerance)") if "hu" in tta_parts(mode) else ""
    paragraphs.append(
        ("The probabilities were " + tta + "; " if tta else "A single forward pass was used; ")
        + "the agreement between passes and the volume with probability 0.2-0.8 were reported as "
        "uncertainty" + shifted + ". The following are estimates, not validated against expert labels: the hemorrhage "
        "was split into intraventricular and parenchymal parts with a ventricle map from the BLAST-CT "
        "atlas [@blastct] (registered once onto the template grid and carried to each scan with the rigid "
        "transform) refined on the scan's own CSF density; its location (deep, lobar, infratentorial, "
        "intraventricular) was read from the same atlas; perihematomal edema was measured as voxels of "
        "5-33 HU next to the clot [@volbers2018], excluding CSF and tissue not darker than its mirror "
        "image; midline shift as the distance of the septum pellucidum (or third ventricle) from the "
        "skull's mid-sagittal plane; and the imaging items of the ICH score [@hemphill2001] (volume "
        ">= 30 mL, intraventricular extension, infratentorial origin) were reported with the clinical "
        "items (GCS, age) where the dataset gave them.")
    if notice:
        paragraphs.append(f"Note: {notice}.")
    return paragraphs


def _cite_md(text, keys):
    def sub(match):
        key = match.group(1)
        keys.append(key) if key not in keys else None
        return f"[{keys.index(key) + 1}]"
    return re.sub(r"\[@(\w+)\]", sub, text)


def _reference_text(ref):
    doi = f" doi:{ref['doi']}" if ref.get("doi") else ""
    where = ref.get("journal") or ref.get("booktitle", "")
    vol = f" {ref['volume']}" + (f"({ref['number']})" if ref.get("number") else "") if ref.get("volume") else ""
    authors = ref["author"].replace(" and ", "; ").replace("{\\'\\i}", "í")
    pages = f":{ref['pages'].replace('--', '-')}" if ref.get("pages") else ""
    return f"{authors}. {ref['title']}. {where}{vol}{pages} ({ref['year']}).{doi}"


def bibtex():
    out = []
    for key, ref in REFERENCES.items():
        fields = ",\n".join(f"  {k} = {{{v}}}" for k, v in ref.items() if k != "kind")
        out.append(f"@{ref['kind']}{{{key},\n{fields}\n}}")
    return "\n\n".join(out) + "\n"


def write_citation(config, folder=None):
    """Write ``CITATION.md``, ``CITATION.bib`` and ``CITATION.html`` into ``output_dir/logs/``."""
    folder = Path(folder or Path(config.output_dir) / "logs")
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    paragraphs = [_cite_md(p, keys) for p in methods_paragraphs(config)]
    refs = [f"{i + 1}. {_reference_text(REFERENCES[k])}" for i, k in enumerate(keys)]
    thresholds = (f"Run {config.run_id or '(no run id)'}; parameters: threshold {config.threshold:g}, "
                  f"mask method {config.mask_method}, brain extraction {config.brain_extraction}, kernels "
                  f"{config.kernels}, QC thresholds {config.qc_thresholds or 'defaults'}.")
    md = ("# Methods (deepbleed-bids boilerplate)\n\n"
          "This text was generated by deepbleed-bids from the exact settings of the run; copy it into "
          "your manuscript and cite the references (BibTeX: CITATION.bib).\n\n"
          + "\n\n".join(paragraphs) + f"\n\n{thresholds}\n\n## References\n\n" + "\n".join(refs) + "\n")
    body = ("<h2>Methods</h2>\n" + "".join(f"<p>{html.escape(p)}</p>\n" for p in paragraphs)
            + f"<p class='legend'>{html.escape(thresholds)}</p>\n<h3>References</h3>\n<ol>\n"
            + "".join(f"<li>{html.escape(r.split('. ', 1)[1])}</li>\n" for r in refs) + "</ol>\n")
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>deepbleed-bids methods</title></head>"
            f"<body>\n<!-- methods -->\n{body}<!-- /methods -->\n</body></html>\n")
    paths = {"md": folder / "CITATION.md", "bib": folder / "CITATION.bib", "html": folder / "CITATION.html"}
    write_text_atomic(md, paths["md"])
    write_text_atomic(bibtex(), paths["bib"])
    write_text_atomic(page, paths["html"])
    return paths


def methods_html(out_dir):
    """The methods section of the last run's ``logs/CITATION.html`` (for the reports), or ''."""
    path = Path(out_dir) / "logs" / "CITATION.html"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    match = re.search(r"<!-- methods -->\n(.*)<!-- /methods -->", text, re.S)
    return match.group(1) if match else ""
