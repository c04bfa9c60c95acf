"""Seeded phantoms of clean (frame-averaged) retinal OCT B-scans through the fovea.

A phantom is built in physical units, then drawn on the pixel grid:

- geometry: a 6 mm wide scan, 0.92 mm deep; the retina sits on a smoothly curved, slightly tilted
  Bruch's membrane with a foveal pit near the centre;
- layers, from the inner limiting membrane (ILM) down to Bruch's membrane, with typical parafoveal
  thicknesses (µm) and display intensities of a log-compressed averaged B-scan:
  NFL 15–50 (bright, thicker towards the optic disc), GCL 40, IPL 35, INL 35 (dark), OPL 25 (bright),
  ONL 75 (darkest retinal layer, thicker at the fovea), ELM 4 (thin line), inner segments 20 (dark),
  ellipsoid zone 12 (bright), outer segments 20, interdigitation zone 8, RPE/Bruch 18 (brightest);
- at the fovea the inner layers (NFL to OPL) thin out to almost nothing, the ONL thickens and the
  outer segments lengthen; the ganglion-cell layer is thickest on the parafoveal rim;
- below Bruch's membrane the choroid (200–320 µm: stroma with dark vessel lumens, dimming with depth),
  then the dim sclera; above the ILM the dark vitreous;
- 3–6 retinal vessels in the inner retina, each a hyper-reflective oval that casts a dark vertical
  shadow on every layer below it.

Boundaries are drawn with exact pixel coverage (a pixel straddling two layers gets the area-weighted
mix), then a light texture and a small point-spread blur make the layers look like an averaged scan:
smooth, no speckle. Speckle is what the degradation adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SCAN_WIDTH_MM = 6.0
SCAN_DEPTH_UM = 920.0

# (name, parafoveal thickness in µm, display intensity) from the ILM down to Bruch's membrane.
RETINAL_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("nfl", 25.0, 0.70),
    ("gcl", 40.0, 0.42),
    ("ipl", 35.0, 0.55),
    ("inl", 35.0, 0.27),
    ("opl", 25.0, 0.52),
    ("onl", 75.0, 0.16),
    ("elm", 4.0, 0.42),
    ("inner_segments", 20.0, 0.28),
    ("ellipsoid_zone", 12.0, 0.82),
    ("outer_segments", 20.0, 0.42),
    ("interdigitation", 8.0, 0.60),
    ("rpe", 18.0, 0.88),
)
INNER_LAYERS = ("nfl", "gcl", "ipl", "inl", "opl")  # the layers displaced out of the foveal pit
VITREOUS = 0.04
CHOROID_TOP = 0.58  # choriocapillaris just below Bruch's membrane
SCLERA = 0.16


@dataclass
class Phantom:
    """A phantom B-scan and where its layers are.

    ``boundaries[name]`` is the depth in px (float, per column) of the *top* of layer ``name``; the keys
    run from ``nfl`` (the ILM) through the retinal layers to ``choroid`` (Bruch's membrane), ``sclera``
    (the choroid–sclera interface). ``vessels`` lists the retinal vessels (column, depth, radius in px).
    """

    image: np.ndarray  # H×W×1 float32 in [0, 1]
    boundaries: dict[str, np.ndarray]
    vessels: list[tuple[float, float, float]]
    fovea_column: float


def _smooth_wiggle(rng: np.random.Generator, x: np.ndarray, amplitude: float, waves: int = 3) -> np.ndarray:
    """A smooth random curve over ``x`` in [-1, 1]: a few low-frequency sines, peak about ``amplitude``."""
    out = np.zeros_like(x)
    for k in range(1, waves + 1):
        out += rng.normal(0, 1) / k * np.sin(np.pi * k * (x + rng.uniform(0, 2)))
    return amplitude * out / max(np.abs(out).max(), 1e-6)


def _coverage_below(boundary: np.ndarray, height: int) -> np.ndarray:
    """Fraction of every pixel (H×W) lying below the per-column ``boundary`` (px): exact anti-aliasing."""
    rows = np.arange(height, dtype=np.float64)[:, None]
    return np.clip(rows + 1.0 - boundary[None, :], 0.0, 1.0)


def bscan_phantom(seed: int, height: int = 256, width: int = 256) -> Phantom:
    """A clean B-scan phantom; the same ``seed`` and size always give the same phantom."""
    rng = np.random.default_rng(seed)
    um_per_px = SCAN_DEPTH_UM / height
    x_mm = np.linspace(-SCAN_WIDTH_MM / 2, SCAN_WIDTH_MM / 2, width)
    x_unit = x_mm / (SCAN_WIDTH_MM / 2)

    # --- lateral shape of the layers ------------------------------------------------------------------
    fovea_mm = rng.uniform(-0.4, 0.4)
    nasal = rng.choice([-1.0, 1.0])  # which side the optic disc is on (left or right eye)
    dist = x_mm - fovea_mm
    pit = np.exp(-0.5 * (dist / rng.uniform(0.38, 0.5)) ** 2)  # 1 at the foveola, 0 far away
    rim = np.exp(-0.5 * ((np.abs(dist) - 1.1) / 0.55) ** 2)  # the parafoveal ring, thickest ganglion cells
    pit_depth = rng.uniform(0.9, 0.97)

    thickness: dict[str, np.ndarray] = {}
    for name, base, _ in RETINAL_LAYERS:
        t = np.full(width, base) * (1.0 + _smooth_wiggle(rng, x_unit, 0.06))
        if name == "nfl":  # thicker towards the optic disc, thin on the temporal side
            t = t * (0.6 + 1.4 / (1.0 + np.exp(-(nasal * dist - 1.0) / 0.6)))
        if name in ("gcl", "ipl", "inl"):
            t = t * (1.0 + {"gcl": 0.5, "ipl": 0.2, "inl": 0.2}[name] * rim)
        if name in INNER_LAYERS:
            t = t * (1.0 - pit_depth * pit)
        if name == "onl":
            t = t + 45.0 * pit  # Henle fibres and the packed cone nuclei of the fovea
        if name == "outer_segments":
            t = t + 12.0 * pit  # longer foveal cone outer segments: the foveal bulge of the EZ
        thickness[name] = t / um_per_px

    # --- Bruch's membrane: curvature of the eye, tilt, gentle undulation ---------------------------------
    retina_px = sum(thickness.values())
    bruch = (rng.uniform(0.5, 0.56) * height
             + rng.uniform(20, 60) / um_per_px * (1.0 - x_unit ** 2)  # bowl: the centre sits deeper
             + rng.uniform(-40, 40) / um_per_px * x_unit  # tilt
             + _smooth_wiggle(rng, x_unit, 6.0 / um_per_px, waves=4))
    boundaries: dict[str, np.ndarray] = {}
    top = bruch - retina_px
    for name, _, _ in RETINAL_LAYERS:
        boundaries[name] = top.copy()
        top = top + thickness[name]
    boundaries["choroid"] = bruch
    choroid_px = rng.uniform(200, 320) / um_per_px * (1.0 + _smooth_wiggle(rng, x_unit, 0.12)) * (1.0 - 0.2 * x_unit ** 2)
    boundaries["sclera"] = bruch + choroid_px

    # --- draw: every region's value times its exact pixel coverage ---------------------------------------
    rows = np.arange(height, dtype=np.float64)[:, None]
    names = [name for name, _, _ in RETINAL_LAYERS]
    levels = {name: value * (1.0 + _smooth_wiggle(rng, x_unit, 0.06)) for name, _, value in RETINAL_LAYERS}
    levels["nfl"] = levels["nfl"] * np.clip(0.8 + 0.2 * thickness["nfl"] * um_per_px / 40.0, 0.8, 1.1)

    below = {name: _coverage_below(boundaries[name], height) for name in [*names, "choroid", "sclera"]}
    image = VITREOUS * (1.0 - below["nfl"])
    for upper, lower in zip(names, [*names[1:], "choroid"]):
        image += levels[upper][None, :] * (below[upper] - below[lower])
    image += _choroid(rng, rows, bruch, choroid_px, um_per_px, width) * (below["choroid"] - below["sclera"])
    sclera_depth = np.clip(rows - boundaries["sclera"][None, :], 0, None) * um_per_px
    image += SCLERA * np.exp(-sclera_depth / 400.0) * below["sclera"]

    # --- retinal vessels and their shadows ------------------------------------------------------------------
    cols = np.arange(width, dtype=np.float64)[None, :]
    vessels = []
    for _ in range(int(rng.integers(3, 7))):
        while True:  # no large vessels cross the foveal avascular zone
            col = rng.uniform(0.04, 0.96) * (width - 1)
            if abs(x_mm[int(col)] - fovea_mm) > 0.7:
                break
        c = int(round(col))
        diameter_um = rng.uniform(50, 130)
        radius_x = diameter_um / 2 / (SCAN_WIDTH_MM * 1000 / width)
        radius_y = diameter_um / 2 / um_per_px
        depth = boundaries["gcl"][c] + rng.uniform(-0.3, 0.4) * radius_y  # around the NFL/GCL border
        depth = max(depth, boundaries["nfl"][c] + radius_y * 0.8)
        radius_x = max(radius_x, 1.0)
        lateral = np.exp(-0.5 * ((cols - col) / (0.8 * radius_x + 0.5)) ** 2)
        onset = 1.0 / (1.0 + np.exp(-(rows - depth) / 2.0))  # the shadow starts inside the vessel
        image *= 1.0 - rng.uniform(0.3, 0.55) * lateral * onset
        inside = ((cols - col) / radius_x) ** 2 + ((rows - depth) / radius_y) ** 2
        wall = np.exp(-0.5 * ((rows - (depth - 0.5 * radius_y)) / (0.35 * radius_y)) ** 2)  # bright upper wall
        vessel_level = 0.45 + 0.3 * wall
        blend = np.clip(1.5 - inside, 0.0, 1.0)  # soft edge of the oval
        image = image * (1.0 - blend) + vessel_level * blend
        vessels.append((float(col), float(depth), float(radius_x)))

    # --- an averaged scan is smooth but not flat: faint texture, then the instrument's resolution ------------
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (height, width)), sigma=(1.2, 2.5), mode="wrap")
    texture /= texture.std() + 1e-12
    tissue = np.clip(below["nfl"], 0.0, 1.0)
    image *= 1.0 + 0.04 * texture * tissue
    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.7), mode="nearest")
    image = np.clip(image, 0.0, 1.0).astype(np.float32)[..., None]
    fovea_column = float(np.interp(fovea_mm, x_mm, np.arange(width)))
    return Phantom(image, boundaries, vessels, fovea_column)


def _choroid(rng: np.random.Generator, rows: np.ndarray, bruch: np.ndarray, thickness: np.ndarray,
             um_per_px: float, width: int) -> np.ndarray:
    """Choroid intensity (H×W; used only between Bruch's membrane and the sclera): bright stroma with
    dark vessel lumens, small near the choriocapillaris (Sattler) and large deeper (Haller), dimming with
    depth as the light is scattered away."""
    height = rows.shape[0]
    depth = rows - bruch[None, :]  # px below Bruch's membrane
    relative = np.clip(depth / thickness[None, :], 0.0, 1.0)
    lumens = np.zeros((height, width))
    cols = np.arange(width, dtype=np.float64)[None, :]
    mean_thickness = float(thickness.mean())
    for _ in range(int(rng.integers(26, 36))):
        col = rng.uniform(0, width)
        rel = rng.uniform(0.15, 0.85)
        row = float(np.interp(col, np.arange(width), bruch)) + rel * mean_thickness
        radius_y = (15 + 70 * rel) / um_per_px * rng.uniform(0.7, 1.3)  # larger vessels deeper
        radius_x = radius_y * um_per_px / (SCAN_WIDTH_MM * 1000 / width) * rng.uniform(1.5, 3.0)
        inside = ((cols - col) / max(radius_x, 1.0)) ** 2 + ((rows - row) / radius_y) ** 2
        lumens = np.maximum(lumens, np.clip(1.5 - inside, 0.0, 1.0))
    lumens = ndimage.gaussian_filter(lumens, sigma=1.5)
    stroma = CHOROID_TOP * np.exp(-1.2 * relative)
    return stroma * (1.0 - 0.5 * lumens)
