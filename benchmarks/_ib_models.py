"""Models and one training loop for the inductive-bias benchmark.

Every model maps positions (B, N, 3) of one molecule (fixed atom numbers) to energies
(B,) in eV, float64; forces are ``-dE/dr`` by autograd for all of them.

- ``raw``: an MLP on the flattened coordinates, ``E = mu + sigma * MLP(r)``.
- ``augmented``: the same MLP, trained with a fresh random rotation and permutation of
  identical atoms of every structure in every minibatch (forces rotated/permuted too).
- ``descriptor``: the same MLP on a global invariant descriptor: the inverse distances,
  sorted within each element-pair block (standardised with training-set statistics).
- ``invariant``: ``invcalc.InvariantPotential`` (AEVs + per-element networks).

All are trained by ``train`` with the same optimiser, steps, batch size and schedule.
"""

from __future__ import annotations

import dataclasses
import typing as tp

import numpy as np
import torch
from torch import Tensor

from _ib_data import Dataset

ModelKind = tp.Literal["raw", "augmented", "descriptor", "invariant"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training budget shared by every model."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    lr_final: float = 1e-5
    force_weight: float = 1.0  # weight of the force term, both in units of the label std
    hidden: tuple[int, ...] = (64, 64)


def _mlp(n_in: int, hidden: tp.Sequence[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for width in hidden:
        layers += [torch.nn.Linear(n_in, width), torch.nn.GELU()]
        n_in = width
    layers.append(torch.nn.Linear(n_in, 1))
    return torch.nn.Sequential(*layers)


def _pair_blocks(numbers: np.ndarray) -> list[np.ndarray]:
    """Pairs (i < j) grouped by element pair: a list of (2, P_block) index arrays."""
    i, j = np.triu_indices(len(numbers), k=1)
    key = [tuple(sorted((numbers[a], numbers[b]))) for a, b in zip(i, j)]
    return [np.stack([i, j])[:, [k == blk for k in key]] for blk in sorted(set(key))]


class GlobalMLP(torch.nn.Module):
    """``E = mu + sigma * MLP(features(r))`` with ``features`` coordinates or descriptor."""

    def __init__(self, numbers: np.ndarray, features: tp.Literal["coords", "sorted_inv_dist"],
                 hidden: tp.Sequence[int], train: Dataset, augmented: bool = False) -> None:
        super().__init__()
        self.features = features
        self.blocks = [torch.as_tensor(b) for b in _pair_blocks(numbers)]
        n = len(numbers)
        n_in = 3 * n if features == "coords" else n * (n - 1) // 2
        # Standardised inputs with training-set statistics (of the augmented inputs for
        # ``augmented``).  Coordinates get one pooled scale: some are constant in an
        # aligned dataset (a planar molecule's z), so per-coordinate scales would blow up.
        pos = torch.as_tensor(train.positions, dtype=torch.float32)
        if augmented:
            gen = torch.Generator().manual_seed(0)
            pos = torch.cat([augment(pos, pos, numbers, gen)[0] for _ in range(8)])
        f = self.featurize(pos)
        mean = f.mean(0)
        std = f.std(0).clamp(min=1e-6) if features != "coords" else (f - mean).pow(2).mean().sqrt()
        self.register_buffer("f_mean", mean)
        self.register_buffer("f_std", std.expand(n_in).clone())
        self.mlp = _mlp(n_in, hidden)
        self.mu = float(train.energy.mean())
        self.sigma = float(train.energy.std())

    def featurize(self, pos: Tensor) -> Tensor:
        if self.features == "coords":
            return pos.reshape(pos.shape[0], -1)
        parts = []
        for blk in self.blocks:
            d = (pos[:, blk[0]] - pos[:, blk[1]]).norm(dim=-1)
            parts.append(torch.sort(1.0 / d, dim=-1, descending=True).values)
        return torch.cat(parts, dim=-1)

    def forward(self, pos: Tensor) -> Tensor:
        x = (self.featurize(pos) - self.f_mean) / self.f_std
        return self.mu + self.sigma * self.mlp(x).squeeze(-1).to(torch.float64)


class Invariant(torch.nn.Module):
    """An ``InvariantPotential`` for one molecule; self-energies absorb the mean energy."""

    def __init__(self, numbers: np.ndarray, hidden: tp.Sequence[int], train: Dataset,
                 seed: int) -> None:
        super().__init__()
        from invcalc.elements import symbol_of
        from invcalc.potential import InvariantPotential

        elements = sorted({symbol_of(int(z)) for z in numbers})
        counts = np.array([[sum(symbol_of(int(z)) == s for z in numbers) for s in elements]],
                          dtype=float)
        # minimum-norm least-squares self-energies: with one composition they just
        # reproduce the mean energy, leaving the networks the (small) deviations.
        e0 = np.linalg.lstsq(counts, [train.energy.mean()], rcond=None)[0]
        self.pot = InvariantPotential.build(elements, hidden=tuple(hidden),
                                            self_energies=e0.tolist(), seed=seed)
        self.register_buffer("numbers", torch.as_tensor(numbers)[None])

    def forward(self, pos: Tensor) -> Tensor:
        return self.pot(self.numbers.expand(pos.shape[0], -1), pos).total

    # energy-only training never needs position gradients: the AEVs are computed once.
    def cache(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        from invcalc.neighbors import pair_geometry

        with torch.no_grad():
            elem = self.pot.element_indices(self.numbers.expand(pos.shape[0], -1))
            pairs = self.pot.find_pairs(elem, pos, None)
            geo = pair_geometry(pairs, pos, None)
            return elem, self.pot.aev_computer.compute_from_neighbors(elem, pos, geo)

    def cached_energy(self, cache: tuple[Tensor, Tensor], idx: Tensor) -> Tensor:
        elem, aev = cache[0][idx], cache[1][idx]
        nn = self.pot.networks(elem, aev, atomic=True, ensemble_values=True)
        e0 = self.pot.self_energies[elem].sum(-1)
        return nn.to(torch.float64).sum(-1).mean(0) + e0


def build(kind: ModelKind, train: Dataset, cfg: TrainConfig, seed: int) -> torch.nn.Module:
    """A freshly initialised model of ``kind`` (float32 weights, seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind in ("raw", "augmented"):
            return GlobalMLP(train.numbers, "coords", cfg.hidden, train, kind == "augmented")
        if kind == "descriptor":
            return GlobalMLP(train.numbers, "sorted_inv_dist", cfg.hidden, train)
        if kind == "invariant":
            return Invariant(train.numbers, cfg.hidden, train, seed)
    raise ValueError(f"unknown model kind {kind!r}")


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- augmentation ---------------------------------------------------------------------


def _random_rotations(b: int, gen: torch.Generator) -> Tensor:
    """(b, 3, 3) Haar-random rotations from random unit quaternions."""
    q = torch.randn(b, 4, generator=gen, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=1).reshape(b, 3, 3)


def _random_permutations(numbers: np.ndarray, b: int, gen: torch.Generator) -> Tensor:
    """(b, N) permutations of identical atoms (new atom i = old atom perm[i])."""
    perm = torch.arange(len(numbers)).repeat(b, 1)
    for z in np.unique(numbers):
        where = torch.as_tensor(np.flatnonzero(numbers == z))
        order = torch.rand(b, len(where), generator=gen).argsort(dim=1)
        perm[:, where] = where[order]
    return perm


def augment(pos: Tensor, forces: Tensor, numbers: np.ndarray, gen: torch.Generator
            ) -> tuple[Tensor, Tensor]:
    """Randomly rotate (about the origin = centroid) and permute every structure."""
    b = pos.shape[0]
    rot = _random_rotations(b, gen).to(pos.dtype)
    perm = _random_permutations(numbers, b, gen)[..., None].expand(-1, -1, 3)
    pos = torch.gather(pos, 1, perm) @ rot.transpose(1, 2)
    forces = torch.gather(forces, 1, perm) @ rot.transpose(1, 2)
    return pos, forces


# ---- training and prediction --------------------------------------------------------


def train(model: torch.nn.Module, data: Dataset, cfg: TrainConfig, *, forces: bool,
          augmented: bool, seed: int) -> list[float]:
    """Adam + cosine schedule for ``cfg.steps`` minibatch steps; returns the loss history.

    Loss: mean((dE / std_E)^2) [+ force_weight * mean((dF / std_F)^2)].
    """
    gen = torch.Generator().manual_seed(seed + 7919)
    pos_all = torch.as_tensor(data.positions, dtype=torch.float32)
    e_all = torch.as_tensor(data.energy)
    f_all = torch.as_tensor(data.forces, dtype=torch.float32)
    std_e = float(data.energy.std()) or 1.0
    std_f = float(data.forces.std()) or 1.0
    use_cache = not forces and not augmented and hasattr(model, "cached_energy")
    cache = model.cache(pos_all) if use_cache else None  # type: ignore[operator]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr_final)
    n = len(data)
    bs = min(cfg.batch_size, n)
    order = torch.randperm(n, generator=gen)
    cursor, history = 0, []
    model.train()
    for _ in range(cfg.steps):
        if cursor + bs > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor:cursor + bs]
        cursor += bs
        if cache is not None:
            energy = model.cached_energy(cache, idx)  # type: ignore[operator]
            loss = ((energy - e_all[idx]) / std_e).pow(2).mean()
        else:
            pos, f_ref = pos_all[idx], f_all[idx]
            if augmented:
                pos, f_ref = augment(pos, f_ref, data.numbers, gen)
            pos = pos.clone().requires_grad_(forces)
            energy = model(pos)
            loss = ((energy - e_all[idx]) / std_e).pow(2).mean()
            if forces:
                f = -torch.autograd.grad(energy.sum(), pos, create_graph=True)[0]
                loss = loss + cfg.force_weight * ((f - f_ref) / std_f).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
    model.eval()
    return history


def predict(model: torch.nn.Module, positions: np.ndarray, chunk: int = 500
            ) -> tuple[np.ndarray, np.ndarray]:
    """Energies (M,) eV and forces (M, N, 3) eV/Å of positions (M, N, 3), as float64.

    Positions are cast to the model's dtype (float32 unless the model was ``.double()``).
    """
    dtype = next(model.parameters()).dtype
    energies, forces = [], []
    for start in range(0, len(positions), chunk):
        pos = torch.tensor(positions[start:start + chunk], dtype=dtype, requires_grad=True)
        e = model(pos)
        (g,) = torch.autograd.grad(e.sum(), pos)
        energies.append(e.detach().numpy())
        forces.append(-g.numpy().astype(np.float64))
    return np.concatenate(energies), np.concatenate(forces)
