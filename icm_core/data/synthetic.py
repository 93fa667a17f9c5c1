"""Procedurally rendered indoor scenes: the offline default dataset.

Each scene is a room (floor, ceiling, walls) seen by a pinhole camera with a random pose and
field of view, cluttered with 3-8 large primitives (spheres, boxes, cylinders), up to 4 small
balls (on the floor or on boxes) and up to 3 thin poles. Rays are cast for every pixel at once
(numpy), so every label comes from the same geometry as the picture.

The tasks depend on detail a codec can destroy. Large objects are classed by their surface
*material*, not their shape or colour: every class draws its colours from the same per-scene
palette and its shape from the same three primitives, and differs only by a fine procedural
pattern (stripe, check and dot periods of 3-8 cm, 2-6 pixels at 256 px) or by a carved relief.
Walls and floors carry fine patterns and reliefs too; reliefs displace the depth and tilt the
normals consistently (a height field traced along each ray). Patterns live in surface
coordinates and are band-limited to the pixel footprint (see ``textures``), so a scene is the
same at every resolution, only sharper. Light position, colour, ambient and fill vary; the
point light casts hard shadows from the objects.

=============  ==============================================================================
semseg         class of the nearest surface (``SYNTHETIC_CLASSES``): wall, floor, ceiling;
               large objects by material: plain, hstripes (bands that vary with height),
               vstripes (bands around / along), checks, dots, grain (1.5-3 cm cells of
               random shade), ridged
               (plain albedo, carved ridges or bumps); small objects by shape: pole, ball
               (whatever their print)
depth          metric depth along the optical axis (metres), as NYUD-v2, relief included
normals        unit surface normal in the camera frame (x right, y down, z forward), facing
               the camera, relief included
boundary       1-pixel lines where the surface instance changes or depth jumps by > 5 %
saliency       the nearest object covering at least 2 % of the picture
human_parts    object sub-parts: 0 not an object, 1 upward-facing (top) faces, 2 sides
=============  ==============================================================================

Scenes are deterministic per ``(seed, split, index)`` and render at any resolution. The splits
(``SPLITS``) use disjoint blocks of scene seeds by construction: scene ``index`` of ``split``
with dataset ``seed`` renders scene seed ``(seed * 4 + split_id) * 2**31 + index``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from icm_core.data import textures as tx
from icm_core.errors import DatasetError
from icm_core.tasks.registry import SYNTHETIC_CLASSES, resolve_tasks

CLASS = {name: i for i, name in enumerate(SYNTHETIC_CLASSES)}
WALL, FLOOR, CEILING = CLASS["wall"], CLASS["floor"], CLASS["ceiling"]
# large-object classes and the pattern that defines each (ridged: a relief, no pattern)
MATERIAL_CLASSES = {"plain": tx.PLAIN, "hstripes": tx.HSTRIPES, "vstripes": tx.VSTRIPES,
                    "checks": tx.CHECKS, "dots": tx.DOTS, "grain": tx.GRAIN, "ridged": tx.PLAIN}
# scene parameter ranges (uniform): camera pose in metres / degrees, object counts inclusive
CAMERA = {"height": (0.9, 1.9), "pitch": (-5.0, 25.0), "yaw": (-25.0, 25.0), "fov": (50.0, 80.0)}
COUNTS = {"large": (3, 8), "balls": (0, 4), "poles": (0, 3)}
SPLITS = ("train", "val", "test", "pretrain")
SPLIT_SIZE = 2**31  # scene indices per (seed, split) block: blocks never overlap
_UP = np.array([0.0, 1.0, 0.0])


# --- geometry --------------------------------------------------------------------------------
@dataclass
class Frame:
    """Surface frame at hit points: base normal, surface coordinates and their 3-D gradients."""

    n: np.ndarray  # (M, 3) outward unit normal of the base (un-displaced) surface
    u: np.ndarray  # (M,) metres
    v: np.ndarray  # (M,) metres
    gu: np.ndarray  # (M, 3) gradient of u with respect to the hit point
    gv: np.ndarray  # (M, 3)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def _rows(vec: np.ndarray, m: int) -> np.ndarray:
    return np.broadcast_to(vec, (m, 3))


class Surface(ABC):
    """A ray-traceable surface with a class, an instance id and a material.

    ``intersect`` takes ray origins ``o`` ((3,) or (M, 3)) and directions ``D`` (M, 3) and returns
    the ray parameter of the first hit (inf if none) and a per-ray face id for ``frame``.
    """

    cls: int
    inst: int
    material: tx.Material

    def bound(self) -> tuple[np.ndarray, float] | None:
        """Bounding sphere (centre, radius), or None where the surface may cover any pixel."""
        return None

    @abstractmethod
    def intersect(self, o, D) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def frame(self, P: np.ndarray, face: np.ndarray) -> Frame: ...


@dataclass(eq=False)
class Plane(Surface):
    """The plane ``P[axis] = value``, normal ``sign * e_axis``; (u, v) = (P[u_axis], P[v_axis])."""

    axis: int
    value: float
    sign: float
    u_axis: int
    v_axis: int
    cls: int
    inst: int
    material: tx.Material

    def intersect(self, o, D):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.value - o[..., self.axis]) / D[:, self.axis]
        return np.where(t > 1e-6, t, np.inf), np.zeros(len(D), np.int8)

    def frame(self, P, face):
        m, eye = len(P), np.eye(3)
        return Frame(_rows(self.sign * eye[self.axis], m), P[:, self.u_axis], P[:, self.v_axis],
                     _rows(eye[self.u_axis], m), _rows(eye[self.v_axis], m))


def _around(d: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Arc length ``r * atan2(dx, dz)`` around the vertical axis and its gradient."""
    rho2 = np.maximum(d[:, 0] ** 2 + d[:, 2] ** 2, (0.05 * r) ** 2)
    g = np.stack([d[:, 2], np.zeros(len(d)), -d[:, 0]], axis=1) * (r / rho2)[:, None]
    return r * np.arctan2(d[:, 0], d[:, 2]), g


@dataclass(eq=False)
class Sphere(Surface):
    """Sphere; u = arc length around the vertical axis, v = height above the centre."""

    center: np.ndarray
    radius: float
    cls: int
    inst: int
    material: tx.Material

    def bound(self):
        return self.center, self.radius

    def intersect(self, o, D):
        oc = o - self.center
        a = _dot(D, D)
        b = _dot(D, oc)
        c = _dot(oc, oc) - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return np.where((disc > 0) & (t > 1e-6), t, np.inf), np.zeros(len(D), np.int8)

    def frame(self, P, face):
        d = P - self.center
        u, gu = _around(d, self.radius)
        return Frame(d / self.radius, u, d[:, 1], gu, _rows(_UP, len(P)))


# box faces: the surface coordinates (local axes) on a face normal to local axis 0, 1, 2
_BOX_U, _BOX_V = np.array([2, 0, 0]), np.array([1, 2, 1])


@dataclass(eq=False)
class Box(Surface):
    """Box rotated by ``yaw`` about the vertical; (u, v) = the face's two local axes."""

    center: np.ndarray
    half: np.ndarray
    yaw: float
    cls: int
    inst: int
    material: tx.Material

    @property
    def rotation(self) -> np.ndarray:
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # local -> world

    def bound(self):
        return self.center, float(np.linalg.norm(self.half))

    def intersect(self, o, D):
        R = self.rotation
        ol = (o - self.center) @ R  # rows: R^T (o - c)
        Dl = D @ R
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-self.half - ol) / Dl
            t2 = (self.half - ol) / Dl
        tnear = np.where(np.isnan(t1), -np.inf, np.minimum(t1, t2))
        tfar = np.where(np.isnan(t1), np.inf, np.maximum(t1, t2))
        tmin, tmax = tnear.max(axis=1), tfar.min(axis=1)
        t = np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)
        return t, tnear.argmax(axis=1).astype(np.int8)

    def frame(self, P, face):
        R = self.rotation
        pl = (P - self.center) @ R
        rows, face = np.arange(len(P)), face.astype(np.int64)
        sign = np.where(pl[rows, face] >= 0, 1.0, -1.0)
        ua, va = _BOX_U[face], _BOX_V[face]
        return Frame(R.T[face] * sign[:, None], pl[rows, ua], pl[rows, va], R.T[ua], R.T[va])


@dataclass(eq=False)
class Cylinder(Surface):
    """Vertical cylinder standing on the floor at (x, z) = ``base``: side (face 0), top (face 1).

    Side: u = arc length around the axis, v = height; top: (u, v) = (x, z) from the axis.
    """

    base: np.ndarray
    radius: float
    height: float
    cls: int
    inst: int
    material: tx.Material

    def bound(self):
        c = np.array([self.base[0], self.height / 2, self.base[1]])
        return c, float(np.hypot(self.radius, self.height / 2))

    def intersect(self, o, D):
        ox, oy, oz = o[..., 0] - self.base[0], o[..., 1], o[..., 2] - self.base[1]
        a = D[:, 0] ** 2 + D[:, 2] ** 2
        b = D[:, 0] * ox + D[:, 2] * oz
        c = ox**2 + oz**2 - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (-b - np.sqrt(disc)) / a
            y = oy + t * D[:, 1]
            side = np.where((disc > 0) & (t > 1e-6) & (y >= 0) & (y <= self.height), t, np.inf)
            tc = (self.height - oy) / D[:, 1]
        tc = np.where(np.isfinite(tc) & (tc > 1e-6), tc, np.inf)
        tt = np.where(np.isfinite(tc), tc, 0.0)
        inside = (ox + tt * D[:, 0]) ** 2 + (oz + tt * D[:, 2]) ** 2 <= self.radius**2
        cap = np.where(inside, tc, np.inf)
        return np.minimum(side, cap), (cap < side).astype(np.int8)

    def frame(self, P, face):
        d = P - np.array([self.base[0], 0.0, self.base[1]])
        u, gu = _around(d, self.radius)
        m, eye = len(P), np.eye(3)
        n = d * np.array([1.0, 0.0, 1.0]) / self.radius
        top = face == 1
        n[top] = _UP
        u = np.where(top, d[:, 0], u)
        v = np.where(top, d[:, 2], d[:, 1])
        gu = np.where(top[:, None], eye[0], gu)
        gv = np.where(top[:, None], eye[2], _rows(_UP, m))
        return Frame(n, u, v, gu, gv)


# --- scene description -----------------------------------------------------------------------
@dataclass(eq=False)
class Camera:
    origin: np.ndarray  # (3,) world position
    rotation: np.ndarray  # (3, 3) rows: right, down, forward (world -> camera)
    fov: float  # horizontal field of view, radians


@dataclass(eq=False)
class Light:
    position: np.ndarray  # point light (world)
    colour: np.ndarray  # (3,) its RGB intensity
    ambient: np.ndarray  # (3,) RGB ambient
    fill_dir: np.ndarray  # (3,) unit direction towards a distant fill light
    fill: np.ndarray  # (3,) its RGB intensity


@dataclass(eq=False)
class Scene:
    camera: Camera
    light: Light
    surfaces: list[Surface]  # room planes first, then one surface per object

    @property
    def objects(self) -> list[Surface]:
        return [s for s in self.surfaces if s.inst >= 3]


def _hsv(rng, s_range, v_range) -> np.ndarray:
    h, s, v = rng.uniform(0, 1), rng.uniform(*s_range), rng.uniform(*v_range)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _relief_params(rng, period_range, slope_range) -> dict:
    """A relief of random orientation: depth chosen so the steepest slope is in slope_range."""
    kind = int(rng.choice([tx.RIDGES_U, tx.RIDGES_V, tx.BUMPS]))
    freq = 1 / rng.uniform(*period_range)
    amp = rng.uniform(*slope_range) / (np.pi * freq)  # h = -A/2 (1 + cos): max slope A pi f
    return {"relief": kind, "relief_amp": amp, "ru": freq, "rv": freq}


def _room_materials(rng) -> tuple[tx.Material, tx.Material, tx.Material]:
    key = int(rng.integers(2**31))
    wall = {"colour": tuple(_hsv(rng, (0.05, 0.5), (0.45, 0.95))), "key": key}
    kind = rng.choice(4, p=[0.3, 0.3, 0.25, 0.15])
    if kind == 1:  # wallpaper: fine vertical stripes
        f = 1 / rng.uniform(0.025, 0.06)
        wall.update(pattern=tx.VSTRIPES, contrast=rng.uniform(0.1, 0.3), fu=f, fv=f)
    elif kind == 2:  # stucco grain
        wall.update(pattern=tx.GRAIN, contrast=rng.uniform(0.1, 0.25),
                    grain_cell=rng.uniform(0.008, 0.02))
    elif kind == 3:
        f = 1 / rng.uniform(0.04, 0.1)
        wall.update(pattern=tx.CHECKS, contrast=rng.uniform(0.08, 0.2), fu=f, fv=f)
    if rng.uniform() < 0.6:
        wall.update(_relief_params(rng, (0.05, 0.15), (0.2, 0.5)))
    floor = {"colour": tuple(_hsv(rng, (0.1, 0.6), (0.2, 0.7))), "key": key + 1}
    kind = rng.choice(3)
    if kind == 0:  # planks: stripes with grain
        f = 1 / rng.uniform(0.12, 0.3)
        floor.update(pattern=int(rng.choice([tx.HSTRIPES, tx.VSTRIPES])), fu=f, fv=f,
                     contrast=rng.uniform(0.1, 0.25), grain=rng.uniform(0.08, 0.15),
                     grain_cell=rng.uniform(0.005, 0.015))
    elif kind == 1:  # tiles
        f = 1 / rng.uniform(0.3, 0.8)
        floor.update(pattern=tx.CHECKS, fu=f, fv=f, contrast=rng.uniform(0.15, 0.35))
    else:
        floor.update(pattern=tx.GRAIN, contrast=rng.uniform(0.1, 0.25),
                     grain_cell=rng.uniform(0.005, 0.02))
    if rng.uniform() < 0.5:
        f = 1 / rng.uniform(0.1, 0.3)
        floor.update(relief=int(rng.choice([tx.RIDGES_U, tx.RIDGES_V])), ru=f, rv=f,
                     relief_amp=rng.uniform(0.08, 0.2) / (np.pi * f))
    ceiling = tx.Material(colour=tuple(_hsv(rng, (0.0, 0.2), (0.7, 0.98))), key=key + 2,
                          pattern=tx.GRAIN if rng.uniform() < 0.5 else tx.PLAIN,
                          contrast=rng.uniform(0.05, 0.12), grain_cell=rng.uniform(0.01, 0.03))
    return tx.Material(**wall), tx.Material(**floor), ceiling


def _object_material(rng, name: str, colour: np.ndarray) -> tx.Material:
    """Material of a large object of class ``name``; the colour is drawn by the caller."""
    m = {"colour": tuple(np.clip(colour * rng.uniform(0.9, 1.1, 3), 0, 1)),
         "key": int(rng.integers(2**31)), "pattern": MATERIAL_CLASSES[name]}
    if name in ("hstripes", "vstripes"):
        f = 1 / rng.uniform(0.03, 0.06)
        m.update(fu=f, fv=f, contrast=rng.uniform(0.35, 0.6))
    elif name in ("checks", "dots"):
        f = 1 / rng.uniform(0.04, 0.08)
        m.update(fu=f, fv=f, contrast=rng.uniform(0.35, 0.6))
    elif name == "grain":
        m.update(grain_cell=rng.uniform(0.015, 0.03), contrast=rng.uniform(0.4, 0.7))
    elif name == "ridged":
        m.update(_relief_params(rng, (0.04, 0.08), (0.5, 0.8)))
    return tx.Material(**m)


def _small_material(rng, colour: np.ndarray) -> tx.Material:
    """Balls and poles: any print (their class comes from their shape)."""
    name = str(rng.choice(["plain", "plain", "grain", "hstripes", "checks"]))
    return _object_material(rng, name, colour)


def _count(rng, what: str) -> int:
    lo, hi = COUNTS[what]
    return int(rng.integers(lo, hi + 1))


def make_scene(seed: int) -> Scene:
    """The scene with this seed (independent of the resolution it is rendered at)."""
    rng = np.random.default_rng(seed)
    half_w, room_h, back = rng.uniform(1.8, 3.5), rng.uniform(2.4, 3.2), rng.uniform(4.5, 8.5)
    # --- camera ---------------------------------------------------------------------------
    cam_x, cam_h = rng.uniform(-0.3, 0.3) * half_w, rng.uniform(*CAMERA["height"])
    pitch, yaw = np.deg2rad(rng.uniform(*CAMERA["pitch"])), np.deg2rad(rng.uniform(*CAMERA["yaw"]))
    fov = np.deg2rad(rng.uniform(*CAMERA["fov"]))
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    right = np.array([cy, 0.0, -sy])
    fwd = np.array([sy * cp, -sp, cy * cp])
    down = np.cross(right, fwd)  # image rows grow downwards
    camera = Camera(np.array([cam_x, cam_h, 0.0]), np.stack([right, down, fwd]), fov)
    # --- room -----------------------------------------------------------------------------
    wall, floor, ceiling = _room_materials(rng)
    surfaces: list[Surface] = [
        Plane(1, 0.0, 1.0, 0, 2, FLOOR, 1, floor),
        Plane(1, room_h, -1.0, 0, 2, CEILING, 2, ceiling),
        Plane(0, -half_w, 1.0, 2, 1, WALL, 0, wall),
        Plane(0, half_w, -1.0, 2, 1, WALL, 0, wall),
        Plane(2, back, -1.0, 0, 1, WALL, 0, wall),
        Plane(2, -1.0, 1.0, 0, 1, WALL, 0, wall),
    ]
    # --- objects: placed in view, footprints (x, z, radius) kept apart -----------------------
    palette = [_hsv(rng, (0.25, 0.85), (0.35, 0.95)) for _ in range(4)]
    footprints: list[tuple[float, float, float]] = []

    def place(radius: float) -> tuple[float, float] | None:
        for _ in range(30):
            ang = yaw + rng.uniform(-0.55, 0.55) * fov
            dist = rng.uniform(1.4, back - 0.3)
            x, z = cam_x + dist * np.sin(ang), dist * np.cos(ang)
            inside = abs(x) < half_w - radius - 0.05 and radius + 0.05 < z < back - radius - 0.05
            if inside and all(np.hypot(x - a, z - b) > radius + r + 0.05 for a, b, r in footprints):
                footprints.append((x, z, radius))
                return x, z
        return None

    boxes: list[Box] = []
    names = list(MATERIAL_CLASSES)
    for _ in range(_count(rng, "large")):
        name, shape = names[int(rng.integers(len(names)))], int(rng.integers(3))
        colour = palette[int(rng.integers(len(palette)))]
        mat = _object_material(rng, name, colour)
        cls, inst = CLASS[name], 3 + len(surfaces) - 6
        if shape == 0:
            r = rng.uniform(0.2, 0.55)
            if (xz := place(r)) is not None:
                surfaces.append(Sphere(np.array([xz[0], r, xz[1]]), r, cls, inst,
                                       mat.wrapped(2 * np.pi * r)))
        elif shape == 1:
            half = np.array([rng.uniform(0.15, 0.55), rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.55)])
            if (xz := place(float(np.hypot(half[0], half[2])))) is not None:
                box = Box(np.array([xz[0], half[1], xz[1]]), half, rng.uniform(0, np.pi / 2), cls,
                          inst, mat)
                surfaces.append(box)
                boxes.append(box)
        else:
            r, h = rng.uniform(0.12, 0.4), rng.uniform(0.3, 1.3)
            if (xz := place(r)) is not None:
                surfaces.append(Cylinder(np.array(xz), r, h, cls, inst, mat.wrapped(2 * np.pi * r)))
    for _ in range(_count(rng, "balls")):  # small balls, on a box or on the floor
        r = rng.uniform(0.04, 0.12)
        mat = _small_material(rng, palette[int(rng.integers(len(palette)))]).wrapped(2 * np.pi * r)
        inst = 3 + len(surfaces) - 6
        if boxes and rng.uniform() < 0.5:
            box = boxes[int(rng.integers(len(boxes)))]
            off = box.rotation @ np.array([rng.uniform(-0.5, 0.5) * box.half[0], 0,
                                           rng.uniform(-0.5, 0.5) * box.half[2]])
            c = box.center + off + np.array([0.0, box.half[1] + r, 0.0])
            surfaces.append(Sphere(c, r, CLASS["ball"], inst, mat))
        elif (xz := place(r)) is not None:
            surfaces.append(Sphere(np.array([xz[0], r, xz[1]]), r, CLASS["ball"], inst, mat))
    for _ in range(_count(rng, "poles")):  # thin poles, some floor to ceiling
        r = rng.uniform(0.012, 0.035)
        h = room_h if rng.uniform() < 0.5 else rng.uniform(0.8, 2.0)
        mat = _small_material(rng, palette[int(rng.integers(len(palette)))]).wrapped(2 * np.pi * r)
        if (xz := place(r + 0.05)) is not None:
            surfaces.append(Cylinder(np.array(xz), r, h, CLASS["pole"], 3 + len(surfaces) - 6, mat))
    # --- light ----------------------------------------------------------------------------
    warm, cool = np.array([1.0, 0.82, 0.62]), np.array([0.78, 0.88, 1.0])
    tint = rng.uniform()
    fill_dir = np.array([rng.uniform(-1, 1), rng.uniform(0.3, 1.0), rng.uniform(-1, 1)])
    light = Light(
        position=np.array([rng.uniform(-half_w + 0.3, half_w - 0.3), room_h - rng.uniform(0.1, 0.5),
                           rng.uniform(0.5, back - 0.5)]),
        colour=(warm * (1 - tint) + cool * tint) * rng.uniform(0.7, 1.2),
        ambient=rng.uniform(0.12, 0.35) * rng.uniform(0.9, 1.1, 3),
        fill_dir=fill_dir / np.linalg.norm(fill_dir),
        fill=rng.uniform(0.0, 0.3) * rng.uniform(0.85, 1.15, 3),
    )
    return Scene(camera, light, surfaces)


# --- rendering -------------------------------------------------------------------------------
def _pixels(cam: Camera, f: float, H: int, W: int, bound) -> np.ndarray | None:
    """Flat indices of the pixels whose rays may hit a bounding sphere (None: all of them)."""
    if bound is None:
        return None
    x, y, z = cam.rotation @ (bound[0] - cam.origin)
    R = bound[1]
    if z - R < 0.05:
        return None
    lo, hi = z - R, z + R
    xs = (x - R) / lo, (x - R) / hi, (x + R) / lo, (x + R) / hi
    ys = (y - R) / lo, (y - R) / hi, (y + R) / lo, (y + R) / hi
    # pixel c looks along (c + 0.5 - W / 2) / f
    c0 = max(0, int(np.floor(f * min(xs) + W / 2 - 0.5)))
    c1 = min(W, int(np.ceil(f * max(xs) + W / 2 - 0.5)) + 1)
    r0 = max(0, int(np.floor(f * min(ys) + H / 2 - 0.5)))
    r1 = min(H, int(np.ceil(f * max(ys) + H / 2 - 0.5)) + 1)
    if c0 >= c1 or r0 >= r1:
        return np.zeros(0, np.int64)
    return (np.arange(r0, r1)[:, None] * W + np.arange(c0, c1)).ravel()


def _footprints(t, D, fr: Frame, cam: Camera, f: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel footprint (Gaussian sigma, half a pixel step) along u and v, in metres of u and v.

    A step of one pixel right moves the hit point on its tangent plane by
    ``t / f * (right - (n.right) / (n.D) D)``; likewise down. Its u component is that times
    the gradient of u.
    """
    nD = _dot(fr.n, D)
    nD = np.where(np.abs(nD) < 1e-3, np.copysign(1e-3, nD), nD)
    s = 0.5 * t / f
    right, down = cam.rotation[0], cam.rotation[1]
    kx, ky = (fr.n @ right) / nD, (fr.n @ down) / nD
    out = []
    for g in (fr.gu, fr.gv):
        gD = _dot(g, D)
        out.append(s * np.hypot(g @ right - kx * gD, g @ down - ky * gD))
    return out[0], out[1]


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _trace_relief(m: tx.Material, D, fr: Frame, su, sv, steps: int = 4, refine: int = 4):
    """Ray parameter offset into a carved relief and the displaced surface's normal.

    The relief is a height field ``h(u, v) <= 0`` over each pixel's tangent plane. Along the
    ray, ``F = s - h`` (s: height above the base plane, falling at ``n.D`` per unit of t) is
    ``>= 0`` where the ray meets the base surface and ``<= 0`` once it is ``A`` below it, so
    it changes sign in between: march to the first sign change, then refine it by regula
    falsi (Illinois). The normal is the gradient of ``s - h(u, v)``, exact for planar faces,
    so depth and normals stay consistent.
    """
    a = _dot(fr.n, D)  # ds/dt < 0 for a visible face
    cos_in = -a / np.sqrt(_dot(D, D))
    gain = tx.relief_gain(m, su, sv) * _smoothstep(0.08, 0.25, cos_in)
    bu, bv = _dot(fr.gu, D), _dot(fr.gv, D)
    end = m.relief_amp * gain / np.maximum(-a, 1e-6)

    def F(tau):
        return a * tau - tx.relief_height(m, fr.u + bu * tau, fr.v + bv * tau, gain)

    taus = end * (np.arange(steps + 1)[:, None] / steps)
    Fs = F(taus)  # (steps + 1, M); the last row is <= 0
    cols = np.arange(len(a))
    k = (Fs[1:] <= 0).argmax(axis=0)
    lo, hi, f_lo, f_hi = taus[k, cols], taus[k + 1, cols], Fs[k, cols], Fs[k + 1, cols]
    moved = np.zeros(len(a), np.int8)  # which end moved last: +1 lo, -1 hi
    for _ in range(refine):
        gap = f_lo - f_hi
        x = np.where(gap > 0, lo + (hi - lo) * f_lo / np.where(gap > 0, gap, 1.0), lo)
        fx = F(x)
        up = fx > 0
        f_hi = np.where(up & (moved == 1), 0.5 * f_hi, f_hi)  # Illinois: no stalled end
        f_lo = np.where(~up & (moved == -1), 0.5 * f_lo, f_lo)
        lo, f_lo = np.where(up, x, lo), np.where(up, fx, f_lo)
        hi, f_hi = np.where(up, hi, x), np.where(up, f_hi, fx)
        moved = np.where(up, 1, -1).astype(np.int8)
    gap = f_lo - f_hi
    tau = np.where(gap > 0, lo + (hi - lo) * f_lo / np.where(gap > 0, gap, 1.0), lo)
    _, hu, hv = tx.relief(m, fr.u + bu * tau, fr.v + bv * tau, gain)
    n = fr.n - hu[:, None] * fr.gu - hv[:, None] * fr.gv
    return tau, n / np.sqrt(_dot(n, n))[:, None]


def _shadowed(scene: Scene, L: np.ndarray, dist: np.ndarray, inst: np.ndarray,
              lit: np.ndarray) -> np.ndarray:
    """Pixels (flat indices) where an object blocks the segment from the point light.

    Only pixels inside an object's shadow cone (its bounding sphere seen from the light) are
    traced; an object never shadows itself (convex: its far side is unlit anyway).
    """
    light = scene.light.position
    towards = -L / dist[:, None]  # unit, light -> pixel
    out = []
    for surf in scene.objects:
        c, R = surf.bound()
        w = c - light
        dc = float(np.sqrt(w @ w))
        if dc <= R:  # the light is inside the bounding sphere: leave this object out
            continue
        cone = towards @ (w / dc) > np.sqrt(1 - (R / dc) ** 2)
        cand = np.flatnonzero(cone & lit & (dist > dc - R) & (inst != surf.inst))
        if len(cand):
            t, _ = surf.intersect(light, -L[cand])  # t = 1 at the pixel's own surface point
            out.append(cand[t < 1 - 1e-6])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def render(scene: Scene, size: tuple[int, int], noise_seed: int = 0) -> dict[str, np.ndarray]:
    """Render a scene: RGB in [0, 1] and every label, as numpy arrays of shape (H, W[, C]).

    Besides the task labels: ``instances`` (0 walls, 1 floor, 2 ceiling, 3+ objects),
    ``albedo`` (reflectance before lighting), ``intrinsics`` (3x3) and ``camera_to_world`` (4x4,
    camera frame x right, y down, z forward).
    """
    H, W = size
    cam = scene.camera
    f = (W / 2) / np.tan(cam.fov / 2)
    right, down, fwd = cam.rotation
    v, u = np.mgrid[0:H, 0:W]
    rays = np.stack([(u.ravel() + 0.5 - W / 2) / f, (v.ravel() + 0.5 - H / 2) / f, np.ones(H * W)], 1)
    D = rays @ cam.rotation  # world directions; forward component 1: t is the camera depth
    o, N = cam.origin, H * W
    # --- visibility: a z-buffer over surfaces, each tested only where it may project ---------
    best_t = np.full(N, np.inf)
    best_s = np.full(N, -1, np.int64)
    best_face = np.zeros(N, np.int8)
    for sid, surf in enumerate(scene.surfaces):
        idx = _pixels(cam, f, H, W, surf.bound())
        if idx is None:  # whole picture: no gathering
            t, face = surf.intersect(o, D)
            closer = t < best_t
            best_t[closer], best_s[closer], best_face[closer] = t[closer], sid, face[closer]
        elif len(idx):
            t, face = surf.intersect(o, D[idx])
            closer = t < best_t[idx]
            sel = idx[closer]
            best_t[sel], best_s[sel], best_face[sel] = t[closer], sid, face[closer]
    if not np.isfinite(best_t).all():  # the room is closed: every ray hits something
        raise AssertionError("a camera ray left the room")
    # --- per surface: frame, material, relief ----------------------------------------------
    depth = best_t.copy()
    normal_w = np.zeros((N, 3))
    base_n = np.zeros((N, 3))
    albedo = np.zeros((N, 3))
    cls = np.zeros(N, np.int64)
    inst = np.zeros(N, np.int64)
    for sid, surf in enumerate(scene.surfaces):
        pix = np.flatnonzero(best_s == sid)
        if not len(pix):
            continue
        Dp, t = D[pix], best_t[pix]
        fr = surf.frame(o + t[:, None] * Dp, best_face[pix])
        su, sv = _footprints(t, Dp, fr, cam, f)
        m = surf.material
        albedo[pix] = tx.albedo(m, fr.u, fr.v, su, sv)
        n = fr.n
        if m.relief != tx.NO_RELIEF:
            tau, n = _trace_relief(m, Dp, fr, su, sv)
            depth[pix] = t + tau
        normal_w[pix], base_n[pix], cls[pix], inst[pix] = n, fr.n, surf.cls, surf.inst
    flip = _dot(normal_w, D) > 0  # e.g. a pole's top seen from below: face the camera
    normal_w[flip] *= -1
    # --- shading: ambient + point light (with distance fall-off) + distant fill -------------
    lt = scene.light
    L = lt.position - (o + depth[:, None] * D)
    dist = np.sqrt(_dot(L, L))
    lambert = np.clip(_dot(normal_w, L) / dist, 0, 1) * (1.25 / (1 + (dist / 4) ** 2))
    lambert[_shadowed(scene, L, dist, inst, lambert > 0)] = 0.0
    fill = np.clip(normal_w @ lt.fill_dir, 0, 1)
    light_terms = np.stack([lambert, fill, np.ones(N)], axis=1)
    rgb = albedo * (light_terms @ np.stack([lt.colour, lt.fill, lt.ambient]))
    noise = np.random.default_rng([noise_seed, H, W]).standard_normal((N, 3), dtype=np.float32)
    rgb += 0.01 * noise
    # --- labels -------------------------------------------------------------------------
    normal_c = normal_w @ cam.rotation.T  # base and relief normals are unit already
    inst_img, depth_img = inst.reshape(H, W), depth.reshape(H, W)
    edge = np.zeros((H, W), bool)
    for dy, dx in ((0, 1), (1, 0)):
        a_i, b_i = inst_img[: H - dy, : W - dx], inst_img[dy:, dx:]
        a_d, b_d = depth_img[: H - dy, : W - dx], depth_img[dy:, dx:]
        jump = np.abs(a_d - b_d) > 0.05 * np.minimum(a_d, b_d)
        edge[: H - dy, : W - dx] |= (a_i != b_i) | jump
    # salient: the nearest object that is clearly visible (>= 2 % of the picture)
    objects = scene.objects
    dist_to = {s.inst: float(np.linalg.norm(s.bound()[0] - o)) for s in objects}
    area = np.bincount(inst, minlength=3 + len(objects))
    visible = [k for k in dist_to if area[k] >= 0.02 * N] or [k for k in dist_to if area[k]]
    nearest = min(visible, key=dist_to.get) if visible else -1
    up = (base_n @ _UP).reshape(H, W) > 0.7
    parts = np.where(inst_img >= 3, np.where(up, 1, 2), 0)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = cam.rotation.T, o
    return {
        "image": np.clip(rgb, 0, 1).reshape(H, W, 3).astype(np.float32),
        "semseg": cls.reshape(H, W).astype(np.uint8),
        "depth": depth_img.astype(np.float32),
        "normals": normal_c.reshape(H, W, 3).astype(np.float32),
        "boundary": edge.astype(np.uint8),
        "saliency": (inst_img == nearest).astype(np.uint8),
        "human_parts": parts.astype(np.uint8),
        "instances": inst_img.astype(np.int32),
        "albedo": albedo.reshape(H, W, 3).astype(np.float32),
        "intrinsics": np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], np.float32),
        "camera_to_world": pose,
    }


def render_scene(seed: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Render the scene with this seed at ``size`` = (H, W); see ``render`` for the arrays."""
    return render(make_scene(seed), size, noise_seed=seed)


def sample_from_arrays(arrays: dict[str, np.ndarray], tasks, meta: dict) -> dict:
    """Numpy (H, W[, C]) arrays -> the sample dict every dataset returns.

    ``image``: float (3, H, W) in [0, 1]; ``semseg``/``human_parts``: int64 (H, W) with 255 =
    ignore; ``depth``: float (1, H, W), 0 = invalid; ``normals``: float (3, H, W), all-zero =
    invalid; ``boundary``/``saliency``: float (1, H, W) in {0, 1}, 255 = ignore; ``meta``.
    """
    out = {"image": torch.from_numpy(np.ascontiguousarray(arrays["image"].transpose(2, 0, 1)))}
    for t in tasks:
        a = arrays[t]
        if t in ("semseg", "human_parts"):
            out[t] = torch.from_numpy(a.astype(np.int64))
        elif t == "normals":
            out[t] = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32))
        else:
            out[t] = torch.from_numpy(a.astype(np.float32))[None]
    out["meta"] = meta
    return out


def scene_seed(seed: int, split: str, index: int) -> int:
    """The scene seed of scene ``index`` of ``split``: one disjoint block per (seed, split)."""
    if split not in SPLITS:
        raise DatasetError(f"split={split!r} is not a synthetic split; use one of {list(SPLITS)}")
    if seed < 0:
        raise DatasetError(f"seed={seed} must be >= 0 (it selects a block of scene seeds)")
    if not 0 <= index < SPLIT_SIZE:
        raise DatasetError(f"scene index {index} is outside the split's range [0, 2**31): "
                           "indices beyond it would reuse another split's scenes")
    return (seed * len(SPLITS) + SPLITS.index(split)) * SPLIT_SIZE + index


class SyntheticScenes(Dataset):
    """Torch dataset of rendered scenes; scene ``i`` of a split is the same on every machine.

    Args:
        split: ``train``, ``val``, ``test`` (held out for benchmarks) or ``pretrain``
            (self-supervised backbone pretraining); their scene seeds never overlap.
        size: (H, W) of every sample.
        tasks: task names to include (default: all six).
        seed: base seed (>= 0); different seeds give different datasets.
        length: number of scenes in the split (at most 2**31).
        cache: keep each rendered scene's arrays (image and the tasks' labels) in memory, so a
            scene drawn again (the next epoch) is not rendered again; the samples are the same
            either way. About 0.2 MB a scene plus 16-64 KB a task at 128 px.
    """

    dataset_name = "synthetic"

    def __init__(self, split: str = "train", size=(128, 128), tasks=None, seed: int = 0,
                 length: int = 1000, cache: bool = False):
        scene_seed(seed, split, 0)  # validates split and seed
        H, W = (size, size) if isinstance(size, int) else tuple(size)
        if H < 8 or W < 8:
            raise DatasetError(f"size={size!r} is too small to render; use at least 8x8 pixels")
        if not 1 <= length <= SPLIT_SIZE:
            raise DatasetError(f"length={length} must be a number of scenes in [1, 2**31]")
        self.split, self.size, self.seed, self.length = split, (int(H), int(W)), int(seed), int(length)
        self._cache: dict[int, dict] | None = {} if cache else None
        self.tasks = resolve_tasks(tasks if tasks is not None else
                                   ["semseg", "depth", "normals", "boundary", "human_parts", "saliency"],
                                   "synthetic")

    def __len__(self) -> int:
        return self.length

    def scene_seed(self, index: int) -> int:
        return scene_seed(self.seed, self.split, index)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"scene index {index} out of range [0, {self.length})")
        arrays = None if self._cache is None else self._cache.get(index)
        if arrays is None:
            arrays = render_scene(self.scene_seed(index), self.size)
            if self._cache is not None:  # sample_from_arrays copies: no sample aliases these
                arrays = {k: arrays[k] for k in ("image", *self.tasks)}
                self._cache[index] = arrays
        meta = {"id": f"synthetic-{self.split}-{self.seed}-{index:06d}", "dataset": "synthetic"}
        return sample_from_arrays(arrays, self.tasks, meta)
