"""Report figures of one CT: native mosaics with the masks, the template alignment check.

matplotlib's object API (no pyplot, no display); figures come back as PNG bytes.
Slices are shown in the radiological convention (patient's right on the left of
the screen, anterior up), with a brain window (0-80 HU).
"""
import io

import nibabel as nib
import numpy as np

WINDOW_HU = (0.0, 80.0)
BRAIN_COLOR = "#00d5ff"
BLEED_COLOR = "#ff2a2a"
TEMPLATE_COLORS = ("#ffd000", "#ff4fd8")  # template brain edge, template CSF edge


def _png(fig, dpi=90):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return buf.getvalue()


def _figure(n, cols, panel_in=2.2, aspect=1.0):
    from matplotlib.figure import Figure

    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(cols * panel_in, rows * panel_in * aspect), facecolor="black")
    axes = [fig.add_axes([(k % cols) / cols, 1 - (k // cols + 1) / rows, 1 / cols, 1 / rows])
            for k in range(rows * cols)]
    for ax in axes:
        ax.set_axis_off()
        ax.set_facecolor("black")
    return fig, axes


def canonical(img):
    """(data, zooms) reoriented to the closest RAS axes (display only)."""
    ras = nib.as_closest_canonical(img)
    return np.asanyarray(ras.dataobj), np.array(ras.header.get_zooms()[:3], float)


def _show(ax, plane, zooms_xy, window=WINDOW_HU):
    # plane axes: (x: left->right, y: posterior->anterior); radiological: flip x
    ax.imshow(plane.T[:, ::-1], cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
              aspect=zooms_xy[1] / zooms_xy[0], interpolation="antialiased")


def _contour(ax, mask, color, width=0.9):
    if mask.any() and not mask.all():
        ax.contour(mask.T[:, ::-1].astype(np.float32), levels=[0.5], colors=[color], linewidths=width)


def _fill(ax, mask, color, zooms_xy, alpha=0.35):
    from matplotlib.colors import to_rgba

    if mask.any():
        rgba = np.zeros(mask.T.shape + (4,), np.float32)
        rgba[mask.T[:, ::-1]] = to_rgba(color, alpha)
        ax.imshow(rgba, origin="lower", aspect=zooms_xy[1] / zooms_xy[0], interpolation="nearest")


def _label(ax, text, where="tl", size=8):
    x, ha = (0.03, "left") if where[1] == "l" else (0.97, "right")
    y, va = (0.97, "top") if where[0] == "t" else (0.03, "bottom")
    ax.text(x, y, text, color="white", fontsize=size, ha=ha, va=va, transform=ax.transAxes)


def pick_slices(mask, n, axis=2):
    """n slice indices spread evenly over the slices that hold the mask."""
    other = tuple(a for a in range(3) if a != axis)
    idx = np.flatnonzero(np.asarray(mask).any(axis=other))
    if idx.size == 0:
        return []
    if idx.size <= n:
        return idx.tolist()
    return sorted(set(np.round(np.linspace(idx[0], idx[-1], n)).astype(int).tolist()))


def overview_mosaic(ct, brain, bleed, zooms, n=12, cols=6):
    """Axial slices over the whole brain: hemorrhage filled red, brain outlined in cyan."""
    slices = pick_slices(brain, n)
    fig, axes = _figure(max(len(slices), 1), cols, aspect=zooms[1] * ct.shape[1] / (zooms[0] * ct.shape[0]))
    for ax, k in zip(axes, slices):
        _show(ax, ct[:, :, k], zooms)
        _fill(ax, bleed[:, :, k] > 0, BLEED_COLOR, zooms)
        _contour(ax, brain[:, :, k] > 0, BRAIN_COLOR, 0.7)
        _contour(ax, bleed[:, :, k] > 0, BLEED_COLOR, 0.8)
        _label(ax, f"z {k}", "bl", 7)
    if slices:
        _label(axes[0], "R", "tl", 10)
        _label(axes[0], "L", "tr", 10)
    return _png(fig)


def _crop(mask, zooms, margin_mm=15.0):
    from ..qc import bbox_bounds

    lo, hi = bbox_bounds(mask)
    pad = np.ceil(margin_mm / zooms[:2]).astype(int)
    lo = np.maximum(lo[:2] - pad, 0)
    hi = np.minimum(hi[:2] + pad, mask.shape[:2])
    # square in mm so panels tile evenly
    size_mm = max((hi - lo) * zooms[:2])
    half = np.ceil(size_mm / 2 / zooms[:2]).astype(int)
    centre = (lo + hi) // 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half, mask.shape[:2])
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


def detail_mosaic(ct, brain, bleed, zooms, abc=None, n=18, cols=6):
    """Every hemorrhage slice (up to n), zoomed: outline only, so the density under the
    edge stays visible; the ABC/2 diameters drawn on the slice of largest area."""
    slices = pick_slices(bleed, n)
    if not slices:
        return None
    if abc and abc.get("slice") is not None and abc["slice"] not in slices:
        slices = sorted(slices[:-1] + [abc["slice"]])
    sx, sy = _crop(bleed > 0, zooms)
    aspect = zooms[1] * (sy.stop - sy.start) / (zooms[0] * (sx.stop - sx.start))
    fig, axes = _figure(len(slices), min(cols, len(slices)), panel_in=2.4, aspect=aspect)
    width = sx.stop - sx.start
    for ax, k in zip(axes, slices):
        _show(ax, ct[sx, sy, k], zooms)
        _contour(ax, brain[sx, sy, k] > 0, BRAIN_COLOR, 0.6)
        _contour(ax, bleed[sx, sy, k] > 0, BLEED_COLOR, 1.0)
        _label(ax, f"z {k}", "bl", 7)
        if abc and abc.get("slice") == k and abc.get("a_line"):
            for line, color, name in ((abc["a_line"], "#7CFC00", "A"), (abc["b_line"], "#ffa500", "B")):
                (x0, y0), (x1, y1) = line
                # data index -> displayed (flipped x, cropped) pixel coordinates
                xs = [width - 1 - (x0 - sx.start), width - 1 - (x1 - sx.start)]
                ys = [y0 - sy.start, y1 - sy.start]
                ax.plot(xs, ys, color=color, lw=1.2)
                ax.text(xs[1], ys[1], name, color=color, fontsize=8)
            _label(ax, f"A {abc['a_mm']:.0f} mm  B {abc['b_mm']:.0f} mm", "tl", 7)
    return _png(fig)


SKULL_BASE_WINDOW_HU = (-40.0, 400.0)   # brain grey, bone white: the mask edge against the bone
PETROUS_HU = 600.0


def skull_base_planes(ct, brain):
    """(sagittal x index, coronal y index) through the skull base, on RAS arrays.

    Sagittal: the brain's mid-plane (clivus, sella, foramen magnum). Coronal: the
    plane with the most dense bone (>= 600 HU) in the lower 40 % of the brain's
    height and the middle of its length: the petrous ridges.
    """
    lo, hi = (np.array(b) for b in _bounds(brain))
    x_mid = int(round(np.argwhere(brain.any(axis=(1, 2))).mean()))
    z_top = int(lo[2] + 0.4 * (hi[2] - lo[2])) + 1
    # the petrous ridges cross the middle of the brain's length; further back the
    # occipital squama would win
    y0, y1 = (int(lo[1] + f * (hi[1] - lo[1])) for f in (0.3, 0.6))
    box = ct[lo[0]:hi[0] + 1, y0:y1 + 1, lo[2]:z_top]
    y_petrous = int(y0 + np.argmax((box >= PETROUS_HU).sum(axis=(0, 2))))
    return x_mid, y_petrous


def _bounds(mask):
    where = [np.flatnonzero(np.asarray(mask).any(axis=tuple(b for b in range(3) if b != a)))
             for a in range(3)]
    return [w[0] for w in where], [w[-1] for w in where]


def skull_base_figure(ct, brain, zooms):
    """The brain mask outlined on a mid-sagittal and a coronal slice through the petrous
    bones, in a window that shows bone: the mask must stop at the skull base."""
    if not np.any(brain):
        return None
    x, y = skull_base_planes(ct, brain)
    fig, axes = _figure(2, 2, panel_in=3.0)
    # sagittal: (y, z) with anterior on the left (_show flips the first axis); coronal: radiological
    for ax, plane, mask, zxy, text in (
            (axes[0], ct[x], brain[x], zooms[[1, 2]], f"sagittal x {x}  (anterior left)"),
            (axes[1], ct[:, y], brain[:, y], zooms[[0, 2]], f"coronal y {y}  (R left, petrous)")):
        _show(ax, plane, zxy, SKULL_BASE_WINDOW_HU)
        _contour(ax, mask > 0, BRAIN_COLOR, 0.8)
        _label(ax, text, "tl", 7)
    return _png(fig)


def alignment_figure(registered, template):
    """The registered scan (network input) with the template's edges, 3 views x 3 slices."""
    from scipy import ndimage as ndi

    reg = np.asanyarray(registered.dataobj).astype(np.float32)
    tpl = np.asanyarray(template.dataobj).astype(np.float32)
    brain_t = tpl != 0
    csf = (ndi.gaussian_filter(tpl, 1.0) < 15) & ndi.binary_erosion(brain_t, iterations=3)
    fig, axes = _figure(9, 3, panel_in=2.2)
    shape = np.array(reg.shape)
    for row, axis in enumerate((2, 1, 0)):  # axial, coronal, sagittal
        for col, frac in enumerate((0.35, 0.5, 0.65)):
            k = int(frac * shape[axis])
            ax = axes[row * 3 + col]

            def cut(a):
                return np.take(a, k, axis=axis)

            img = cut(reg)
            flip = axis == 2  # axial: radiological; others: as is
            data = img.T[:, ::-1] if flip else img.T
            ax.imshow(data, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], origin="lower",
                      interpolation="antialiased")
            for mask, color in ((cut(brain_t), TEMPLATE_COLORS[0]), (cut(csf), TEMPLATE_COLORS[1])):
                m = mask.T[:, ::-1] if flip else mask.T
                if m.any() and not m.all():
                    ax.contour(m.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.7)
            _label(ax, ("axial", "coronal", "sagittal")[row] + f" {k}", "bl", 7)
    return _png(fig)


IVH_COLOR = "#3d7bff"
UNCERTAIN_CMAP = "autumn"


def split_uncertainty_mosaic(ct, dseg, prob, zooms, n=12, cols=6, band=(0.2, 0.8)):
    """Hemorrhage slices, zoomed: the parenchymal (red) and intraventricular (blue) parts
    outlined, and the uncertainty map (probability within ``band``, yellow = 0.5) filled."""
    dseg = np.asarray(dseg)
    prob = np.asarray(prob, np.float32)
    unsure = (prob >= band[0]) & (prob <= band[1])
    region = (dseg > 0) | unsure
    slices = pick_slices(region, n)
    if not slices:
        return None
    sx, sy = _crop(region, zooms)
    aspect = zooms[1] * (sy.stop - sy.start) / (zooms[0] * (sx.stop - sx.start))
    fig, axes = _figure(len(slices), min(cols, len(slices)), panel_in=2.4, aspect=aspect)
    for ax, k in zip(axes, slices):
        _show(ax, ct[sx, sy, k], zooms)
        # closeness to 0.5 (1 at 0.5, 0 at the band's ends), only inside the band
        u = np.where(unsure[sx, sy, k], 1 - np.abs(prob[sx, sy, k] - 0.5) / 0.3, np.nan)
        if np.isfinite(u).any():
            ax.imshow(u.T[:, ::-1], cmap=UNCERTAIN_CMAP, vmin=0, vmax=1, alpha=0.6, origin="lower",
                      aspect=zooms[1] / zooms[0], interpolation="nearest")
        _contour(ax, dseg[sx, sy, k] == 1, BLEED_COLOR, 1.0)
        _contour(ax, dseg[sx, sy, k] == 2, IVH_COLOR, 1.0)
        _label(ax, f"z {k}", "bl", 7)
    return _png(fig)


CLASS_COLORS = {"deep": "#ffb000", "lobar": "#7CFC00", "infratentorial": "#c77dff", "intraventricular": "#3d8bff"}
EDEMA_COLOR = "#ffff66"
MIDLINE_COLORS = ("#00ffd5", "#ff4fd8")  # skull mid-sagittal plane, plane through the septum


def trial_mosaic(ct_img, atlas_img, bleed_img, edema_img, classes, plane=None, shift_mm=None, n=8, cols=4):
    """Axial slices through the hemorrhage (or the ventricles): atlas regions outlined and coloured
    by location class, the hemorrhage (red) and the estimated edema (yellow) outlined, the skull's
    mid-sagittal plane (cyan) and the parallel plane through the septum (magenta, dashed).

    classes: {atlas index: class}; plane: (normal, offset) in world mm; shift_mm: signed.
    """
    ras = nib.as_closest_canonical(ct_img)
    ct = np.asanyarray(ras.dataobj)
    zooms = np.array(ras.header.get_zooms()[:3], float)
    atlas = np.asanyarray(nib.as_closest_canonical(atlas_img).dataobj)
    bleed = np.asanyarray(nib.as_closest_canonical(bleed_img).dataobj) > 0
    edema = np.asanyarray(nib.as_closest_canonical(edema_img).dataobj) > 0 if edema_img is not None \
        else np.zeros(bleed.shape, bool)
    vent_index = next((i for i, c in classes.items() if c == "intraventricular"), None)
    focus = bleed | edema if bleed.any() else atlas == vent_index
    slices = pick_slices(focus, n)
    if not slices:
        return None
    fig, axes = _figure(len(slices), min(cols, len(slices)), panel_in=2.6)
    aff = ras.affine
    ii, jj = np.meshgrid(np.arange(ct.shape[0]), np.arange(ct.shape[1]), indexing="ij")
    for ax, k in zip(axes, slices):
        _show(ax, ct[:, :, k], zooms)
        lab = atlas[:, :, k]
        for cls, color in CLASS_COLORS.items():
            idx = [i for i, c in classes.items() if c == cls]
            _fill(ax, np.isin(lab, idx), color, zooms, alpha=0.12)
        # region borders: where the label changes
        border = (np.diff(lab, axis=0, prepend=lab[:1]) != 0) | (np.diff(lab, axis=1, prepend=lab[:, :1]) != 0)
        _fill(ax, border & (lab > 0), "#ffffff", zooms, alpha=0.25)
        _contour(ax, bleed[:, :, k], BLEED_COLOR, 1.0)
        _contour(ax, edema[:, :, k], EDEMA_COLOR, 0.9)
        if plane is not None:
            normal, offset = np.asarray(plane[0], float), float(plane[1])
            world = aff[:3, 0, None, None] * ii + aff[:3, 1, None, None] * jj \
                + (aff[:3, 2] * k + aff[:3, 3])[:, None, None]
            signed = np.tensordot(normal, world, axes=1) - offset
            levels = [(0.0, MIDLINE_COLORS[0], "solid")]
            if shift_mm is not None:
                levels.append((float(shift_mm), MIDLINE_COLORS[1], "dashed"))
            for level, color, style in levels:
                if signed.min() < level < signed.max():
                    ax.contour(signed.T[:, ::-1], levels=[level], colors=[color], linewidths=0.8,
                               linestyles=style)
        _label(ax, f"z {k}", "bl", 7)
    return _png(fig)
