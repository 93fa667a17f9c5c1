"""Procedurally rendered indoor scenes: the offline default dataset.

Each scene is a room (floor, ceiling, three walls) seen by a pinhole camera, with 2-6 random
primitives (spheres, boxes, cylinders) standing on the floor. Rays are cast for every pixel at
once (numpy), so every label comes from the same geometry as the picture:

=============  ==============================================================================
semseg         class of the nearest surface: wall, floor, ceiling, sphere, box, cylinder
depth          metric depth along the optical axis (metres), as NYUD-v2
normals        unit surface normal in the camera frame (x right, y down, z forward), facing
               the camera
boundary       1-pixel lines where the surface instance changes or depth jumps by > 5 %
saliency       the nearest object covering at least 2 % of the picture
human_parts    object sub-parts: 0 not an object, 1 upward-facing (top) faces, 2 sides
=============  ==============================================================================

Scenes are deterministic per ``(seed, split, index)`` and render at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from icm_core.errors import DatasetError
from icm_core.tasks import SYNTHETIC_CLASSES, resolve_tasks

WALL, FLOOR, CEILING, SPHERE, BOX, CYLINDER = range(len(SYNTHETIC_CLASSES))
SPLIT_OFFSET = {"train": 0, "val": 1_000_003}
_UP = np.array([0.0, 1.0, 0.0])


@dataclass
class _Hit:
    t: np.ndarray  # (N,) ray parameter = camera depth, inf where missed
    normal: np.ndarray  # (N, 3) world normal


def _plane(o, D, axis: int, value: float, normal_sign: float) -> _Hit:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (value - o[axis]) / D[:, axis]
    t = np.where(t > 1e-6, t, np.inf)
    n = np.zeros_like(D)
    n[:, axis] = normal_sign
    return _Hit(t, n)


def _sphere(o, D, center, radius) -> _Hit:
    oc = o - center
    a = np.einsum("ij,ij->i", D, D)
    b = D @ oc
    c = oc @ oc - radius**2
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc > 0) & (t > 1e-6), t, np.inf)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * D
    return _Hit(t, (p - center) / radius)


def _box(o, D, center, half, yaw) -> _Hit:
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # local -> world rotation about Y
    ol = R.T @ (o - center)
    Dl = D @ R  # rows: R^T d
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - ol) / Dl
        t2 = (half - ol) / Dl
    tnear = np.minimum(t1, t2)
    tfar = np.maximum(t1, t2)
    tnear = np.where(np.isnan(tnear), -np.inf, tnear)
    tfar = np.where(np.isnan(tfar), np.inf, tfar)
    tmin, tmax = tnear.max(axis=1), tfar.min(axis=1)
    axis = tnear.argmax(axis=1)
    t = np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)
    nl = np.zeros_like(D)
    rows = np.arange(len(D))
    nl[rows, axis] = -np.sign(Dl[rows, axis])
    return _Hit(t, nl @ R.T)


def _cylinder(o, D, base, radius, height) -> tuple[_Hit, _Hit]:
    """Vertical cylinder standing on the floor: (side, top cap)."""
    ox, oz = o[0] - base[0], o[2] - base[2]
    a = D[:, 0] ** 2 + D[:, 2] ** 2
    b = D[:, 0] * ox + D[:, 2] * oz
    c = ox**2 + oz**2 - radius**2
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
    y = o[1] + t * D[:, 1]
    t = np.where((disc > 0) & (t > 1e-6) & (y >= 0) & (y <= height), t, np.inf)
    px = ox + np.where(np.isfinite(t), t, 0.0) * D[:, 0]
    pz = oz + np.where(np.isfinite(t), t, 0.0) * D[:, 2]
    side = _Hit(t, np.stack([px / radius, np.zeros_like(px), pz / radius], axis=1))
    cap = _plane(o, D, 1, height, 1.0)
    pc = o + np.where(np.isfinite(cap.t), cap.t, 0.0)[:, None] * D
    inside = (pc[:, 0] - base[0]) ** 2 + (pc[:, 2] - base[2]) ** 2 <= radius**2
    cap.t = np.where(inside, cap.t, np.inf)
    return side, cap


def render_scene(seed: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Render one scene: RGB in [0, 1] and every label, as numpy arrays of shape (H, W[, C])."""
    H, W = size
    rng = np.random.default_rng(seed)
    # --- camera -------------------------------------------------------------------------
    cam_h = rng.uniform(1.2, 1.7)
    pitch, yaw = np.deg2rad(rng.uniform(5, 20)), np.deg2rad(rng.uniform(-15, 15))
    fov = np.deg2rad(rng.uniform(58, 70))
    f = (W / 2) / np.tan(fov / 2)
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    right = np.array([cy, 0.0, -sy])
    fwd = np.array([sy * cp, -sp, cy * cp])
    down = np.cross(right, fwd)  # image rows grow downwards
    o = np.array([0.0, cam_h, 0.0])
    v, u = np.mgrid[0:H, 0:W]
    xn = ((u + 0.5 - W / 2) / f).reshape(-1, 1)
    yn = ((v + 0.5 - H / 2) / f).reshape(-1, 1)
    D = xn * right + yn * down + fwd  # forward component 1: t is the camera depth
    # --- room ---------------------------------------------------------------------------
    half_w, room_h, back = rng.uniform(2.0, 3.5), rng.uniform(2.5, 3.2), rng.uniform(4.5, 8.0)
    surfaces = [  # (hit, class, instance, colour, texture id)
        (_plane(o, D, 1, 0.0, 1.0), FLOOR, 1),
        (_plane(o, D, 1, room_h, -1.0), CEILING, 2),
        (_plane(o, D, 0, -half_w, 1.0), WALL, 0),
        (_plane(o, D, 0, half_w, -1.0), WALL, 0),
        (_plane(o, D, 2, back, -1.0), WALL, 0),
        (_plane(o, D, 2, -1.0, 1.0), WALL, 0),
    ]
    centers = {}
    for k in range(int(rng.integers(2, 7))):
        inst = 3 + k
        kind = int(rng.choice([SPHERE, BOX, CYLINDER]))
        x = rng.uniform(-half_w + 0.6, half_w - 0.6)
        z = rng.uniform(1.8, back - 0.6)
        if kind == SPHERE:
            r = rng.uniform(0.25, 0.6)
            center = np.array([x, r, z])
            surfaces.append((_sphere(o, D, center, r), SPHERE, inst))
        elif kind == BOX:
            half = np.array([rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.6)])
            center = np.array([x, half[1], z])
            surfaces.append((_box(o, D, center, half, rng.uniform(0, np.pi / 2)), BOX, inst))
        else:
            r, h = rng.uniform(0.15, 0.4), rng.uniform(0.4, 1.4)
            center = np.array([x, h / 2, z])
            side, cap = _cylinder(o, D, center, r, h)
            surfaces += [(side, CYLINDER, inst), (cap, CYLINDER, inst)]
        centers[inst] = np.linalg.norm(center - o)
    T = np.stack([s[0].t for s in surfaces])  # (S, N)
    winner = T.argmin(axis=0)
    depth = T[winner, np.arange(T.shape[1])]
    normal_w = np.zeros_like(D)
    cls = np.zeros(len(D), np.int64)
    inst = np.zeros(len(D), np.int64)
    for i, (hit, c, k) in enumerate(surfaces):
        m = winner == i
        normal_w[m], cls[m], inst[m] = hit.normal[m], c, k
    # --- appearance: albedo x procedural texture x Lambert ------------------------------
    P = o + depth[:, None] * D
    n_inst = 3 + len(centers)
    albedo = rng.uniform(0.15, 0.95, size=(n_inst, 3))
    tex_kind = rng.integers(0, 3, size=n_inst)
    tex_freq = rng.uniform(1.5, 5.0, size=n_inst)
    fx = tex_freq[inst]
    checker = ((np.floor(P[:, 0] * fx) + np.floor(P[:, 1] * fx) + np.floor(P[:, 2] * fx)) % 2)
    stripes = (np.sin((P[:, 0] + P[:, 2]) * fx * np.pi) > 0).astype(np.float64)
    tex = np.choose(tex_kind[inst], [np.ones_like(checker), 0.75 + 0.25 * checker, 0.8 + 0.2 * stripes])
    light = np.array([rng.uniform(-1, 1) * half_w, room_h - 0.2, rng.uniform(1.0, back - 1)])
    L = light - P
    L /= np.linalg.norm(L, axis=1, keepdims=True)
    lambert = np.clip(np.einsum("ij,ij->i", normal_w, L), 0, 1)
    shade = 0.35 + 0.75 * lambert
    rgb = albedo[inst] * (tex * shade)[:, None]
    rgb += rng.normal(0, 0.01, size=rgb.shape)
    # --- labels -------------------------------------------------------------------------
    R = np.stack([right, down, fwd])  # world -> camera
    normal_c = normal_w @ R.T
    flip = np.einsum("ij,ij->i", normal_w, D) > 0
    normal_c[flip] *= -1
    normal_c /= np.linalg.norm(normal_c, axis=1, keepdims=True)
    inst_img, depth_img = inst.reshape(H, W), depth.reshape(H, W)
    edge = np.zeros((H, W), bool)
    for dy, dx in ((0, 1), (1, 0)):
        a_i, b_i = inst_img[: H - dy, : W - dx], inst_img[dy:, dx:]
        a_d, b_d = depth_img[: H - dy, : W - dx], depth_img[dy:, dx:]
        jump = np.abs(a_d - b_d) > 0.05 * np.minimum(a_d, b_d)
        edge[: H - dy, : W - dx] |= (a_i != b_i) | jump
    # salient: the nearest object that is clearly visible (>= 2 % of the picture)
    area = {k: int((inst_img == k).sum()) for k in centers}
    visible = [k for k in centers if area[k] >= 0.02 * H * W] or [k for k in centers if area[k]]
    nearest = min(visible, key=centers.get) if visible else -1
    is_obj = inst_img >= 3
    up = (normal_w @ _UP).reshape(H, W) > 0.7
    parts = np.where(is_obj, np.where(up, 1, 2), 0)
    return {
        "image": np.clip(rgb, 0, 1).reshape(H, W, 3).astype(np.float32),
        "semseg": cls.reshape(H, W).astype(np.uint8),
        "depth": depth_img.astype(np.float32),
        "normals": normal_c.reshape(H, W, 3).astype(np.float32),
        "boundary": edge.astype(np.uint8),
        "saliency": (inst_img == nearest).astype(np.uint8),
        "human_parts": parts.astype(np.uint8),
        "instances": inst_img.astype(np.int32),
        "intrinsics": np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], np.float32),
    }


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


class SyntheticScenes(Dataset):
    """Torch dataset of rendered scenes; scene ``i`` of a split is the same on every machine.

    Args:
        split: ``train`` or ``val`` (disjoint seed ranges).
        size: (H, W) of every sample.
        tasks: task names to include (default: all six).
        seed: base seed; different seeds give different datasets.
        length: number of scenes in the split.
    """

    dataset_name = "synthetic"

    def __init__(self, split: str = "train", size=(128, 128), tasks=None, seed: int = 0,
                 length: int = 1000):
        if split not in SPLIT_OFFSET:
            raise DatasetError(f"split={split!r} is not a synthetic split; use 'train' or 'val'")
        H, W = (size, size) if isinstance(size, int) else tuple(size)
        if H < 8 or W < 8:
            raise DatasetError(f"size={size!r} is too small to render; use at least 8x8 pixels")
        if length < 1:
            raise DatasetError(f"length={length} must be a positive number of scenes")
        self.split, self.size, self.seed, self.length = split, (int(H), int(W)), int(seed), int(length)
        self.tasks = resolve_tasks(tasks if tasks is not None else
                                   ["semseg", "depth", "normals", "boundary", "human_parts", "saliency"],
                                   "synthetic")

    def __len__(self) -> int:
        return self.length

    def scene_seed(self, index: int) -> int:
        return self.seed * 10_000_019 + SPLIT_OFFSET[self.split] + index

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"scene index {index} out of range [0, {self.length})")
        arrays = render_scene(self.scene_seed(index), self.size)
        meta = {"id": f"synthetic-{self.split}-{self.seed}-{index:06d}", "dataset": "synthetic"}
        return sample_from_arrays(arrays, self.tasks, meta)
