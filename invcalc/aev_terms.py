"""ANI radial and angular terms with their derivatives, elementwise over pairs/triples.

The formulas of torchani's ``ANIRadial`` and ``ANIAngular`` (ANI paper eqs. 3-4), and
the chain rule of each written out, for ``invcalc.features``.  Distances in Å.

Subnormal floats make CPU arithmetic up to ~40x slower, and these terms underflow a
lot (exp(-eta (r - s)^2) with eta = 16, ((1 + cos)/2)^32): in float32, factors below
``FLUSH32`` are set to exactly 0 so that products of two factors stay normal numbers.
The change is below 1e-18 absolute on terms of order 1 (float32 resolves 1e-7);
float64 needs no flushing.
"""

from __future__ import annotations

import math
import typing as tp

import torch
from torch import Tensor
from torchani.aev import AEVComputer
from torchani.cutoffs import CutoffCosine, CutoffSmooth


class AngularConstants(tp.NamedTuple):
    """Per-dtype constants of the angular terms: ``trig`` (2, Z) 0.5 [cos theta_z;
    sin theta_z], ``trig_t`` (Z, 2) [cos theta_z, sin theta_z], ``half`` (1, Z) 0.5s,
    ``zeta`` as a Python float."""

    trig: Tensor
    trig_t: Tensor
    half: Tensor
    zeta: float


def angular_constants(aev: AEVComputer, dtype: torch.dtype) -> AngularConstants:
    """``AngularConstants`` of ``aev``'s angular terms in ``dtype``."""
    sections = aev.angular.sections.to(dtype)
    trig = 0.5 * torch.stack((torch.cos(sections), torch.sin(sections)))
    return AngularConstants(
        trig, 2 * trig.T.contiguous(), torch.full_like(trig[:1], 0.5), float(aev.angular.zeta)
    )


#: Float32 factors below this are set to 0 (see the module doc).
FLUSH32 = 1e-18


def flush_floor(dtype: torch.dtype) -> float | None:
    """The flush threshold for ``dtype`` (None: no flushing needed)."""
    return FLUSH32 if torch.finfo(dtype).bits <= 32 else None


#: Tensors smaller than this are not flushed: the few subnormals cost less than the check.
_FLUSH_MIN = 4096


def flush(x: Tensor, floor: float | None) -> Tensor:
    """``x`` with entries below ``floor`` set to 0, in place (large tensors only)."""
    if floor is None or x.numel() < _FLUSH_MIN:
        return x
    return x.masked_fill_(x < floor, 0.0)


def exp_flushed(arg: Tensor, floor: float | None) -> Tensor:
    """exp(arg), flushed to 0 below ``floor`` without computing subnormal results."""
    if floor is None or arg.numel() < _FLUSH_MIN:
        return torch.exp(arg)
    lo = math.log(floor)
    return torch.exp(arg.clamp(min=lo)).masked_fill_(arg < lo, 0.0)


def cutoff(fn: torch.nn.Module, d: Tensor, rc: float, masked: bool) -> tuple[Tensor, Tensor]:
    """Cutoff factor f_c(d) and its slope df_c/dd, (P,) each, zero beyond rc if masked."""
    floor = flush_floor(d.dtype)
    if type(fn) is CutoffCosine:
        arg = d * (torch.pi / rc)
        fc = flush(0.5 * torch.cos(arg) + 0.5, floor)
        slope = (-0.5 * torch.pi / rc) * torch.sin(arg)
    elif type(fn) is CutoffSmooth:
        ratio = d / rc
        u = 1 - ratio**fn.order
        c = u.clamp(min=fn.eps)
        fc = exp_flushed(1 - 1 / c, floor)
        inner = fn.order * ratio ** (fn.order - 1) / rc
        slope = torch.where(u > fn.eps, -fc * inner / (c * c), 0.0)
    else:  # any other elementwise cutoff: its slope by autograd
        with torch.enable_grad():
            x = d.detach().requires_grad_(True)
            value = fn(x, rc)
            (slope,) = torch.autograd.grad(value.sum(), x)
        fc = flush(value.detach(), floor)
    if masked:  # torchani keeps pairs with d <= rc
        outside = d > rc
        fc, slope = fc.masked_fill(outside, 0.0), slope.masked_fill(outside, 0.0)
    return fc, slope


class Radial(tp.NamedTuple):
    """Radial terms of P pairs and what their gradient needs."""

    terms: Tensor | None  # (P, R), dropped once summed
    gauss: Tensor  # (P, R) exp(-eta x^2)
    x: Tensor  # (P, R) r - s_k
    fc: Tensor  # (P,)
    slope: Tensor  # (P,)


def radial(aev: AEVComputer, d: Tensor, masked: bool) -> Radial:
    """Radial terms (P, R) of pair distances ``d`` (P,); ``masked`` zeroes d > cutoff."""
    rad = aev.radial
    fc, slope = cutoff(rad.cutoff_fn, d, rad.cutoff, masked)
    x = d.unsqueeze(-1) - rad.shifts
    gauss = exp_flushed(-rad.eta * x * x, flush_floor(d.dtype))
    return Radial((0.25 * fc).unsqueeze(-1) * gauss, gauss, x, fc, slope)


def radial_grad(aev: AEVComputer, r: Radial, g_terms: Tensor) -> Tensor:
    """(P,) dE/dr of pairs, given dE/d(terms) (P, R)."""
    ge = g_terms * r.gauss
    eta = aev.radial.eta
    return 0.25 * (r.slope * ge.sum(-1) - 2 * eta * r.fc * (ge * r.x).sum(-1))


class Angular(tp.NamedTuple):
    """Angular terms of T triples and what their gradient needs."""

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


def power(base: Tensor, zeta: float, floor: float | None) -> Tensor:
    """base^zeta (base in (0, 1]): repeated squaring for a power-of-two zeta."""
    z = int(zeta)
    if z == zeta and 1 <= z <= 1024 and z & (z - 1) == 0:
        out = base
        while z > 1:
            if z == 2:
                out = flush(out.clone() if out is base else out, floor)
            out = out * out
            z //= 2
        return out
    return exp_flushed(zeta * torch.log(base), floor)


def angular(
    aev: AEVComputer, const: AngularConstants, diff_a: Tensor, d_a: Tensor, fc_a: Tensor,
    tri: Tensor, sign: Tensor, terms: bool = True,
) -> Angular:
    """Angular terms (T, S*Z) of triples ``tri`` (2, T) over the angular pairs, with the
    intermediates ``angular_grad`` needs; ``terms=False`` skips the terms themselves.

    ``diff_a``: (Pa, 3) pair vectors, ``d_a``: (Pa,) lengths, ``fc_a``: (Pa,) cutoff
    factors, ``sign``: (T,) sign products of the triples' sides.

    cos(theta' - theta_z) = cos theta' cos theta_z + sin theta' sin theta_z with
    cos theta' = 0.95 cos theta_ab: the same value as torchani's acos-then-cos.
    """
    ang = aev.angular
    floor = flush_floor(diff_a.dtype)
    a, b = tri[0], tri[1]
    d0, d1 = d_a.index_select(0, a), d_a.index_select(0, b)
    dot = (diff_a.index_select(0, a) * diff_a.index_select(0, b)).sum(-1) * sign
    cos = dot / torch.clamp(d0 * d1, min=1e-10)
    u = 0.95 * cos
    sin = torch.sqrt(1 - u * u)
    base = torch.addmm(const.half, torch.stack((u, sin), 1), const.trig)  # (T, Z)
    shape = 2 * power(base, const.zeta, floor)  # (T, Z) angular factor
    x = (d0 + d1).unsqueeze(-1) / 2 - ang.shifts
    gauss = exp_flushed(-ang.eta * x * x, floor)  # (T, S)
    fc0, fc1 = fc_a.index_select(0, a), fc_a.index_select(0, b)
    fcfc = flush(fc0 * fc1, floor)
    out = None
    if terms:
        radial = flush(gauss * fcfc.unsqueeze(-1), floor)
        out = (radial.unsqueeze(2) * shape.unsqueeze(1)).flatten(1)
    return Angular(out, a, b, d0, d1, cos, sin, base, shape, gauss, x, fc0, fc1, fcfc)


def angular_grad(
    aev: AEVComputer, const: AngularConstants, t: Angular, g_terms: Tensor, slope_a: Tensor,
    diff_a: Tensor, sign: Tensor, gd_a: Tensor, gv_a: Tensor,
) -> None:
    """Add dE/dr (into gd_a (Pa,)) and the remaining dE/dd (gv_a (Pa, 3)) of the
    angular pairs, given dE/d(terms) (T, S*Z)."""
    ang = aev.angular
    g3 = g_terms.view(g_terms.shape[0], t.gauss.shape[1], t.angular.shape[1])  # T, S, Z
    g_rad = torch.bmm(g3, t.angular.unsqueeze(-1)).squeeze(-1) * t.gauss  # (T, S)
    g_ang = torch.bmm((t.gauss * t.fcfc.unsqueeze(-1)).unsqueeze(1), g3).squeeze(1)  # (T, Z)
    g_fc = g_rad.sum(-1)
    g_mean = -2 * ang.eta * t.fcfc * (g_rad * t.x).sum(-1)
    # dA_z/dcos = zeta A_z / (2 base_z) * 0.95 (cos theta_z - (u / sin) sin theta_z)
    q = g_ang * t.angular / t.base.clamp(min=1e-30)
    qc = q @ const.trig_t  # (T, 2): sums with cos theta_z and sin theta_z
    u = 0.95 * t.cos
    g_cos = (0.475 * const.zeta) * (qc[:, 0] - u / t.sin * qc[:, 1])
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
