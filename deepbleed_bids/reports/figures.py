"""Report figures of one CT: native mosaics with the masks, the template alignment check.

Figures come back as PNG bytes (numpy and Pillow; matplotlib only for colours, colour
maps and its font). Slices are shown in the radiological convention (patient's right on the left of
the screen, anterior up), with a brain window (0-80 HU).

Speed (issue #13: <= 2 s per CT): every panel is composited in numpy (window, filled
masks, mask edges as pixels), tiled into one image, and labels and lines are drawn
on it with Pillow (matplotlib's font): no matplotlib figure, axes, contour or image
resampling, which cost ~20 ms per call and ~60 calls per report.
"""
import io

import nibabel as nib
import numpy as np

WINDOW_HU = (0.0, 80.0)
BRAIN_COLOR = "#00d5ff"
BLEED_COLOR = "#ff2a2a"
TEMPLATE_COLORS = ("#ffd000", "#ff4fd8")  # template brain edge, template CSF edge


def canonical(img):
    """(data, zooms) reoriented to the closest RAS axes (display only). The data are copied
    into Fortran order: axial slices are then contiguous, and flipped views cost every
    slice and reduction after it more than the one copy."""
    ras = nib.as_closest_canonical(img)
    return np.asfortranarray(ras.dataobj), np.array(ras.header.get_zooms()[:3], float)


def _canonical_array(img):
    """The data of an image (or an array already in the closest RAS axes) for display."""
    if isinstance(img, np.ndarray):
        return img
    return canonical(img)[0]


DISPLAY_MM = 0.9  # in-plane pixel of the whole-slice panels: a 2.2 in panel at 90 dpi is ~200 px


def display_step(zooms, target_mm=DISPLAY_MM):
    """In-plane stride that brings a slice to about ``target_mm`` pixels (1 at >= target)."""
    return max(1, int(round(target_mm / float(min(zooms[:2])))))


def thin(plane, step, how="mean"):
    """A 2-D slice at ``step`` x coarser pixels: the mean of each block (images) or
    any (masks: a one-voxel lesion stays visible). The panels show ~200 px, so a
    512^2 slice costs the renderer 4x the work for no visible detail. Summed over the
    step^2 strided views: 5x faster than a reduction over a reshaped 4-D view."""
    if step == 1:
        return plane
    nx, ny = (plane.shape[0] // step) * step, (plane.shape[1] // step) * step
    views = [plane[i:nx:step, j:ny:step] for i in range(step) for j in range(step)]
    if how == "first":  # labels: one voxel per block (no mixing of label values)
        return views[0]
    if how == "any":
        out = np.array(views[0], bool)
        for view in views[1:]:
            out |= view.astype(bool, copy=False)
        return out
    out = views[0].astype(np.float32)
    for view in views[1:]:
        out += view
    return out / np.float32(step * step)


def square_pixels(plane, zooms_xy, how="mean", target_mm=DISPLAY_MM):
    """A 2-D slice with ~``target_mm`` square pixels: an axis finer than that is thinned
    (block mean, or any for masks), a coarser one (thick slices) repeated."""
    out = np.asarray(plane)
    for axis, z in enumerate(zooms_xy[:2]):
        step = max(1, int(round(target_mm / float(z))))
        if step > 1:
            n = (out.shape[axis] // step) * step
            blocks = out[(slice(None),) * axis + (slice(0, n),)]
            blocks = blocks.reshape(out.shape[:axis] + (n // step, step) + out.shape[axis + 1:])
            out = blocks.any(axis=axis + 1) if how == "any" else blocks.mean(axis=axis + 1, dtype=np.float32)
        rep = max(1, int(round(float(z) * step / target_mm)))
        if rep > 1:
            out = np.repeat(out, rep, axis=axis)
    return out


MAX_DETAIL_PX = 256  # a cropped panel larger than this is thinned (a whole head is 500+ px)


def crop_step(sx, sy, max_px=MAX_DETAIL_PX):
    """In-plane stride of a cropped panel: 1 (full detail) unless the crop spans more than
    ``max_px`` voxels, e.g. a very large or scattered mask, where the crop is the whole head."""
    return max(1, int(np.ceil(max(sx.stop - sx.start, sy.stop - sy.start) / max_px)))


# ------------------------------------------------------------------ numpy compositing


def _rgb(color):
    from matplotlib.colors import to_rgb

    return np.array(to_rgb(color), np.float32)


def gray(plane, window=WINDOW_HU):
    """A 2-D slice in HU as an RGB float image (x, y, 3) in the brain window."""
    g = np.clip((np.asarray(plane, np.float32) - window[0]) / (window[1] - window[0]), 0, 1)
    return np.repeat(g[..., None], 3, axis=2)


def blend(rgb, mask, color, alpha=0.35):
    """Fill ``mask`` with ``color`` at ``alpha`` (in place)."""
    mask = np.asarray(mask, bool)
    if mask.any():
        rgb[mask] = rgb[mask] * (1 - alpha) + _rgb(color) * alpha
    return rgb


def edge(rgb, mask, color, width=1):
    """Paint the inner edge of ``mask`` (``width`` pixels) with ``color`` (in place); the
    array border is not an edge (as matplotlib's contour of a mask filling a panel)."""
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    if mask.any() and not mask.all():
        rim = mask & ~ndi.binary_erosion(mask, iterations=width, border_value=1)
        rgb[rim] = _rgb(color)
    return rgb


def level_line(rgb, field, level, color):
    """Paint the pixels where ``field`` crosses ``level`` (a plane's trace) (in place)."""
    above = np.asarray(field) > level
    cross = np.zeros(above.shape, bool)
    cross[1:] |= above[1:] != above[:-1]
    cross[:, 1:] |= above[:, 1:] != above[:, :-1]
    rgb[cross] = _rgb(color)
    return rgb


def displayed(rgb, radiological=True):
    """(x, y, ...) data axes -> (row, col) screen axes, anterior/superior up; radiological:
    the patient's right on the left of the screen."""
    out = np.swapaxes(rgb, 0, 1)[::-1]
    return out[:, ::-1] if radiological else out


class Mosaic:
    """Panels of one size tiled on a black canvas, drawn as one image; labels and lines
    in panel pixel coordinates (x right, y down)."""

    def __init__(self, n, cols, panel_shape, min_px=200, gap=2):
        self.cols = max(1, min(cols, n))
        self.rows = int(np.ceil(max(n, 1) / self.cols))
        # integer up-scaling of small (cropped) panels, so text and lines keep their size
        self.zoom = max(1, int(round(min_px / max(panel_shape[:2]))))
        self.h, self.w = (int(v) * self.zoom for v in panel_shape[:2])
        self.gap = gap
        self.canvas = np.zeros((self.rows * (self.h + gap) - gap, self.cols * (self.w + gap) - gap, 3),
                               np.float32)
        self.texts, self.lines = [], []

    def origin(self, k):
        r, c = divmod(k, self.cols)
        return c * (self.w + self.gap), r * (self.h + self.gap)

    def put(self, k, screen_rgb):
        x0, y0 = self.origin(k)
        img = np.repeat(np.repeat(screen_rgb, self.zoom, axis=0), self.zoom, axis=1)
        self.canvas[y0:y0 + self.h, x0:x0 + self.w] = img[:self.h, :self.w]

    def label(self, k, text, where="tl", size=8, color="white"):
        x0, y0 = self.origin(k)
        x, ha = (x0 + 4, "left") if where[1] == "l" else (x0 + self.w - 4, "right")
        y, va = (y0 + 3, "top") if where[0] == "t" else (y0 + self.h - 3, "bottom")
        self.texts.append((x, y, text, dict(color=color, fontsize=size, ha=ha, va=va)))

    def line(self, k, xs, ys, color, text=None):
        """A line through panel pixels (xs, ys) of the unzoomed panel (screen axes)."""
        x0, y0 = self.origin(k)
        z = self.zoom
        px = [x0 + (x + 0.5) * z - 0.5 for x in xs]
        py = [y0 + (y + 0.5) * z - 0.5 for y in ys]
        self.lines.append((px, py, color, text))

    def png(self, dpi=90, compress_level=3):
        """PNG bytes: the canvas with its labels and lines drawn by Pillow (matplotlib's own
        image path would resample and re-encode the pixels; this is ~5x faster)."""
        from matplotlib import font_manager
        from PIL import Image, ImageDraw, ImageFont

        img = Image.fromarray(np.rint(np.clip(self.canvas, 0, 1) * 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
        fonts = {}

        def font(size_pt):
            px = max(6, int(round(size_pt * dpi / 72)))
            if px not in fonts:
                fonts[px] = ImageFont.truetype(path, px)
            return fonts[px]

        anchors = {("left", "top"): "lt", ("right", "top"): "rt", ("left", "bottom"): "lb",
                   ("right", "bottom"): "rb"}
        for x, y, text, kw in self.texts:
            draw.text((x, y), text, fill=kw["color"], font=font(kw["fontsize"]),
                      anchor=anchors[kw["ha"], kw["va"]])
        for px, py, color, text in self.lines:
            draw.line(list(zip(px, py)), fill=color, width=2)
            if text:
                draw.text((px[-1], py[-1]), text, fill=color, font=font(8), anchor="lb")
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=compress_level, dpi=(dpi, dpi))
        return buf.getvalue()


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
    step = display_step(zooms)
    shape = (ct.shape[1] // step, ct.shape[0] // step)  # screen rows (y), columns (x)
    mosaic = Mosaic(len(slices), cols, shape)
    for i, k in enumerate(slices):
        hem = thin(bleed[:, :, k] > 0, step, "any")
        rgb = gray(thin(ct[:, :, k], step))
        blend(rgb, hem, BLEED_COLOR)
        edge(rgb, thin(brain[:, :, k] > 0, step, "any"), BRAIN_COLOR)
        edge(rgb, hem, BLEED_COLOR)
        mosaic.put(i, displayed(rgb))
        mosaic.label(i, f"z {k}", "bl", 7)
    if slices:
        mosaic.label(0, "R", "tl", 10)
        mosaic.label(0, "L", "tr", 10)
    return mosaic.png()


def _crop(mask, zooms, margin_mm=15.0):
    from ..nifti import bbox_bounds

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


def _to_screen(x, y, sx, sy, step=1):
    """Data (x, y) indices -> (column, row) of a cropped, displayed (radiological) panel
    thinned by ``step`` (block b shows voxels b*step .. b*step + step - 1)."""
    width, height = (sx.stop - sx.start) // step, (sy.stop - sy.start) // step
    return (width - 1 - (x - sx.start - (step - 1) / 2) / step,
            height - 1 - (y - sy.start - (step - 1) / 2) / step)


def detail_mosaic(ct, brain, bleed, zooms, abc=None, n=18, cols=6):
    """Every hemorrhage slice (up to n), zoomed: outline only, so the density under the
    edge stays visible; the ABC/2 diameters drawn on the slice of largest area."""
    slices = pick_slices(bleed, n)
    if not slices:
        return None
    if abc and abc.get("slice") is not None and abc["slice"] not in slices:
        slices = sorted(slices[:-1] + [abc["slice"]])
    sx, sy = _crop(bleed > 0, zooms)
    step = crop_step(sx, sy)
    mosaic = Mosaic(len(slices), cols, ((sy.stop - sy.start) // step, (sx.stop - sx.start) // step),
                    min_px=216)
    for i, k in enumerate(slices):
        rgb = gray(thin(ct[sx, sy, k], step))
        edge(rgb, thin(brain[sx, sy, k] > 0, step, "any"), BRAIN_COLOR)
        edge(rgb, thin(bleed[sx, sy, k] > 0, step, "any"), BLEED_COLOR)
        mosaic.put(i, displayed(rgb))
        mosaic.label(i, f"z {k}", "bl", 7)
        if abc and abc.get("slice") == k and abc.get("a_line"):
            for line, color, name in ((abc["a_line"], "#7CFC00", "A"), (abc["b_line"], "#ffa500", "B")):
                (x0, y0), (x1, y1) = line
                (c0, r0), (c1, r1) = _to_screen(x0, y0, sx, sy, step), _to_screen(x1, y1, sx, sy, step)
                mosaic.line(i, [c0, c1], [r0, r1], color, name)
            mosaic.label(i, f"A {abc['a_mm']:.0f} mm  B {abc['b_mm']:.0f} mm", "tl", 7)
    return mosaic.png()


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
    # sagittal (y, z): anterior on the left; coronal (x, z): radiological (displayed() flips)
    panels = []
    for plane, mask, zxy, text in ((ct[x], brain[x] > 0, zooms[[1, 2]], f"sagittal x {x}  (anterior left)"),
                                   (ct[:, y], brain[:, y] > 0, zooms[[0, 2]], f"coronal y {y}  (R left, petrous)")):
        rgb = gray(square_pixels(plane, zxy), SKULL_BASE_WINDOW_HU)
        edge(rgb, square_pixels(mask, zxy, "any"), BRAIN_COLOR)
        panels.append((displayed(rgb), text))
    shape = np.max([p.shape[:2] for p, _ in panels], axis=0) + (16, 0)  # a black strip for the label
    mosaic = Mosaic(2, 2, tuple(shape), min_px=270)
    for k, (screen, text) in enumerate(panels):
        panel = np.zeros((mosaic.h // mosaic.zoom, mosaic.w // mosaic.zoom, 3), np.float32)
        top = panel.shape[0] - screen.shape[0]  # the slices at the bottom, the label above them
        panel[top:, :screen.shape[1]] = screen
        mosaic.put(k, panel)
        mosaic.label(k, text, "tl", 7)
    return mosaic.png()


def template_csf(tpl, axis, k, sigma=1.0, erode=3):
    """Slice ``k`` along ``axis`` of the template's CSF (smoothed density < 15 HU, 3 voxels
    inside the brain), computed on a slab just thick enough for the smoothing (radius 4
    sigma) and the erosion to reach it: the slice of the whole-volume maps, bit for bit,
    at a tenth of the cost."""
    from scipy import ndimage as ndi

    reach = max(int(4.0 * sigma + 0.5), erode) + 1
    lo, hi = max(0, k - reach), min(tpl.shape[axis], k + reach + 1)
    slab = tpl[(slice(None),) * axis + (slice(lo, hi),)]  # basic slicing: np.take copies slowly
    csf = (ndi.gaussian_filter(slab, sigma) < 15) & ndi.binary_erosion(slab != 0, iterations=erode)
    return csf[(slice(None),) * axis + (k - lo,)]


def alignment_figure(registered, template):
    """The registered scan (network input) with the template's edges, 3 views x 3 slices."""
    reg = np.asanyarray(registered.dataobj).astype(np.float32)
    tpl = np.asanyarray(template.dataobj).astype(np.float32)
    shape = np.array(reg.shape)
    mosaic = Mosaic(9, 3, (max(shape),) * 2)
    for row, axis in enumerate((2, 1, 0)):  # axial, coronal, sagittal
        for col, frac in enumerate((0.35, 0.5, 0.65)):
            k = int(frac * shape[axis])

            def cut(a):
                return a[(slice(None),) * axis + (k,)]

            rgb = gray(cut(reg))
            edge(rgb, cut(tpl) != 0, TEMPLATE_COLORS[0])
            edge(rgb, template_csf(tpl, axis, k), TEMPLATE_COLORS[1])
            screen = displayed(rgb, radiological=axis == 2)  # axial: radiological; others: as is
            panel = np.zeros((mosaic.h // mosaic.zoom, mosaic.w // mosaic.zoom, 3), np.float32)
            panel[:screen.shape[0], :screen.shape[1]] = screen
            mosaic.put(row * 3 + col, panel)
            mosaic.label(row * 3 + col, ("axial", "coronal", "sagittal")[row] + f" {k}", "bl", 7)
    return mosaic.png()


IVH_COLOR = "#3d7bff"
UNCERTAIN_CMAP = "autumn"


def split_uncertainty_mosaic(ct, dseg, prob, zooms, n=12, cols=6, band=(0.2, 0.8)):
    """Hemorrhage slices, zoomed: the parenchymal (red) and intraventricular (blue) parts
    outlined, and the uncertainty map (probability within ``band``, yellow = 0.5) filled."""
    from matplotlib import colormaps

    dseg = np.asarray(dseg)
    prob = np.asarray(prob, np.float32)
    unsure = (prob >= band[0]) & (prob <= band[1])
    region = (dseg > 0) | unsure
    slices = pick_slices(region, n)
    if not slices:
        return None
    sx, sy = _crop(region, zooms)
    step = crop_step(sx, sy)
    cmap = colormaps[UNCERTAIN_CMAP]
    mosaic = Mosaic(len(slices), cols, ((sy.stop - sy.start) // step, (sx.stop - sx.start) // step),
                    min_px=216)
    for i, k in enumerate(slices):
        rgb = gray(thin(ct[sx, sy, k], step))
        # closeness to 0.5 (1 at 0.5, 0 at the band's ends), only inside the band
        inside = thin(unsure[sx, sy, k], step, "any")
        if inside.any():
            u = 1 - np.abs(thin(prob[sx, sy, k], step)[inside] - 0.5) / 0.3
            rgb[inside] = 0.4 * rgb[inside] + 0.6 * cmap(np.clip(u, 0, 1))[:, :3]
        edge(rgb, thin(dseg[sx, sy, k] == 1, step, "any"), BLEED_COLOR)
        edge(rgb, thin(dseg[sx, sy, k] == 2, step, "any"), IVH_COLOR)
        mosaic.put(i, displayed(rgb))
        mosaic.label(i, f"z {k}", "bl", 7)
    return mosaic.png()


CLASS_COLORS = {"deep": "#ffb000", "lobar": "#7CFC00", "infratentorial": "#c77dff", "intraventricular": "#3d8bff"}
EDEMA_COLOR = "#ffff66"
MIDLINE_COLORS = ("#00ffd5", "#ff4fd8")  # skull mid-sagittal plane, plane through the septum


def trial_mosaic(ct_img, atlas_img, bleed_img, edema_img, classes, plane=None, shift_mm=None, n=8, cols=4):
    """Axial slices through the hemorrhage (or the ventricles): atlas regions outlined and coloured
    by location class, the hemorrhage (red) and the estimated edema (yellow) outlined, the skull's
    mid-sagittal plane (cyan) and the parallel plane through the septum (magenta).

    classes: {atlas index: class}; plane: (normal, offset) in world mm; shift_mm: signed.
    The masks may be given as arrays already in the closest RAS axes (loaded once by the report).
    """
    ras = nib.as_closest_canonical(ct_img)
    ct = np.asanyarray(ras.dataobj)
    zooms = np.array(ras.header.get_zooms()[:3], float)
    atlas = _canonical_array(atlas_img)
    bleed = _canonical_array(bleed_img) > 0
    edema = _canonical_array(edema_img) > 0 if edema_img is not None else np.zeros(bleed.shape, bool)
    vent_index = next((i for i, c in classes.items() if c == "intraventricular"), None)
    focus = bleed | edema if bleed.any() else atlas == vent_index
    slices = pick_slices(focus, n)
    if not slices:
        return None
    step = display_step(zooms)
    aff = ras.affine
    nx, ny = (ct.shape[0] // step), (ct.shape[1] // step)
    mosaic = Mosaic(len(slices), cols, (ny, nx), min_px=234)
    # voxel index of the block centres shown (thin() keeps whole blocks from index 0)
    ii, jj = np.meshgrid(np.arange(nx) * step + (step - 1) / 2, np.arange(ny) * step + (step - 1) / 2,
                         indexing="ij")
    max_label = int(max(classes, default=0))
    lut = {cls: np.isin(np.arange(max_label + 1), [i for i, c in classes.items() if c == cls])
           for cls in CLASS_COLORS}
    for i, k in enumerate(slices):
        rgb = gray(thin(ct[:, :, k], step))
        lab = thin(atlas[:, :, k], step, "first")
        safe = np.clip(lab, 0, max_label)
        for cls, color in CLASS_COLORS.items():
            blend(rgb, lut[cls][safe] & (lab == safe), color, 0.12)
        # region borders: where the label changes
        border = (np.diff(lab, axis=0, prepend=lab[:1]) != 0) | (np.diff(lab, axis=1, prepend=lab[:, :1]) != 0)
        blend(rgb, border & (lab > 0), "#ffffff", 0.25)
        edge(rgb, thin(bleed[:, :, k], step, "any"), BLEED_COLOR)
        edge(rgb, thin(edema[:, :, k], step, "any"), EDEMA_COLOR)
        if plane is not None:
            normal, offset = np.asarray(plane[0], float), float(plane[1])
            world = aff[:3, 0, None, None] * ii + aff[:3, 1, None, None] * jj \
                + (aff[:3, 2] * k + aff[:3, 3])[:, None, None]
            signed = np.tensordot(normal, world, axes=1) - offset
            levels = [(0.0, MIDLINE_COLORS[0])]
            if shift_mm is not None:
                levels.append((float(shift_mm), MIDLINE_COLORS[1]))
            for level, color in levels:
                if signed.min() < level < signed.max():
                    level_line(rgb, signed, level, color)
        mosaic.put(i, displayed(rgb))
        mosaic.label(i, f"z {k}", "bl", 7)
    return mosaic.png()
