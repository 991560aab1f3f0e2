"""Branching, tapering pulmonary vessel trees and the bronchi that run beside the arteries.

A tree grows from its root toward a cloud of target points spread evenly through one lung
(the lung's territory).  At each node the cloud is split in two along its longest extent;
each child branch heads toward the centre of its half.  The radius follows Murray's law with
the flow taken as the number of targets served, r = r_root (n / N) ** gamma, so that radii
taper from several millimetres at the hilum to below a millimetre at the periphery.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Tree:
    """Segments of one vessel tree, world mm (x, y, z)."""

    a: np.ndarray        # (N, 3) start points
    b: np.ndarray        # (N, 3) end points
    ra: np.ndarray       # (N,) radius at a
    rb: np.ndarray       # (N,) radius at b
    parent: np.ndarray   # (N,) parent segment index, -1 for the root
    n_children: np.ndarray
    kind: str            # "artery" or "vein"
    side: int            # -1 right lung, +1 left lung


def grow_tree(rng: np.random.Generator, root, targets: np.ndarray, *, r_root: float,
              r_min: float = 0.4, kind: str = "artery", side: int = -1,
              first_step: float = 0.45) -> Tree:
    """Grow a tree from ``root`` (world xyz) to serve ``targets`` (M, 3).

    Parameters
    ----------
    r_root : radius at the root (mm)
    r_min : radius of the terminal branches (mm)
    first_step : fraction of the way toward the centroid taken by the root segment
    """
    targets = np.asarray(targets, dtype=float)
    n_all = len(targets)
    if n_all < 2:
        raise ValueError(f"a vessel tree needs at least 2 target points. Received {n_all}")
    gamma = np.log(r_root / r_min) / np.log(n_all)
    a, b, ra, rb, parent = [], [], [], [], []

    def radius(n: int) -> float:
        return float(r_root * (n / n_all) ** gamma)

    def add(p, q, r0, r1, par) -> int:
        a.append(p)
        b.append(q)
        ra.append(r0)
        rb.append(r1)
        parent.append(par)
        return len(a) - 1

    stack = [(np.asarray(root, dtype=float), np.arange(n_all), -1, first_step)]
    while stack:
        p, idx, par, step = stack.pop()
        n = len(idx)
        r = radius(n)
        pts = targets[idx]
        if n <= 2 or r < 1.15 * r_min:
            for t in pts:
                add(p, t, r, 0.75 * r_min, par)
            continue
        c = pts.mean(axis=0)
        q = p + step * (c - p)
        length = float(np.linalg.norm(q - p))
        if length < 2.0 * r:
            q = p + (c - p) * min(1.0, 2.0 * r / max(float(np.linalg.norm(c - p)), 1e-6))
        # a gentle bend in long branches
        if length > 14.0:
            d = (q - p) / length
            perp = np.cross(d, rng.normal(size=3))
            perp /= max(float(np.linalg.norm(perp)), 1e-6)
            mid = 0.5 * (p + q) + perp * rng.uniform(0.03, 0.1) * length
            s = add(p, mid, r, r, par)
            seg = add(mid, q, r, 0.97 * r, s)
        else:
            seg = add(p, q, r, 0.97 * r, par)
        ext = np.ptp(pts, axis=0) * rng.uniform(0.7, 1.3, size=3)
        axis = int(np.argmax(ext))
        k = int(np.clip(round(n * rng.uniform(0.3, 0.7)), 1, n - 1))
        order = np.argpartition(pts[:, axis], k)
        stack.append((q, idx[order[:k]], seg, rng.uniform(0.35, 0.6)))
        stack.append((q, idx[order[k:]], seg, rng.uniform(0.35, 0.6)))
    parent = np.asarray(parent, dtype=int)
    n_children = np.bincount(parent[parent >= 0], minlength=len(parent))
    return Tree(np.asarray(a), np.asarray(b), np.asarray(ra), np.asarray(rb), parent, n_children,
                kind, side)


def bronchi_along(tree: Tree, *, r_artery_min: float = 1.8, lumen_ratio: float = 0.8,
                  side_vector=(0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bronchi that accompany the arteries of radius >= ``r_artery_min``.

    Each bronchus is the artery segment shifted sideways by the two radii plus a gap, toward
    ``side_vector`` made perpendicular to the segment.  Returns (a, b, lumen_r_a, lumen_r_b).
    """
    keep = np.minimum(tree.ra, tree.rb) >= r_artery_min
    a, b = tree.a[keep], tree.b[keep]
    ra, rb = tree.ra[keep], tree.rb[keep]
    d = b - a
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
    g = np.broadcast_to(np.asarray(side_vector, dtype=float), d.shape)
    n = g - (g * d).sum(1, keepdims=True) * d
    alt = np.broadcast_to(np.array([tree.side, 0.0, 0.0]), d.shape)
    alt = alt - (alt * d).sum(1, keepdims=True) * d
    weak = np.linalg.norm(n, axis=1) < 0.3
    n[weak] = alt[weak]
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-6)
    la, lb = lumen_ratio * ra, lumen_ratio * rb
    wall = np.maximum(0.5, 0.2 * la)
    off_a = (ra + la + wall + 0.8)[:, None] * n
    off_b = (rb + lb + wall + 0.8)[:, None] * n
    return a + off_a, b + off_b, la, lb


def sample_points(tree_list, *, step_mm: float = 1.5, r_min: float = 0.0):
    """Points along every segment: (xyz (M, 3), radius (M,), tree index, segment index)."""
    pts, rad, ti, si = [], [], [], []
    for t_i, tr in enumerate(tree_list):
        seg_len = np.linalg.norm(tr.b - tr.a, axis=1)
        for s in np.nonzero(np.maximum(tr.ra, tr.rb) >= r_min)[0]:
            n = max(2, int(np.ceil(seg_len[s] / step_mm)) + 1)
            f = np.linspace(0.0, 1.0, n)[:, None]
            pts.append(tr.a[s] + f * (tr.b[s] - tr.a[s]))
            rad.append(tr.ra[s] + f[:, 0] * (tr.rb[s] - tr.ra[s]))
            ti.append(np.full(n, t_i))
            si.append(np.full(n, s))
    if not pts:
        return np.zeros((0, 3)), np.zeros(0), np.zeros(0, int), np.zeros(0, int)
    return np.vstack(pts), np.concatenate(rad), np.concatenate(ti), np.concatenate(si)


def find_distractors(tree_list, *, r_min: float = 1.0, r_max: float = 4.5, max_per_kind: int = 150,
                     rng: np.random.Generator) -> list[tuple[np.ndarray, float, str]]:
    """Vessel bifurcations and crossings of vessels of radius ``r_min``-``r_max`` mm: the classic
    nodule look-alikes.

    Returns a list of (xyz, diameter_mm, kind) with kind "bifurcation" or "crossing".
    """
    from scipy.spatial import cKDTree

    out = []
    bif = []
    for tr in tree_list:
        for s in np.nonzero(tr.n_children >= 2)[0]:
            if r_min <= tr.rb[s] <= r_max:
                bif.append((tr.b[s].copy(), 2.0 * float(tr.rb[s]) * 1.3, "bifurcation"))
    if len(bif) > max_per_kind:
        pick = rng.choice(len(bif), max_per_kind, replace=False)
        bif = [bif[i] for i in sorted(pick)]
    out += bif
    pts, rad, ti, si = sample_points(tree_list, step_mm=1.0, r_min=r_min)
    if len(pts) > 1:
        kd = cKDTree(pts)
        pairs = kd.query_pairs(r=2.0 * float(rad.max()) + 0.5, output_type="ndarray")
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            dist = np.linalg.norm(pts[i] - pts[j], axis=1)
            close = (dist < (rad[i] + rad[j]) * 0.9) & (np.maximum(rad[i], rad[j]) <= r_max)
            # not the same, parent or sibling segment of one tree
            same_tree = ti[i] == ti[j]
            related = np.zeros(len(i), dtype=bool)
            for k in np.nonzero(close & same_tree)[0]:
                tr = tree_list[ti[i[k]]]
                s1, s2 = si[i[k]], si[j[k]]
                p1, p2 = tr.parent[s1], tr.parent[s2]
                related[k] = s1 == s2 or p1 == s2 or p2 == s1 or p1 == p2 or \
                    (p1 >= 0 and tr.parent[p1] == s2) or (p2 >= 0 and tr.parent[p2] == s1)
            cand = np.nonzero(close & ~related)[0]
            cross = []
            taken = np.zeros((0, 3))
            for k in cand[rng.permutation(len(cand))]:
                c = 0.5 * (pts[i[k]] + pts[j[k]])
                if len(taken) and np.min(np.linalg.norm(taken - c, axis=1)) < 6.0:
                    continue
                taken = np.vstack([taken, c])
                cross.append((c, 2.0 * float(max(rad[i[k]], rad[j[k]])) * 1.4, "crossing"))
                if len(cross) >= max_per_kind:
                    break
            out += cross
    return out
