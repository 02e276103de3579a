"""Ensemble members evaluated together: per-element networks as batched matmuls.

A torchani ``Ensemble`` of M ``ANINetworks`` runs M x E small networks one after the
other (E elements), each with its own gather and scatter.  ``FusedEnsemble`` stacks the
M members' weights of each element into (M, in, out) tensors (torchani's
``BmmAtomicNetwork`` builds and checks them) and evaluates all members of an element at
once: the first layer as one (n, F) x (F, M*H) matrix product shared by the members,
the others as batched products.  Atoms arrive sorted by element, so each element's
atoms are one contiguous slice: no gather, no scatter.

``energies_and_grad`` also returns dE/dG, the gradient of the member-mean energy with
respect to the features, by the chain rule written out (activation derivatives are
closed forms), with no autograd graph: for these small matrices the graph's
bookkeeping costs as much as the arithmetic.

The stacked weights are a *derived* inference structure: the model's stored layout
(the ``Ensemble`` and its state_dict keys) is unchanged.  ``FusedCache`` keeps one per
potential and rebuilds it whenever a weight tensor is replaced, re-pointed or modified
in place (identity, storage and version counter), or the active members change; the
potential clears it on dtype and device changes.  Gradients never reach the
parameters: train through the torchani modules.
"""

from __future__ import annotations

import operator
import typing as tp

import numpy as np
import torch
from torch import Tensor
from torchani.nn import ANINetworks, Ensemble
from torchani.nn._core import TightCELU
from torchani.nn._infer import BmmAtomicNetwork


#: Atoms per network pass: larger systems run in blocks whose activations stay in cache.
BLOCK = 512


class _Element(tp.NamedTuple):
    """One element's stacked networks, L layers: ``weights[k]`` (M, in, out),
    ``weights_t[k]`` (M, out, in) its transposed *view* for the backward sweep (BLAS
    reads it in place: one copy of the weights streams through the cache per call, not
    two), ``biases[k]`` (M, 1, out) or None; ``last_mean``: ``weights_t[L-1] / M`` for
    the ensemble mean."""

    weights: tuple[Tensor, ...]
    weights_t: tuple[Tensor, ...]
    biases: tuple[Tensor | None, ...]
    last_mean: Tensor


def _activation_backward(act: torch.nn.Module) -> tp.Callable[[Tensor, Tensor], Tensor]:
    """(grad, z) -> grad * f'(z): the very kernels autograd runs for these activations,
    so gradients match an autograd pass bit for bit (torch's float64 CELU backward,
    for one, uses a float32 1/alpha)."""
    aten = torch.ops.aten
    if isinstance(act, TightCELU) or type(act) is torch.nn.CELU:
        alpha = 0.1 if isinstance(act, TightCELU) else float(act.alpha)
        scale = 1.0 / float(np.float32(alpha))  # as autograd: 1.0 / alpha.toFloat()
        return lambda g, z: aten.elu_backward(g, alpha, 1, scale, False, z)
    if type(act) is torch.nn.GELU:
        approximate = act.approximate
        return lambda g, z: aten.gelu_backward(g, z, approximate=approximate)
    if type(act) is torch.nn.SiLU:
        return lambda g, z: aten.silu_backward(g, z)
    raise TypeError(f"unsupported activation {act!r}: use celu, gelu or silu")


class FusedEnsemble:
    """Stacked weights of every element's networks over M members (no gradients)."""

    def __init__(self, elements: list[_Element], activation: torch.nn.Module, members: int):
        self.elements = elements
        self.activation = activation
        self.backward = _activation_backward(activation)
        self.members = members
        self._compact: dict[tuple[int, ...], list[_Element]] = {}

    def compact(self, present: tuple[int, ...], columns: Tensor) -> list[_Element]:
        """The elements' networks with first layers restricted to the AEV ``columns``
        (F',) of the ``present`` elements (the other AEV entries are exactly zero)."""
        nets = self._compact.get(present)
        if nets is None:
            nets = []
            for e in self.elements:
                w0 = e.weights[0].index_select(1, columns)
                weights_t = (w0.transpose(1, 2), *e.weights_t[1:])
                last_mean = e.last_mean if len(e.weights) > 1 else weights_t[0] / self.members
                nets.append(e._replace(
                    weights=(w0, *e.weights[1:]), weights_t=weights_t, last_mean=last_mean
                ))
            self._compact[present] = nets
        return nets

    def energies(self, aevs: Tensor, counts: tp.Sequence[int]) -> Tensor:
        """Member atomic energies (M, N) of atoms sorted by element.

        Args:
            aevs: (N, F) features of the atoms, sorted by element index.
            counts: atoms of each element, in element-index order (sum N).
        """
        return self.energies_and_grad(aevs, counts, None)[0]

    def energies_and_grad(
        self, aevs: Tensor, counts: tp.Sequence[int], grad: str | None = "mean",
        compact: tuple[tuple[int, ...], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Member atomic energies (M, N) and their gradient with respect to ``aevs``.

        ``grad``: "mean" gives dE/dG (N, F) of E = (1/M) sum_m E_m; "members" gives
        dE_m/dG (M, N, F) of each member; None skips the gradient.  ``compact``:
        (present elements, columns) when ``aevs`` holds only those columns of the AEV.
        """
        outs, grads = [], []
        start = 0
        elements = self.elements if compact is None else self.compact(*compact)
        for net, n in zip(elements, counts):
            for lo in range(start, start + n, BLOCK):  # blocks stay in cache
                out, g = self._element(net, aevs[lo:min(lo + BLOCK, start + n)], grad)
                outs.append(out)
                grads.append(g)
            start += n
        if not outs:
            empty = aevs.new_zeros(self.members, 0)
            return empty, (None if grad is None else torch.zeros_like(aevs))
        energy = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if grad is None:
            return energy, None
        dim = 0 if grad == "mean" else 1
        return energy, grads[0] if len(grads) == 1 else torch.cat(grads, dim=dim)

    def _element(
        self, net: _Element, x: Tensor, grad: str | None
    ) -> tuple[Tensor, Tensor | None]:
        """(M, n) outputs of one element's networks for its (n, F) features, and the
        gradient (see ``energies_and_grad``).

        All members at once: batched products over the members' stacked weights (the
        shared input is expanded, not copied).  Backward: delta = dE/dz layer by layer,
        starting from dE/dh = W_last^T (the output is linear in the last hidden layer).
        """
        act, m, n = self.activation, self.members, x.shape[0]
        last = len(net.weights) - 1
        pre: list[Tensor] = []  # pre-activations z of the hidden layers
        h = x.expand(m, n, -1)
        for k in range(last + 1):
            w, b = net.weights[k], net.biases[k]
            z = torch.bmm(h, w) if b is None else torch.baddbmm(b, h, w)
            if k < last:
                pre.append(z)
                h = act(z)
        out = z.squeeze(-1)  # (M, n)
        if grad is None:
            return out, None
        delta = (net.last_mean if grad == "mean" else net.weights_t[last]).expand(m, n, -1)
        for k in range(last - 1, -1, -1):
            delta = torch.bmm(self.backward(delta, pre[k]), net.weights_t[k])
        return out, (delta.sum(0) if grad == "mean" else delta.contiguous())


def _stack_element(nets: list[torch.nn.Module]) -> tuple[_Element, torch.nn.Module]:
    bmm = BmmAtomicNetwork(nets)  # torchani checks the members share one architecture
    linears = [*bmm.layers, bmm.final_layer]
    has_bias = bool(bmm.has_biases)
    weights = tuple(lin.weight.detach().contiguous() for lin in linears)  # (M, in, out)
    weights_t = tuple(w.transpose(1, 2) for w in weights)
    biases = tuple(lin.bias.detach().clone() if has_bias else None for lin in linears)
    last_mean = weights_t[-1] / len(nets)
    return _Element(weights, weights_t, biases, last_mean), bmm.activation


def fuse(networks: Ensemble, symbols: tp.Sequence[str]) -> FusedEnsemble:
    """Stack the active members of ``networks`` for elements ``symbols`` (in order)."""
    members = [networks.members[i] for i in networks.active_members_idxs]
    if not all(isinstance(m, ANINetworks) for m in members):
        raise TypeError("only ensembles of torchani ANINetworks can be fused")
    with torch.no_grad():
        stacked = [_stack_element([m.atomics[s] for m in members]) for s in symbols]
    acts = [a for _, a in stacked]
    if any(type(a) is not type(acts[0]) or repr(a) != repr(acts[0]) for a in acts):
        raise ValueError("fused networks need one activation for all elements")
    return FusedEnsemble([e for e, _ in stacked], acts[0], len(members))


class _Key:
    """Where each weight lives, its storage and version, when a structure was built."""

    def __init__(self, networks: Ensemble, extra: tuple[tp.Any, ...]) -> None:
        self.networks = networks
        self.extra = extra
        owned = [
            (module, name, p)
            for module in networks.modules()
            for name, p in module._parameters.items()
            if p is not None
        ]
        self.owners = [(module._parameters, name) for module, name, _ in owned]
        self.params = [p for _, _, p in owned]
        # views keep the old storages alive, so no new tensor can reuse their address
        self.views = [p.detach() for p in self.params]
        self.versions = [p._version for p in self.params]
        self.pointers = [p.data_ptr() for p in self.params]

    def matches(self, networks: Ensemble, extra: tuple[tp.Any, ...]) -> bool:
        # runs on every call: whole-list comprehensions, not a Python loop per weight
        if networks is not self.networks or extra != self.extra:
            return False
        return (
            all(map(operator.is_, [ps.get(name) for ps, name in self.owners], self.params))
            and [p._version for p in self.params] == self.versions
            and [p.data_ptr() for p in self.params] == self.pointers
        )


class FusedCache:
    """The last ``FusedEnsemble`` of a potential and the key it was built under.

    Copies and pickles of a potential start with an empty cache.  Weights replaced
    by new modules (rather than new tensors) are not seen: call ``clear`` then.
    """

    def __init__(self) -> None:
        self._fused: FusedEnsemble | None = None
        self._key: _Key | None = None

    def get(self, networks: Ensemble, symbols: tp.Sequence[str]) -> FusedEnsemble:
        """The ``FusedEnsemble`` of ``networks``, rebuilt only when its weights changed."""
        extra = (tuple(networks.active_members_idxs), tuple(symbols))
        key = self._key
        if self._fused is None or key is None or not key.matches(networks, extra):
            self._fused = fuse(networks, symbols)
            self._key = _Key(networks, extra)
        return self._fused

    def clear(self) -> None:
        """Forget the cached structure (after a dtype or device change)."""
        self._fused, self._key = None, None

    def __deepcopy__(self, memo: dict[int, tp.Any]) -> "FusedCache":
        return FusedCache()

    def __getstate__(self) -> dict[str, tp.Any]:
        return {"_fused": None, "_key": None}
