"""The renderer: attribute indices -> pixels, vectorised over a batch of scenes.

Every shape is an implicit function (a mask) evaluated on a supersampled pixel grid, then
box-filtered down to the image size (anti-aliasing). A scene is a wall, a floor, a table
(a board and two legs) and one object: its colour from ``PALETTE``, its silhouette from
``_object_masks``, its height from its size, its place from its relation to the table.
Layout jitter (table width and height, object position, shades) and a little pixel noise
make every render different; all random numbers are drawn on the CPU in a fixed order, so a
seed gives the same scenes on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PALETTE = {  # colour name -> RGB in [0, 1]
    "red": (0.86, 0.10, 0.10),
    "orange": (0.98, 0.55, 0.05),
    "yellow": (0.97, 0.90, 0.15),
    "green": (0.15, 0.72, 0.18),
    "blue": (0.12, 0.30, 0.92),
    "purple": (0.55, 0.15, 0.75),
    "pink": (0.98, 0.55, 0.78),
    "white": (0.96, 0.96, 0.96),
}
SHAPES = ["apple", "box", "cone", "bottle", "star", "donut"]        # the order of _object_masks
PLACES = ["on the table", "under the table", "left of the table", "right of the table"]

_TABLE = (0.50, 0.31, 0.16)
_WALL = (0.40, 0.43, 0.48)
_FLOOR = (0.27, 0.27, 0.30)
_SIZE = {0: 0.30, 1: 0.48}        # object height as a fraction of the image, small / large
_FLOOR_Y = 0.90                  # y of the floor line (y grows downwards)


def _star_mask(u, v, outer=1.0, inner=0.45):
    """Five-pointed star, one point up, in local coordinates (u right, v up)."""
    theta = torch.atan2(u, v)  # 0 = up
    rho = torch.sqrt(u * u + v * v)
    sector = 2 * math.pi / 5
    phi = torch.remainder(theta, sector)
    phi = torch.minimum(phi, sector - phi)  # fold to [0, sector/2]
    # edge from the outer vertex (angle 0, radius outer) to the inner vertex (angle sector/2)
    x1, y1 = outer, 0.0
    x2, y2 = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    px, py = rho * torch.cos(phi), rho * torch.sin(phi)
    cross = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    return cross >= 0


def _object_masks(obj: int, u: torch.Tensor, v: torch.Tensor):
    """Silhouette (and an optional darker detail mask) of object ``obj`` in local coords.

    u, v in [-1, 1] span the object's bounding box, v pointing up."""
    detail = torch.zeros_like(u, dtype=torch.bool)
    if obj == 0:  # apple: two overlapping circles (the dimple on top) and a stem
        body = (((u + 0.33) ** 2 + (v + 0.12) ** 2) < 0.62 ** 2) | (((u - 0.33) ** 2 + (v + 0.12) ** 2) < 0.62 ** 2)
        body |= (u.abs() < 0.55) & (v > -0.95) & (v < 0.2) & ((u ** 2 / 0.9 + (v + 0.1) ** 2) < 0.85)
        stem = (u.abs() < 0.09) & (v > 0.35) & (v < 0.98)
        return body | stem, stem
    if obj == 1:  # box: a square with a lighter top face
        body = (u.abs() < 0.82) & (v.abs() < 0.82)
        return body, body & (v > 0.45)
    if obj == 2:  # cone: a triangle standing on its base
        body = (v > -0.95) & (v < 0.95) & (u.abs() < 0.9 * (0.95 - v) / 1.9)
        return body, detail
    if obj == 3:  # bottle: a tall narrow body, sloping shoulders and a neck
        shoulder = 0.42 - (v - 0.2) * (0.42 - 0.15) / 0.3
        body = (v > -0.95) & (((v < 0.2) & (u.abs() < 0.42)) | ((v >= 0.2) & (v < 0.5) & (u.abs() < shoulder)) |
                              ((v >= 0.5) & (v < 0.95) & (u.abs() < 0.15)))
        return body, detail
    if obj == 4:  # star
        return _star_mask(u, v + 0.05, outer=1.0, inner=0.45), detail
    if obj == 5:  # donut: a ring with a hole
        r = torch.sqrt(u * u + v * v)
        return (r < 0.95) & (r > 0.5), detail
    raise ValueError(obj)


def render_scenes(index: torch.Tensor, size: int, ss: int, gen: torch.Generator | None,
                  dev: torch.device = torch.device("cpu")) -> torch.Tensor:
    """(N, 4) indices (colour in PALETTE order, object in SHAPES order, relation in PLACES order,
    size 0 small / 1 large) -> (N, 3, size, size) images in [-1, 1], rendered ``ss`` times larger
    and averaged down."""
    # Random numbers are drawn on the CPU, in a fixed order, and moved to ``dev``, where the
    # per-pixel work happens: the same generator gives the same scenes on any device.
    n = index.shape[0]
    res = size * ss
    g = gen

    def U(lo, hi, shape=(n,)):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    color, obj, rel, osize = index.unbind(1)
    # ---- per-scene layout, in image fractions (x right, y down)
    floor_y = _FLOOR_Y + U(-0.02, 0.02)
    h = torch.tensor([_SIZE[0], _SIZE[1]])[osize] * U(0.92, 1.08)         # object height
    table_top = torch.empty(n)
    table_x0 = torch.empty(n)
    table_x1 = torch.empty(n)
    obj_cx = torch.empty(n)
    obj_bottom = torch.empty(n)
    for r in range(4):
        m = rel == r
        k = int(m.sum())
        if not k:
            continue
        if r == 0:  # on: a low, central table; the object stands on its top
            cx = 0.5 + U(-0.06, 0.06, (k,))
            half = U(0.26, 0.32, (k,))
            top = U(0.62, 0.68, (k,))
            table_x0[m], table_x1[m], table_top[m] = cx - half, cx + half, top
            obj_cx[m] = cx + U(-0.08, 0.08, (k,))
            obj_bottom[m] = top
        elif r == 1:  # under: a high, wide table; the object stands on the floor beneath it
            cx = 0.5 + U(-0.04, 0.04, (k,))
            half = U(0.40, 0.45, (k,))
            top = U(0.26, 0.31, (k,))
            table_x0[m], table_x1[m], table_top[m] = cx - half, cx + half, top
            obj_cx[m] = cx + U(-0.05, 0.05, (k,))
            obj_bottom[m] = floor_y[m]
        else:  # left / right of: the table stands at one side, the object on the floor at the other
            side = -1.0 if r == 2 else 1.0     # where the object is
            tcx = 0.5 - side * U(0.22, 0.25, (k,))
            half = U(0.17, 0.21, (k,))
            top = U(0.50, 0.58, (k,))
            table_x0[m], table_x1[m], table_top[m] = tcx - half, tcx + half, top
            obj_cx[m] = 0.5 + side * U(0.22, 0.26, (k,))
            obj_bottom[m] = floor_y[m]

    color, obj, rel, osize = (t.to(dev) for t in (color, obj, rel, osize))
    floor_y, h, table_top, table_x0, table_x1, obj_cx, obj_bottom = (
        t.to(dev) for t in (floor_y, h, table_top, table_x0, table_x1, obj_cx, obj_bottom))

    # ---- pixel grid (supersampled), shape (n, res, res)
    coords = (torch.arange(res, dtype=torch.float32, device=dev) + 0.5) / res
    Y = coords.view(1, res, 1).expand(n, res, res)
    X = coords.view(1, 1, res).expand(n, res, res)

    def col(rgb, jitter):
        base = torch.tensor(rgb).view(1, 3).expand(n, 3)
        return (base * U(1 - jitter, 1 + jitter).view(n, 1)).clamp(0, 1).to(dev)

    def v(t):  # (n,) -> (n, 1, 1)
        return t.view(n, 1, 1)

    wall, floor_c, table_c = col(_WALL, 0.12), col(_FLOOR, 0.12), col(_TABLE, 0.12)
    img = torch.where((Y < v(floor_y)).unsqueeze(1), wall.view(n, 3, 1, 1), floor_c.view(n, 3, 1, 1))
    img = img.expand(n, 3, res, res).clone()

    # table: a top board and two legs
    thick, leg = 0.055, 0.05
    top_m = (Y >= v(table_top)) & (Y < v(table_top + thick)) & (X >= v(table_x0)) & (X < v(table_x1))
    legs = (Y >= v(table_top)) & (Y < v(floor_y)) & (
        ((X >= v(table_x0 + 0.02)) & (X < v(table_x0 + 0.02 + leg))) |
        ((X < v(table_x1 - 0.02)) & (X >= v(table_x1 - 0.02 - leg))))
    tmask = (top_m | legs).unsqueeze(1)
    shade = torch.where(top_m.unsqueeze(1), 1.0, 0.8)
    img = torch.where(tmask, table_c.view(n, 3, 1, 1) * shade, img)

    # object, in its own box: u, v in [-1, 1], v up
    half_h = h / 2
    u = (X - v(obj_cx)) / v(half_h)
    vv = (v(obj_bottom - half_h) - Y) / v(half_h)
    body = torch.zeros(n, res, res, dtype=torch.bool, device=dev)
    detail = torch.zeros(n, res, res, dtype=torch.bool, device=dev)
    for o in range(len(SHAPES)):
        m = obj == o
        if m.any():
            b, d = _object_masks(o, u[m], vv[m])
            body[m], detail[m] = b, d
    rgb = torch.tensor(list(PALETTE.values()), device=dev)[color] * U(0.9, 1.05).view(n, 1).to(dev)   # (n, 3)
    # soft vertical shading gives the shape some volume: brighter at the top
    shading = (1.0 + 0.12 * vv.clamp(-1, 1)).unsqueeze(1)
    obj_rgb = (rgb.view(n, 3, 1, 1) * shading).clamp(0, 1)
    # details: the apple's stem is brown, the box's top face lighter
    stem_rgb = torch.tensor([0.30, 0.18, 0.08], device=dev).view(1, 3, 1, 1)
    is_apple = (obj == 0).view(n, 1, 1, 1)
    detail_rgb = torch.where(is_apple, stem_rgb, (obj_rgb * 1.25 + 0.08).clamp(0, 1))
    obj_rgb = torch.where(detail.unsqueeze(1), detail_rgb, obj_rgb)
    img = torch.where(body.unsqueeze(1), obj_rgb, img)

    # light pixel noise so no two renders are identical, then anti-alias down to size x size
    img = F.avg_pool2d(img, ss) if ss > 1 else img
    img = img + 0.015 * torch.randn(img.shape, generator=g).to(dev)
    return (img.clamp(0, 1) * 2 - 1).contiguous()


__all__ = ["PALETTE", "SHAPES", "PLACES", "render_scenes"]
