"""Procedural surface materials for the synthetic scenes: albedo patterns and height-field relief.

Patterns and relief are functions of surface coordinates ``(u, v)`` in metres (arc length along
the surface), so they stick to the geometry. Fine detail is what a codec throws away first,
which is why the object classes differ by pattern, not by colour.

Every pattern is band-limited per pixel: a sinusoid of ``freq`` cycles per metre seen through a
Gaussian pixel footprint of ``sigma`` metres keeps ``exp(-2 pi^2 (freq sigma)^2)`` of its
amplitude. A pattern finer than the pixel grid therefore fades to its mean instead of aliasing
into moire, and a scene rendered small looks like the same scene rendered large and shrunk.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

PLAIN, HSTRIPES, VSTRIPES, CHECKS, DOTS, GRAIN = range(6)
NO_RELIEF, RIDGES_U, RIDGES_V, BUMPS = range(4)
_TWO_PI = 2 * np.pi


@dataclass(frozen=True)
class Material:
    """Albedo ``colour * (1 + contrast * pattern + grain * noise)`` and an optional relief.

    ``fu``/``fv``: pattern frequency (cycles per metre) along u and v; ``relief_amp``: depth of
    the relief in metres (it is carved into the surface: heights lie in ``[-relief_amp, 0]``);
    ``ru``/``rv``: relief frequency along u and v; ``key``: seeds the grain noise.
    """

    colour: tuple[float, float, float]
    pattern: int = PLAIN
    contrast: float = 0.0
    fu: float = 0.0
    fv: float = 0.0
    grain: float = 0.0
    grain_cell: float = 0.01
    relief: int = NO_RELIEF
    relief_amp: float = 0.0
    ru: float = 0.0
    rv: float = 0.0
    key: int = 0

    def wrapped(self, circumference: float) -> Material:
        """Round the u frequencies to whole cycles around a closed surface: no seam."""

        def whole(f):
            return max(1, round(f * circumference)) / circumference if f > 0 else f

        return replace(self, fu=whole(self.fu), ru=whole(self.ru))


def attenuation(freq: float | np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Amplitude left of a sinusoid of ``freq`` cycles/m after a Gaussian blur of ``sigma`` m."""
    return np.exp(-2 * np.pi**2 * (freq * sigma) ** 2)


def _soft_square(x: np.ndarray, k: float = 2.5) -> np.ndarray:
    """A square wave with rounded edges (few harmonics, so little aliasing)."""
    return np.tanh(k * x) / np.tanh(k)


def _dots(pu: np.ndarray, pv: np.ndarray) -> np.ndarray:
    d = np.cos(pu) * np.cos(pv)
    x = np.clip((d - 0.35) / 0.4, 0.0, 1.0)
    return x * x * (3 - 2 * x)  # smoothstep: round dots on a diagonal lattice


_GRID = np.linspace(0, _TWO_PI, 256, endpoint=False)
_DOTS_MEAN = float(_dots(_GRID[:, None], _GRID[None, :]).mean())


def _hash01(i: np.ndarray, j: np.ndarray, key: int) -> np.ndarray:
    """Deterministic uniform [0, 1) value per integer lattice cell (wrapping int64 arithmetic)."""
    h = (i * 73856093) ^ (j * 19349663) ^ np.int64(key)
    h = (h ^ (h >> 13)) * 1274126177
    h ^= h >> 16
    return (h & 0xFFFF) / 65536.0


def _noise(m: Material, u: np.ndarray, v: np.ndarray, su: np.ndarray, sv: np.ndarray) -> np.ndarray:
    """Grain: an independent uniform value in [-1, 1] per ``grain_cell``-sized surface cell."""
    cell = m.grain_cell
    i, j = np.floor(u / cell).astype(np.int64), np.floor(v / cell).astype(np.int64)
    return (2 * _hash01(i, j, m.key) - 1) * attenuation(0.5 / cell, np.maximum(su, sv))


def pattern(m: Material, u: np.ndarray, v: np.ndarray, su: np.ndarray, sv: np.ndarray) -> np.ndarray:
    """Zero-mean pattern value in about [-1, 1] at surface coordinates (u, v).

    ``su``/``sv``: pixel footprint (Gaussian sigma) along u and v, in metres of u and v.
    """
    if m.pattern == PLAIN:
        return np.zeros_like(u)
    if m.pattern == GRAIN:
        return _noise(m, u, v, su, sv)
    pu, pv = _TWO_PI * m.fu * u, _TWO_PI * m.fv * v
    gu, gv = attenuation(m.fu, su), attenuation(m.fv, sv)
    if m.pattern == HSTRIPES:
        return gv * _soft_square(np.sin(pv))
    if m.pattern == VSTRIPES:
        return gu * _soft_square(np.sin(pu))
    if m.pattern == CHECKS:
        return gu * gv * _soft_square(2 * np.sin(pu) * np.sin(pv))
    if m.pattern == DOTS:
        return gu * gv * 2 * (_dots(pu, pv) - _DOTS_MEAN)
    raise ValueError(f"unknown pattern id {m.pattern}")


def albedo(m: Material, u: np.ndarray, v: np.ndarray, su: np.ndarray, sv: np.ndarray) -> np.ndarray:
    """(M, 3) reflectance in [0.02, 1] of ``m`` at surface coordinates (u, v)."""
    k = m.contrast * pattern(m, u, v, su, sv)
    if m.grain > 0 and m.pattern != GRAIN:
        k = k + m.grain * _noise(m, u, v, su, sv)
    return np.clip(np.asarray(m.colour) * (1 + k)[:, None], 0.02, 1.0)


def relief_height(m: Material, u: np.ndarray, v: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Height of the relief (<= 0, metres, along the outward normal) at (u, v).

    ``gain`` in [0, 1] scales the relief per pixel (footprint band-limiting, grazing fade).
    """
    a = 0.5 * m.relief_amp * gain
    if m.relief == RIDGES_U:
        return -a * (1 + np.cos(_TWO_PI * m.ru * u))
    if m.relief == RIDGES_V:
        return -a * (1 + np.cos(_TWO_PI * m.rv * v))
    if m.relief == BUMPS:
        return -a * (1 + np.cos(_TWO_PI * m.ru * u) * np.cos(_TWO_PI * m.rv * v))
    return np.zeros_like(u)


def relief(m: Material, u: np.ndarray, v: np.ndarray, gain: np.ndarray):
    """``relief_height`` and its derivatives d/du, d/dv."""
    a = 0.5 * m.relief_amp * gain
    pu, pv = _TWO_PI * m.ru * u, _TWO_PI * m.rv * v
    zero = np.zeros_like(u)
    if m.relief == RIDGES_U:
        return -a * (1 + np.cos(pu)), a * _TWO_PI * m.ru * np.sin(pu), zero
    if m.relief == RIDGES_V:
        return -a * (1 + np.cos(pv)), zero, a * _TWO_PI * m.rv * np.sin(pv)
    if m.relief == BUMPS:
        cu, cv, s_u, s_v = np.cos(pu), np.cos(pv), np.sin(pu), np.sin(pv)
        return (-a * (1 + cu * cv), a * _TWO_PI * m.ru * s_u * cv, a * _TWO_PI * m.rv * cu * s_v)
    return zero, zero, zero


def relief_gain(m: Material, su: np.ndarray, sv: np.ndarray) -> np.ndarray:
    """Footprint band-limiting of the relief: ridges finer than a pixel flatten out."""
    g = np.ones_like(su)
    if m.relief in (RIDGES_U, BUMPS):
        g = g * attenuation(m.ru, su)
    if m.relief in (RIDGES_V, BUMPS):
        g = g * attenuation(m.rv, sv)
    return g
