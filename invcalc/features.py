"""ANI atomic environment vectors from a prepared pair list, with their exact gradient.

torchani's ``AEVComputer.compute_from_neighbors`` rebuilds, on every call, the
structures that depend only on *which* pairs are neighbors: the scatter rows of the
radial terms, the angular pair subset, the triples (``neighbors_to_triples``: sorts,
unique, repeat_interleave) and their scatter rows.  ``AEVPlan`` builds them once per
pair list (torchani's ``neighbors_to_triples`` does the triples); ``aevs`` computes the
features of the current geometry and ``aev_grad`` the gradient dE/dd_p of any
E(G) with respect to the pair vectors, given dE/dG -- by the chain rule written out,
in chunks of pairs and triples, with no autograd graph (bounded memory at any size).

Terms (torchani's ``ANIRadial`` / ``ANIAngular``, ANI paper eqs. 3-4), r = |d_p| in Å:

    radial  0.25 exp(-eta (r - s_k)^2) f_c(r)
    angular 2 ((1 + cos(theta' - theta_z)) / 2)^zeta exp(-eta ((r_a + r_b)/2 - s_k)^2)
            f_c(r_a) f_c(r_b),     theta' = acos(0.95 cos theta_ab)

With a Verlet skin the pair list holds pairs up to ``cutoff + skin``; the mask
``r <= cutoff`` (torchani's own ``discard_outside_cutoff`` test) zeroes the rest --
needed for the cosine cutoff, which rises again beyond the cutoff.  Results equal
torchani's up to float round-off; the AEV layout is torchani's.
"""

from __future__ import annotations

import math
import typing as tp

import torch
from torch import Tensor
from torchani.aev import AEVComputer
from torchani.aev._terms import ANIAngular, ANIRadial
from torchani.cutoffs import CutoffCosine, CutoffSmooth
from torchani.neighbors import Neighbors, neighbors_to_triples

#: Pairs or triples per chunk: bounds the memory of the (chunk, features) terms.
CHUNK = 1 << 18
#: Largest system (pairs or triples) whose intermediates are kept for the gradient
#: (about 120 bytes per triple); larger ones are recomputed chunk by chunk.
KEEP = 1 << 21


class Triples(tp.NamedTuple):
    """Angular structures of the pairs now within the angular cutoff.

    ``inside``: (C,) which angular candidates are inside (the reuse key); ``pairs``:
    (C,) the candidates' indices in the pair list; ``tri``: (2, T) the two sides of
    each triple, indices into ``pairs``; ``sign``: (T,) product of the sides' direction
    signs (+-1, model dtype); ``rows``: (T,) rows of the (N*E2', A) angular table.
    """

    inside: Tensor
    pairs: Tensor
    tri: Tensor
    sign: Tensor
    rows: Tensor


class AEVPlan:
    """Index structures of one pair list over N atoms.

    ``i``, ``j``: (P,) pair atoms; ``radial_rows``: (2, P) rows of the (N*E', R)
    radial table that pair p adds to (atom i, element of j) and (atom j, element of
    i); ``candidates``: (C,) pairs that may come within the angular cutoff (they were
    within it + skin); ``masked``: whether pairs beyond the radial cutoff may be
    present.  Triples of candidates both inside the angular cutoff are selected anew
    only when that set changes (rarely for a molecule; for a large system nearly every
    call -- a filter, cheaper than computing every triple of the skin).

    Features are *compact*: only the blocks of the ``present`` elements (and element
    pairs) are stored, E' = len(present) and E2' = E'(E'+1)/2 -- the others are zero
    by construction.  ``columns``: (F',) their positions in torchani's full AEV.
    """

    def __init__(
        self, aev: AEVComputer, elem: Tensor, i: Tensor, j: Tensor, distances: Tensor,
        skin: float,
    ) -> None:
        check_terms(aev)
        present = tuple(int(e) for e in torch.unique(elem).tolist())
        compact, self.columns, self._triu = _compact(aev, present, elem.device)
        self.present = present
        self.elem = compact[elem]  # (N,) compact element indices
        self.num_atoms = int(elem.shape[0])
        self.num_species = len(present)
        self.num_species_pairs = self.num_species * (self.num_species + 1) // 2
        self.i, self.j = i, j
        ei, ej = self.elem[i], self.elem[j]
        k = self.num_species
        self.radial_rows = torch.stack((i * k + ej, j * k + ei))
        self.candidates = (distances <= aev.angular.cutoff + skin).nonzero().flatten()
        self.masked = skin > 0
        self._triples: Triples | None = None
        self._all: Triples | None = None
        ang = aev.angular
        self.dtype = distances.dtype
        self.zeta = float(ang.zeta)
        sections = ang.sections.to(distances.dtype)
        #: (2, Z) 0.5 [cos theta_z; sin theta_z], its (Z, 2) transpose and (1, Z) 0.5s
        self.trig = 0.5 * torch.stack((torch.cos(sections), torch.sin(sections)))
        self.trig_t = 2 * self.trig.T.contiguous()
        self.half = torch.full_like(self.trig[:1], 0.5)

    def triples(self, inside: Tensor) -> Triples:
        """Triples of the candidates flagged ``inside`` (C,) the angular cutoff.

        The triples of all candidates are built once (torchani's
        ``neighbors_to_triples``); each call keeps those whose two pairs are inside,
        and reuses the last answer while the flags do not change.
        """
        last = self._triples
        if last is not None and torch.equal(last.inside, inside):
            return last
        if self._all is None and last is None:  # first use: only the triples inside
            self._triples = _triples(self, self.candidates[inside], inside)
            return self._triples
        full = self._candidate_triples()
        if bool(inside.all()):
            keep = None
        else:
            keep = (inside[full.tri[0]] & inside[full.tri[1]]).nonzero().flatten()
        if keep is None:
            self._triples = full._replace(inside=inside)
        else:
            self._triples = Triples(
                inside, full.pairs, full.tri.index_select(1, keep),
                full.sign.index_select(0, keep), full.rows.index_select(0, keep),
            )
        return self._triples

    def _candidate_triples(self) -> Triples:
        if self._all is None:
            inside = torch.ones_like(self.candidates, dtype=torch.bool)
            self._all = _triples(self, self.candidates, inside)
        return self._all


def _triples(plan: AEVPlan, pairs: Tensor, inside: Tensor) -> Triples:
    """Triples of ``pairs`` (indices into the pair list) by torchani's
    ``neighbors_to_triples``, with their angular-table rows."""
    idx = torch.stack((plan.i[pairs], plan.j[pairs]))
    zeros = torch.zeros(pairs.shape[0], device=pairs.device)
    tri = neighbors_to_triples(Neighbors(idx, zeros, zeros.new_zeros(zeros.shape[0], 3)))
    # the side atom of a triple is its pair's other atom than the central one
    pair_elem = plan.elem[idx]  # (2, Pa)
    side_elem = torch.where(
        tri.diff_signs == 1, pair_elem[1][tri.side_idxs], pair_elem[0][tri.side_idxs]
    )
    rows = tri.central_idxs * plan.num_species_pairs + plan._triu[side_elem[0], side_elem[1]]
    sign = (tri.diff_signs[0] * tri.diff_signs[1]).to(plan.dtype)
    return Triples(inside, pairs, tri.side_idxs, sign, rows)


def check_terms(aev: AEVComputer) -> None:
    """Raise ``TypeError`` unless the AEV uses torchani's ANI radial and angular terms."""
    if type(aev.radial) is not ANIRadial or type(aev.angular) is not ANIAngular:
        raise TypeError("the fast AEV path supports ANIRadial and ANIAngular terms only")


@torch.no_grad()
def build_plan(
    aev: AEVComputer, elem: Tensor, i: Tensor, j: Tensor, distances: Tensor, skin: float
) -> AEVPlan:
    """Plan for pairs (i, j) (P,) of atoms with element indices ``elem`` (N,).

    ``distances``: (P,) pair distances (Å) when the list was built; pairs farther than
    angular cutoff + ``skin`` never enter the triples.  ``skin`` > 0 masks the terms.
    """
    return AEVPlan(aev, elem, i, j, distances, skin)


def _compact(
    aev: AEVComputer, present: tuple[int, ...], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Compact element indices (E,) (-1 if absent), the compact AEV's columns (F',) in
    the full AEV, and the compact element-pair table (E', E')."""
    compact = torch.full((aev.num_species,), -1, dtype=torch.long)
    compact[list(present)] = torch.arange(len(present))
    r, a = aev.radial.num_feats, aev.angular.num_feats
    cols = [torch.arange(e * r, (e + 1) * r) for e in present]
    k = len(present)
    triu = torch.zeros(k, k, dtype=torch.long)
    for n, (x, y) in enumerate(zip(*torch.triu_indices(k, k).tolist())):
        triu[x, y] = triu[y, x] = n
        full = int(aev.triu_index[present[x], present[y]])
        start = aev.radial_len + full * a
        cols.append(torch.arange(start, start + a))
    columns = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.long)
    return compact.to(device), columns.to(device), triu.to(device)


#: Factors below this are set to 0 in float32 so that products of two stay normal
#: numbers: subnormal floats make CPU arithmetic up to ~40x slower.  The change is
#: below 1e-18 absolute on terms of order 1 (float32 resolves 1e-7).
_FLUSH32 = 1e-18


def _floor(dtype: torch.dtype) -> float | None:
    """The flush threshold for ``dtype`` (None: no flushing needed)."""
    return _FLUSH32 if torch.finfo(dtype).bits <= 32 else None


#: Tensors smaller than this are not flushed: the few subnormals cost less than the check.
_FLUSH_MIN = 4096


def _flush(x: Tensor, floor: float | None) -> Tensor:
    if floor is None or x.numel() < _FLUSH_MIN:
        return x
    return x.masked_fill_(x < floor, 0.0)


def _exp(arg: Tensor, floor: float | None) -> Tensor:
    """exp(arg), flushed to 0 below ``floor`` without computing subnormal results."""
    if floor is None or arg.numel() < _FLUSH_MIN:
        return torch.exp(arg)
    lo = math.log(floor)
    return torch.exp(arg.clamp(min=lo)).masked_fill_(arg < lo, 0.0)


def _cutoff(fn: torch.nn.Module, d: Tensor, rc: float, masked: bool) -> tuple[Tensor, Tensor]:
    """Cutoff factor f_c(d) and its slope df_c/dd, (P,) each, zero beyond rc if masked."""
    floor = _floor(d.dtype)
    if type(fn) is CutoffCosine:
        arg = d * (torch.pi / rc)
        fc = _flush(0.5 * torch.cos(arg) + 0.5, floor)
        slope = (-0.5 * torch.pi / rc) * torch.sin(arg)
    elif type(fn) is CutoffSmooth:
        ratio = d / rc
        u = 1 - ratio**fn.order
        c = u.clamp(min=fn.eps)
        fc = _exp(1 - 1 / c, floor)
        inner = fn.order * ratio ** (fn.order - 1) / rc
        slope = torch.where(u > fn.eps, -fc * inner / (c * c), 0.0)
    else:  # any other elementwise cutoff: its slope by autograd
        with torch.enable_grad():
            x = d.detach().requires_grad_(True)
            value = fn(x, rc)
            (slope,) = torch.autograd.grad(value.sum(), x)
        fc = _flush(value.detach(), floor)
    if masked:  # torchani keeps pairs with d <= rc
        outside = d > rc
        fc, slope = fc.masked_fill(outside, 0.0), slope.masked_fill(outside, 0.0)
    return fc, slope


class _Radial(tp.NamedTuple):
    terms: Tensor | None  # (P, R), dropped once summed
    gauss: Tensor  # (P, R) exp(-eta x^2)
    x: Tensor  # (P, R) r - s_k
    fc: Tensor  # (P,)
    slope: Tensor  # (P,)


def _radial(aev: AEVComputer, d: Tensor, masked: bool) -> _Radial:
    rad = aev.radial
    fc, slope = _cutoff(rad.cutoff_fn, d, rad.cutoff, masked)
    x = d.unsqueeze(-1) - rad.shifts
    gauss = _exp(-rad.eta * x * x, _floor(d.dtype))
    return _Radial((0.25 * fc).unsqueeze(-1) * gauss, gauss, x, fc, slope)


def _radial_grad(aev: AEVComputer, r: _Radial, g_terms: Tensor) -> Tensor:
    """(P,) dE/dr of pairs, given dE/d(terms) (P, R)."""
    ge = g_terms * r.gauss
    eta = aev.radial.eta
    return 0.25 * (r.slope * ge.sum(-1) - 2 * eta * r.fc * (ge * r.x).sum(-1))


class _Angular(tp.NamedTuple):
    terms: Tensor | None  # (T, S*Z), None when only the gradient is wanted
    a: Tensor  # (T,) first side, index into the angular pairs
    b: Tensor  # (T,) second side
    d0: Tensor  # (T,) side lengths
    d1: Tensor
    cos: Tensor  # (T,) cos theta_ab
    sin: Tensor  # (T,) sin theta' = sqrt(1 - (0.95 cos)^2)
    base: Tensor  # (T, Z) (1 + cos(theta' - theta_z)) / 2
    angular: Tensor  # (T, Z) 2 base^zeta
    gauss: Tensor  # (T, S)
    x: Tensor  # (T, S) mean distance - shift
    fc0: Tensor
    fc1: Tensor
    fcfc: Tensor


def _power(base: Tensor, zeta: float, floor: float | None) -> Tensor:
    """base^zeta (base in (0, 1]): repeated squaring for a power-of-two zeta."""
    z = int(zeta)
    if z == zeta and 1 <= z <= 1024 and z & (z - 1) == 0:
        out = base
        while z > 1:
            if z == 2:
                out = _flush(out.clone() if out is base else out, floor)
            out = out * out
            z //= 2
        return out
    return _exp(zeta * torch.log(base), floor)


def _angular(
    aev: AEVComputer, plan: AEVPlan, diff_a: Tensor, d_a: Tensor, fc_a: Tensor, tri: Tensor,
    sign: Tensor, terms: bool = True,
) -> _Angular:
    """Angular terms of triples ``tri`` (2, T) over the angular pairs (Pa, 3).

    cos(theta' - theta_z) = cos theta' cos theta_z + sin theta' sin theta_z with
    cos theta' = 0.95 cos theta_ab: the same value as torchani's acos-then-cos.
    """
    ang = aev.angular
    floor = _floor(diff_a.dtype)
    a, b = tri[0], tri[1]
    d0, d1 = d_a.index_select(0, a), d_a.index_select(0, b)
    dot = (diff_a.index_select(0, a) * diff_a.index_select(0, b)).sum(-1) * sign
    cos = dot / torch.clamp(d0 * d1, min=1e-10)
    u = 0.95 * cos
    sin = torch.sqrt(1 - u * u)
    base = torch.addmm(plan.half, torch.stack((u, sin), 1), plan.trig)  # (T, Z)
    angular = 2 * _power(base, plan.zeta, floor)  # (T, Z)
    x = (d0 + d1).unsqueeze(-1) / 2 - ang.shifts
    gauss = _exp(-ang.eta * x * x, floor)  # (T, S)
    fc0, fc1 = fc_a.index_select(0, a), fc_a.index_select(0, b)
    fcfc = _flush(fc0 * fc1, floor)
    out = None
    if terms:
        radial = _flush(gauss * fcfc.unsqueeze(-1), floor)
        out = (radial.unsqueeze(2) * angular.unsqueeze(1)).flatten(1)
    return _Angular(
        out, a, b, d0, d1, cos, sin, base, angular, gauss, x, fc0, fc1, fcfc
    )


def _angular_grad(
    aev: AEVComputer, plan: AEVPlan, t: _Angular, g_terms: Tensor, slope_a: Tensor, diff_a: Tensor,
    sign: Tensor, gd_a: Tensor, gv_a: Tensor,
) -> None:
    """Add dE/dr (into gd_a (Pa,)) and the remaining dE/dd (gv_a (Pa, 3)) of the
    angular pairs, given dE/d(terms) (T, S*Z)."""
    ang = aev.angular
    g3 = g_terms.view(g_terms.shape[0], t.gauss.shape[1], -1)  # (T, S, Z)
    g_rad = torch.bmm(g3, t.angular.unsqueeze(-1)).squeeze(-1) * t.gauss  # (T, S)
    g_ang = torch.bmm((t.gauss * t.fcfc.unsqueeze(-1)).unsqueeze(1), g3).squeeze(1)  # (T, Z)
    g_fc = g_rad.sum(-1)
    g_mean = -2 * ang.eta * t.fcfc * (g_rad * t.x).sum(-1)
    # dA_z/dcos = zeta A_z / (2 base_z) * 0.95 (cos theta_z - (u / sin) sin theta_z)
    q = g_ang * t.angular / t.base.clamp(min=1e-30)
    qc = q @ plan.trig_t  # (T, 2): sums with cos theta_z and sin theta_z
    u = 0.95 * t.cos
    g_cos = (0.475 * plan.zeta) * (qc[:, 0] - u / t.sin * qc[:, 1])
    prod = t.d0 * t.d1
    live = prod > 1e-10
    g_dot = torch.where(live, g_cos / prod, 0.0)
    g_prod = torch.where(live, -g_cos * t.cos / prod, 0.0)
    s0, s1 = slope_a.index_select(0, t.a), slope_a.index_select(0, t.b)
    g_d0 = g_fc * s0 * t.fc1 + 0.5 * g_mean + g_prod * t.d1
    g_d1 = g_fc * t.fc0 * s1 + 0.5 * g_mean + g_prod * t.d0
    gd_a.index_add_(0, t.a, g_d0)
    gd_a.index_add_(0, t.b, g_d1)
    w = (g_dot * sign).unsqueeze(-1)
    gv_a.index_add_(0, t.a, w * diff_a.index_select(0, t.b))
    gv_a.index_add_(0, t.b, w * diff_a.index_select(0, t.a))


def _spans(total: int, chunk: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk, total)) for lo in range(0, total, chunk)] or [(0, 0)]


class Saved(tp.NamedTuple):
    """What ``aev_grad`` reuses from ``aevs``: distances, the triples, and the terms'
    intermediates per chunk when the system was small enough to keep them (else
    None)."""

    d: Tensor
    triples: Triples
    radial: list[_Radial] | None
    angular: list[_Angular] | None
    slope_a: Tensor | None


def aevs(
    aev: AEVComputer, plan: AEVPlan, diff: Tensor, chunk: int = CHUNK, keep: bool = False
) -> tuple[Tensor, Saved]:
    """Compact AEVs (N, F') from the pair vectors ``diff`` (P, 3) Å of ``plan``.

    ``keep``: keep the terms' intermediates for ``aev_grad`` (up to ``KEEP``).
    """
    n, rca = plan.num_atoms, aev.angular.cutoff
    d = diff.norm(2, -1)
    trip = plan.triples(d.index_select(0, plan.candidates) <= rca)
    radial = diff.new_zeros(n * plan.num_species, aev.radial.num_feats)
    angular = diff.new_zeros(n * plan.num_species_pairs, aev.angular.num_feats)
    diff_a, d_a = diff.index_select(0, trip.pairs), d.index_select(0, trip.pairs)
    fc_a, slope_a = _cutoff(aev.angular.cutoff_fn, d_a, rca, False)
    sign = trip.sign
    keep = keep and max(d.shape[0], trip.tri.shape[1]) <= KEEP
    kept_r, kept_a = [], []
    for lo, hi in _spans(d.shape[0], chunk):
        r = _radial(aev, d[lo:hi], plan.masked)
        radial.index_add_(0, plan.radial_rows[0, lo:hi], r.terms)
        radial.index_add_(0, plan.radial_rows[1, lo:hi], r.terms)
        if keep:
            kept_r.append(r._replace(terms=None))
    for lo, hi in _spans(trip.tri.shape[1], chunk):
        t = _angular(aev, plan, diff_a, d_a, fc_a, trip.tri[:, lo:hi], sign[lo:hi])
        angular.index_add_(0, trip.rows[lo:hi], t.terms)
        if keep:
            kept_a.append(t._replace(terms=None))
    out = torch.cat((radial.view(n, -1), angular.view(n, -1)), dim=-1)
    if keep:
        return out, Saved(d, trip, kept_r, kept_a, slope_a)
    return out, Saved(d, trip, None, None, None)


def aev_grad(
    aev: AEVComputer, plan: AEVPlan, diff: Tensor, grad_aevs: Tensor, saved: Saved,
    chunk: int = CHUNK,
) -> Tensor:
    """(P, 3) dE/dd_p for the pair vectors ``diff`` (P, 3), given dE/dG (N, F').

    Terms are recomputed chunk by chunk unless ``saved`` (from ``aevs``) holds them.
    """
    n = plan.num_atoms
    radial_len = plan.num_species * aev.radial.num_feats
    g_rad = grad_aevs[:, :radial_len].reshape(n * plan.num_species, -1)
    g_ang = grad_aevs[:, radial_len:].reshape(n * plan.num_species_pairs, -1)
    d, trip = saved.d, saved.triples
    gd = torch.empty_like(d)
    for k, (lo, hi) in enumerate(_spans(d.shape[0], chunk)):
        if saved.radial is not None:
            r = saved.radial[k]
        else:
            r = _radial(aev, d[lo:hi], plan.masked)
        rows = plan.radial_rows[:, lo:hi]
        g_terms = g_rad.index_select(0, rows[0]) + g_rad.index_select(0, rows[1])
        gd[lo:hi] = _radial_grad(aev, r, g_terms)
    diff_a, d_a = diff.index_select(0, trip.pairs), d.index_select(0, trip.pairs)
    if saved.slope_a is not None:
        fc_a, slope_a = d_a, saved.slope_a  # fc_a unused: the terms are saved
    else:
        fc_a, slope_a = _cutoff(aev.angular.cutoff_fn, d_a, aev.angular.cutoff, False)
    sign = trip.sign
    gd_a, gv_a = torch.zeros_like(d_a), torch.zeros_like(diff_a)
    for k, (lo, hi) in enumerate(_spans(trip.tri.shape[1], chunk)):
        if saved.angular is not None:
            t = saved.angular[k]
        else:
            t = _angular(
                aev, plan, diff_a, d_a, fc_a, trip.tri[:, lo:hi], sign[lo:hi], terms=False
            )
        g_terms = g_ang.index_select(0, trip.rows[lo:hi])
        _angular_grad(aev, plan, t, g_terms, slope_a, diff_a, sign[lo:hi], gd_a, gv_a)
    gd.index_add_(0, trip.pairs, gd_a)
    grad = diff * torch.where(d > 0, gd / d, 0.0).unsqueeze(-1)
    return grad.index_add_(0, trip.pairs, gv_a)
