"""ANI atomic environment vectors from a prepared pair list, with their exact gradient.

torchani's ``AEVComputer.compute_from_neighbors`` rebuilds, on every call, the
structures that depend only on *which* pairs are neighbors: the scatter rows of the
radial terms, the angular pair subset, the triples (``neighbors_to_triples``: sorts,
unique, repeat_interleave) and their scatter rows.  ``AEVPlan`` builds them once per
pair list (the triples as torchani's ``neighbors_to_triples``, leaner); ``aevs`` computes the
features of the current geometry and ``aev_grad`` the gradient dE/dd_p of any
E(G) with respect to the pair vectors, given dE/dG -- by the chain rule written out
(``invcalc.aev_terms``), in chunks of pairs and triples, with no autograd graph
(bounded memory at any size).

Terms (torchani's ``ANIRadial`` / ``ANIAngular``, ANI paper eqs. 3-4), r = |d_p| in Å:

    radial  0.25 exp(-eta (r - s_k)^2) f_c(r)
    angular 2 ((1 + cos(theta' - theta_z)) / 2)^zeta exp(-eta ((r_a + r_b)/2 - s_k)^2)
            f_c(r_a) f_c(r_b),     theta' = acos(0.95 cos theta_ab)

With a Verlet skin the pair list holds pairs up to ``cutoff + skin``: radial terms are
masked with ``r <= cutoff`` (torchani's own ``discard_outside_cutoff`` test; needed for
the cosine cutoff, which rises again beyond the cutoff) and triples only join pairs
now within the angular cutoff.  Only the AEV blocks of the elements present are
computed ("compact" features; the others are zero).  Results equal torchani's up to
float round-off; the layout of the compact blocks is torchani's.
"""

from __future__ import annotations

import typing as tp

import torch
from torch import Tensor
from torchani.aev import AEVComputer
from torchani.aev._terms import ANIAngular, ANIRadial

from invcalc import aev_terms as terms

#: Pairs or triples per chunk: bounds the memory of the (chunk, features) terms.
CHUNK = 1 << 18
#: Largest system (pairs or triples) whose intermediates are kept for the gradient
#: (about 125 bytes per triple, 2 GB at 16M triples ~ 1.2e5 water atoms); larger ones
#: are recomputed chunk by chunk.
KEEP = 1 << 24


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
        self.dtype = distances.dtype
        self.constants = terms.angular_constants(aev, distances.dtype)

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


def _local_pairs(idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Enumerate, for each atom, the pairs of its neighbors (p > q) in torchani's order.

    Returns the sorting permutation ``rev`` (2P,) of the flattened ``idx``, the central
    atom (T,) and the positions (T,) of the two sides in the sorted order, and the
    number of pairs P.
    """
    num = idx.shape[1]
    ordered, rev = idx.reshape(-1).sort(stable=True)
    central, counts = torch.unique_consecutive(ordered, return_counts=True)
    sizes = (counts * (counts - 1)) >> 1
    group = torch.repeat_interleave(torch.arange(len(counts), device=idx.device), sizes)
    first_t = (torch.cumsum(sizes, 0) - sizes).index_select(0, group)
    local = torch.arange(group.shape[0], device=idx.device) - first_t
    # local index t -> (p, q), p > q, t = p (p - 1) / 2 + q; exact in float64 for the
    # neighbor counts of any real system (t < 2^26)
    p = ((1 + torch.sqrt(1 + 8 * local.double())) / 2).floor().long()
    start = (torch.cumsum(counts, 0) - counts).index_select(0, group)
    second = start + local - ((p * (p - 1)) >> 1)
    return rev, central.index_select(0, group), start + p, second, num


def neighbor_triples(idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torchani's ``neighbors_to_triples`` for pairs ``idx`` (2, P), indices only.

    Returns ``central`` (T,), ``side`` (2, T) pair indices and ``signs`` (2, T) +-1
    (+1 where the central atom is the pair's first atom), by central atom and then in
    the (p > q) lower-triangle order of its neighbors, as torchani.  Unlike torchani's,
    it neither pads every atom to the largest neighbor count nor gathers the triples'
    vectors: memory stays a few integers per triple.
    """
    rev, central, first, second, n = _local_pairs(idx)
    side_of = rev % n  # per sorted position: the pair, and whether the central is i
    sign_of = (rev < n).to(torch.int8) * 2 - 1
    side = torch.stack((side_of.index_select(0, first), side_of.index_select(0, second)))
    signs = torch.stack((sign_of.index_select(0, first), sign_of.index_select(0, second)))
    return central, side, signs


def _triples(plan: AEVPlan, pairs: Tensor, inside: Tensor) -> Triples:
    """Triples of ``pairs`` (indices into the pair list), with their angular-table rows."""
    i, j = plan.i.index_select(0, pairs), plan.j.index_select(0, pairs)
    rev, central, first, second, n = _local_pairs(torch.stack((i, j)))
    # per sorted position: the pair, the sign, and the element of the *other* atom
    side_of = rev % n
    sign_of = torch.where(rev < n, 1.0, -1.0).to(plan.dtype)
    other = torch.cat((plan.elem.index_select(0, j), plan.elem.index_select(0, i)))
    other = other.index_select(0, rev)
    side = torch.stack((side_of.index_select(0, first), side_of.index_select(0, second)))
    sign = sign_of.index_select(0, first) * sign_of.index_select(0, second)
    k = plan.num_species
    pair_type = plan._triu.reshape(-1).index_select(
        0, other.index_select(0, first) * k + other.index_select(0, second)
    )
    rows = central * plan.num_species_pairs + pair_type
    return Triples(inside, pairs, side, sign, rows)


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


def _spans(total: int, chunk: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk, total)) for lo in range(0, total, chunk)] or [(0, 0)]


class Saved(tp.NamedTuple):
    """What ``aev_grad`` reuses from ``aevs``: distances, the triples, and the terms'
    intermediates per chunk when the system was small enough to keep them (else
    None)."""

    d: Tensor
    triples: Triples
    radial: list[terms.Radial] | None
    angular: list[terms.Angular] | None
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
    fc_a, slope_a = terms.cutoff(aev.angular.cutoff_fn, d_a, rca, False)
    sign = trip.sign
    keep = keep and max(d.shape[0], trip.tri.shape[1]) <= KEEP
    kept_r, kept_a = [], []
    for lo, hi in _spans(d.shape[0], chunk):
        r = terms.radial(aev, d[lo:hi], plan.masked)
        radial.index_add_(0, plan.radial_rows[0, lo:hi], r.terms)
        radial.index_add_(0, plan.radial_rows[1, lo:hi], r.terms)
        if keep:
            kept_r.append(r._replace(terms=None))
    for lo, hi in _spans(trip.tri.shape[1], chunk):
        t = terms.angular(aev, plan.constants, diff_a, d_a, fc_a, trip.tri[:, lo:hi], sign[lo:hi])
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
            r = terms.radial(aev, d[lo:hi], plan.masked)
        rows = plan.radial_rows[:, lo:hi]
        g_terms = g_rad.index_select(0, rows[0]) + g_rad.index_select(0, rows[1])
        gd[lo:hi] = terms.radial_grad(aev, r, g_terms)
    diff_a, d_a = diff.index_select(0, trip.pairs), d.index_select(0, trip.pairs)
    if saved.slope_a is not None:
        fc_a, slope_a = d_a, saved.slope_a  # fc_a unused: the terms are saved
    else:
        fc_a, slope_a = terms.cutoff(aev.angular.cutoff_fn, d_a, aev.angular.cutoff, False)
    sign, const = trip.sign, plan.constants
    gd_a, gv_a = torch.zeros_like(d_a), torch.zeros_like(diff_a)
    for k, (lo, hi) in enumerate(_spans(trip.tri.shape[1], chunk)):
        if saved.angular is not None:
            t = saved.angular[k]
        else:
            t = terms.angular(
                aev, const, diff_a, d_a, fc_a, trip.tri[:, lo:hi], sign[lo:hi], terms=False
            )
        g_terms = g_ang.index_select(0, trip.rows[lo:hi])
        terms.angular_grad(aev, const, t, g_terms, slope_a, diff_a, sign[lo:hi], gd_a, gv_a)
    gd.index_add_(0, trip.pairs, gd_a)
    grad = diff * torch.where(d > 0, gd / d, 0.0).unsqueeze(-1)
    return grad.index_add_(0, trip.pairs, gv_a)
