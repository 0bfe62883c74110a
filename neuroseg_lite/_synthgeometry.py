"""Geometry of the synthetic stack's objects: where they go and which part of each voxel they cover.

The geometry under :mod:`neuroseg_lite.synth` (which paints the stain): placement of capillary paths, somata
and glial nuclei without overlaps (random sequential addition in a box larger than the volume, distances
wrapping around that box), and the shapes' partial-volume occupancy on the anisotropic voxel grid. Private to
the package.
"""
from __future__ import annotations

import math

import numpy as np

from neuroseg_lite.synthconfig import SynthConfig

__all__: list[str] = []

_UM3_PER_MM3 = 1e9


def _random_unit(rng) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _frame_from_axis(axis, rng) -> np.ndarray:
    """Rotation matrix whose first column is ``axis`` (body axes as columns, world order z, y, x)."""
    helper = _random_unit(rng)
    second = helper - axis * (helper @ axis)
    if np.linalg.norm(second) < 1e-6:
        second = np.roll(axis, 1) - axis * (np.roll(axis, 1) @ axis)
    second /= np.linalg.norm(second)
    return np.stack([axis, second, np.cross(axis, second)], axis=1)


def _taper_volume_factor(taper: float) -> float:
    """Volume of the tapered body relative to the ellipsoid with the same semi-axes."""
    t = np.linspace(-1.0, 1.0, 2001)
    profile = (1.0 - taper * (t + 1.0) / 2.0) ** 2 * (1.0 - t * t)
    return float(np.sum(profile) * (t[1] - t[0]) / (4.0 / 3.0))


def _max_bound_factor(cfg: SynthConfig) -> float:
    """Largest semi-axis any soma can have, in units of its volume-equivalent radius."""
    lateral = math.sqrt(cfg.soma_aspect_max / cfg.pyramid_elongation / _taper_volume_factor(cfg.pyramid_taper))
    return max(cfg.soma_aspect_max, cfg.pyramid_elongation, lateral)


def _partial_volume(signed_distance, grad, spacing) -> np.ndarray:
    """Fraction of each voxel inside a surface, linear in the signed distance across the voxel's width.

    The width of a voxel box measured along the surface normal is sum_i |n_i| h_i, so the ramp spans
    exactly one voxel whichever way the surface faces (2 um across z, 0.9 um across x).
    """
    gz, gy, gx = grad
    norm = np.sqrt(gz * gz + gy * gy + gx * gx) + 1e-12
    width = (np.abs(gz) * spacing[0] + np.abs(gy) * spacing[1] + np.abs(gx) * spacing[2]) / norm
    return np.clip(0.5 - signed_distance / width, 0.0, 1.0).astype(np.float32)


def _body(offsets, rotation, semi_axes, taper, spacing):
    """Occupancy and inside-mask of a (tapered) ellipsoid evaluated on box offsets from its centre (um).

    The body is t^2 + lateral^2 / s(t)^2 <= 1 with t the coordinate along the first body axis in units
    of that semi-axis and s(t) shrinking linearly from 1 at the base (t = -1) to 1 - taper at the apex.
    """
    dz, dy, dx = offsets
    q = [rotation[0, k] * dz + rotation[1, k] * dy + rotation[2, k] * dx for k in range(3)]
    a0, a1, a2 = semi_axes
    t = q[0] / a0
    lateral = (q[1] / a1) ** 2 + (q[2] / a2) ** 2
    if taper > 0:
        s = np.clip(1.0 - taper * (t + 1.0) / 2.0, 1.0 - taper, 1.0)
        g0 = 2.0 * t / a0 + lateral * taper / (a0 * s ** 3)
    else:
        s = 1.0
        g0 = 2.0 * t / a0
    f = t * t + lateral / (s * s)
    g1 = 2.0 * q[1] / (a1 * a1 * s * s)
    g2 = 2.0 * q[2] / (a2 * a2 * s * s)
    grad = [rotation[i, 0] * g0 + rotation[i, 1] * g1 + rotation[i, 2] * g2 for i in range(3)]
    rho = np.sqrt(f)
    norm = np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2) + 1e-12
    signed_distance = 2.0 * rho * (rho - 1.0) / norm  # first-order distance: (rho - 1) / |grad rho|
    return _partial_volume(signed_distance, grad, spacing), f <= 1.0


def _segment_distance(offsets, start, direction, length):
    """Distance from box points to a segment, the position t in [0, 1] along it, and the normal vector."""
    d = [offsets[i] - start[i] for i in range(3)]
    along = d[0] * direction[0] + d[1] * direction[1] + d[2] * direction[2]
    t = np.clip(along / length, 0.0, 1.0)
    diff = [d[i] - t * length * direction[i] for i in range(3)]
    return np.sqrt(diff[0] ** 2 + diff[1] ** 2 + diff[2] ** 2), t, diff


def _box(center_um, radius_um, shape, spacing, origin=(0, 0, 0)):
    """Slices and per-axis offsets (um, broadcastable) of the voxels within ``radius_um`` of a point.

    The grid of ``shape`` voxels starts at voxel index ``origin`` of the volume (a block of a larger
    sample); offsets are computed from the volume's own indices, so a voxel gets the same value in any block.
    """
    origin = np.asarray(origin, dtype=int)
    lo = np.maximum(np.floor((center_um - radius_um) / spacing).astype(int), origin)
    hi = np.minimum(np.ceil((center_um + radius_um) / spacing).astype(int) + 1, origin + np.asarray(shape))
    if np.any(hi <= lo):
        return None, None
    slices = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(lo, hi, origin))
    offsets = []
    for axis in range(3):
        axis_shape = [1, 1, 1]
        axis_shape[axis] = hi[axis] - lo[axis]
        offsets.append((np.arange(lo[axis], hi[axis]) * spacing[axis] - center_um[axis]).reshape(axis_shape))
    return slices, offsets


def _vessel_paths(rng, cfg, lo, hi):
    """Persistent random walks (2 um steps) crossing the box until the capillary length density is reached.

    Each walk enters through a face (chosen by area) heading inwards with a cosine-weighted direction,
    which for straight lines gives the same length density everywhere in the box; walks started inside
    would crowd the centre.
    """
    size = hi - lo
    target_um = cfg.vessel_length_density_mm_per_mm3 * np.prod(size) / _UM3_PER_MM3 * 1000.0
    step, turn = 2.0, math.sqrt(2.0 * 2.0 / cfg.vessel_persistence_um)
    face_area = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    paths, total = [], 0.0
    while total < target_um and len(paths) < 500:
        axis = rng.choice(3, p=face_area / face_area.sum())
        inward = np.zeros(3)
        inward[axis] = 1.0 if rng.random() < 0.5 else -1.0
        point = rng.uniform(lo, hi)
        point[axis] = lo[axis] if inward[axis] > 0 else hi[axis]
        direction = inward + _random_unit(rng)  # normal + uniform unit vector: cosine-weighted around normal
        direction /= np.linalg.norm(direction)
        points = [point]
        for _ in range(2000):
            direction = direction + rng.normal(0.0, turn, 3)
            direction /= np.linalg.norm(direction)
            point = point + step * direction
            points.append(point)
            if np.any(point < lo) or np.any(point > hi):
                break
        paths.append((np.array(points), rng.uniform(*cfg.vessel_diameter_um) / 2.0))
        total += step * (len(points) - 1)
    return paths


def _periodic_distance(centers, point, size):
    """Distances on the torus of the sampling box, so that its walls do not crowd cells against them."""
    delta = centers - point
    delta -= size * np.round(delta / size)
    return np.sqrt(np.einsum("ij,ij->i", delta, delta))


def _place_somata(rng, cfg, lo, hi, vessel_tree, vessel_reach):
    """Random sequential addition: each soma is redrawn up to 50 places before it is given up.

    Somata are drawn in a box larger than the volume by the largest soma radius, so that cut cells at the
    borders are as frequent as real ones; distances wrap around that box (no crowding at its walls).
    """
    n_target = rng.poisson(cfg.neuron_density_per_mm3 * np.prod(hi - lo) / _UM3_PER_MM3)
    log_d = np.log(cfg.soma_diameter_um)
    taper_gain = 1.0 / math.sqrt(_taper_volume_factor(cfg.pyramid_taper))
    apical = None if cfg.apical_direction is None else np.asarray(cfg.apical_direction) / np.linalg.norm(
        cfg.apical_direction)
    cells = []
    centers = np.empty((n_target, 3))
    reach = np.empty(n_target)
    for _ in range(n_target):
        radius = math.exp(rng.uniform(*log_d)) / 2.0
        pyramidal = rng.random() < cfg.pyramidal_fraction
        aspect = np.exp(rng.uniform(-0.5, 0.5, 2) * math.log(cfg.soma_aspect_max))
        if pyramidal:
            axis = _random_unit(rng) if apical is None else apical + math.radians(
                cfg.apical_jitter_deg) * rng.standard_normal(3)
            rotation = _frame_from_axis(axis / np.linalg.norm(axis), rng)
            elong = cfg.pyramid_elongation
            lateral = radius * taper_gain / math.sqrt(elong)
            semi_axes = np.array([radius * elong, lateral * aspect[0], lateral / aspect[0]])
            taper = cfg.pyramid_taper
        else:
            rotation = _frame_from_axis(_random_unit(rng), rng)
            semi_axes = radius * np.array([aspect[0], aspect[1], 1.0 / (aspect[0] * aspect[1])])
            taper = 0.0
        bound = float(semi_axes.max())
        for _ in range(50):
            center = rng.uniform(lo, hi)
            if vessel_tree is not None and vessel_tree.query(center)[0] < bound + vessel_reach + cfg.min_gap_um:
                continue
            n = len(cells)
            if n and np.any(_periodic_distance(centers[:n], center, hi - lo) < reach[:n] + bound + cfg.min_gap_um):
                continue
            centers[n], reach[n] = center, bound
            cells.append(dict(center=center, rotation=rotation, semi_axes=semi_axes, taper=taper, bound=bound,
                              diameter=2.0 * radius, kind="pyramidal" if pyramidal else "ellipsoid"))
            break
    return cells, centers[:len(cells)], reach[:len(cells)]


def _place_glia(rng, cfg, lo, hi, soma_centers, soma_reach, vessel_tree, vessel_reach):
    """Glial nuclei between somata and vessels; a fraction sits against a soma as satellite cells do."""
    n_target = rng.poisson(cfg.glia_density_per_mm3 * np.prod(hi - lo) / _UM3_PER_MM3)
    glia, centers, reach = [], np.empty((n_target, 3)), np.empty(n_target)
    for _ in range(n_target):
        aspect = np.exp(rng.uniform(-0.5, 0.5, 2) * math.log(1.4))
        semi_axes = rng.uniform(*cfg.glia_diameter_um) / 2.0 * np.array(
            [aspect[0], aspect[1], 1.0 / (aspect[0] * aspect[1])])
        bound = float(semi_axes.max())
        satellite = len(soma_centers) > 0 and rng.random() < cfg.glia_satellite_fraction
        gap = 0.5 if satellite else cfg.min_gap_um  # satellite oligodendrocytes rest against the soma
        for _ in range(50):
            if satellite:
                host = rng.integers(len(soma_centers))
                center = soma_centers[host] + _random_unit(rng) * (soma_reach[host] + bound + gap + 0.1)
            else:
                center = rng.uniform(lo, hi)
            if len(soma_centers) and np.any(
                    _periodic_distance(soma_centers, center, hi - lo) < soma_reach + bound + gap):
                continue
            if vessel_tree is not None and vessel_tree.query(center)[0] < bound + vessel_reach:
                continue
            n = len(glia)
            if n and np.any(_periodic_distance(centers[:n], center, hi - lo) < reach[:n] + bound + 1.0):
                continue
            centers[n], reach[n] = center, bound
            glia.append(dict(center=center, rotation=_frame_from_axis(_random_unit(rng), rng), semi_axes=semi_axes,
                             brightness=cfg.glia_brightness * rng.lognormal(0.0, 0.3)))
            break
    return glia
