"""Fine-tuning that stays near the pretrained weights ``w0``: L2-SP and TPGM (``docs/methods.md``).

* **L2-SP** (Li, Grandvalet, Davoine, ICML 2018, "Explicit inductive bias for transfer learning with
  convolutional networks"): the loss gains ``alpha/2 ||w - w0||^2`` over the backbone and
  ``beta/2 ||w_head||^2`` over the head. It is added to the loss, not folded into weight decay, so the
  gradient is exactly ``alpha (w - w0)`` / ``beta w_head`` under every optimizer.
* **TPGM** (Tian et al., CVPR 2023, "Trainable Projected Gradient Method for Robust Fine-Tuning"):
  every backbone parameter tensor ``l`` is kept in a ball around ``w0``:
  ``w_l <- w0_l + min(1, gamma_l / ||w_l - w0_l||) (w_l - w0_l)``, with radii ``gamma_l`` learned by
  gradient descent on the ID validation loss of the projected model.

Both are :class:`~lpft.vision.engine.TrainHook` objects; ``w0`` is the model the engine starts from (the
pretrained backbone; the head is left out of both ``w0`` sets).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from lpft.vision import distributed as D
from lpft.vision.engine import TrainHook

__all__ = ["L2SP", "TPGM", "distances", "project_"]

HEAD = "head"


def _is_head(name: str) -> bool:
    return name == HEAD or name.startswith(HEAD + ".")


class L2SP(TrainHook):
    """L2-SP: ``alpha/2 sum_backbone ||w - w0||^2 + beta/2 sum_head ||w||^2`` added to the loss once per step.

    Args:
        alpha: strength of the pull of the backbone towards its pretrained weights (``>= 0``).
        beta: L2 strength on the head's parameters, weight and bias (``>= 0``).
    """

    name = "l2sp"

    def __init__(self, alpha: float, beta: float = 0.0):
        if not (alpha >= 0 and beta >= 0):
            raise ValueError(f"L2-SP needs alpha >= 0 and beta >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.w0: dict[str, torch.Tensor] = {}

    def setup(self, model: nn.Module) -> None:
        self.w0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and not _is_head(n)}

    def loss(self, model: nn.Module) -> torch.Tensor | None:
        sp: list[torch.Tensor] = []
        head: list[torch.Tensor] = []
        for n, p in model.named_parameters():
            if self.alpha and n in self.w0:
                sp.append((p.float() - self.w0[n].float()).pow(2).sum())
            elif self.beta and _is_head(n) and p.requires_grad:
                head.append(p.float().pow(2).sum())
        terms = [c / 2 * torch.stack(t).sum() for c, t in ((self.alpha, sp), (self.beta, head)) if t]
        return torch.stack(terms).sum() if terms else None


# --- TPGM -----------------------------------------------------------------------------------------------
def distances(model: nn.Module, w0: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``||w_l - w0_l||`` (fp32 scalar tensors) for every parameter name in ``w0``."""
    params = dict(model.named_parameters())
    return {n: (params[n].detach().float() - w.float()).norm() for n, w in w0.items()}


@torch.no_grad()
def project_(model: nn.Module, w0: dict[str, torch.Tensor], radii: dict[str, torch.Tensor | float]) -> None:
    """In place: ``w_l <- w0_l + min(1, gamma_l / ||w_l - w0_l||) (w_l - w0_l)`` for every name in ``radii``.

    A parameter already inside its ball (or on it) is left bit-for-bit unchanged.
    """
    params = dict(model.named_parameters())
    for n, gamma in radii.items():
        p, ref = params[n], w0[n]
        d = (p.float() - ref.float()).norm()
        gamma = torch.as_tensor(gamma, dtype=torch.float32, device=d.device)
        if d > gamma:
            p.copy_((ref.float() + (gamma / d) * (p.float() - ref.float())).to(p.dtype))


class TPGM(TrainHook):
    """TPGM: per-tensor projection onto balls around ``w0`` whose radii are learned on ID validation data.

    At the end of every ``frequency``-th epoch: every radius starts at the current distance,
    ``gamma_l = s_l ||w_l - w0_l||`` with ``s_l = 1``; ``steps`` steps of Adam (learning rate ``lr``) on the
    cross-entropy of the projected model (eval mode) over global batches of ``val_set`` fit ``s`` (kept in
    [0, 1], as the official code clips each radius to the current distance); then the weights are projected
    and training continues from them. Under torchrun every rank takes its share of each validation batch and
    the radius gradient is all-reduced, so every rank projects identically. The update is a pure function of
    the weights and ``(seed, epoch)``, so a resumed run repeats it exactly (the last radii are kept in the
    checkpoint only as a record).

    Args:
        val_set: held-out ID data (``id_val`` with the eval transform).
        batch_size: global batch of the radius steps.
        device: this rank's device.
        steps / lr / frequency: radius steps per update, their Adam learning rate, epochs between updates.
        num_workers / precision / seed: as for training (``seed`` orders the validation batches).
    """

    name = "tpgm"

    def __init__(self, val_set: Dataset, *, batch_size: int, device: torch.device, steps: int = 200,
                 lr: float = 1e-2, frequency: int = 1, num_workers: int = 0, precision: str = "fp32",
                 seed: int = 0):
        if steps < 1 or frequency < 1 or not lr > 0 or batch_size < 1:
            raise ValueError(f"TPGM needs steps, frequency and batch_size >= 1 and lr > 0; got steps={steps}, "
                             f"frequency={frequency}, batch_size={batch_size}, lr={lr}")
        if len(val_set) == 0:
            raise ValueError("TPGM learns its radii on the ID validation split, which is empty")
        self.val_set, self.batch_size, self.device = val_set, int(batch_size), device
        self.steps, self.lr, self.frequency = int(steps), float(lr), int(frequency)
        self.num_workers, self.precision, self.seed = num_workers, precision, seed
        self.w0: dict[str, torch.Tensor] = {}
        self.last_radii: dict[str, float] = {}

    def setup(self, model: nn.Module) -> None:
        self.w0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and not _is_head(n)}
        if not self.w0:
            raise ValueError("TPGM constrains backbone parameters, but none of them trains")

    def state_dict(self) -> dict[str, Any]:
        return {"radii": dict(self.last_radii)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_radii = dict(state.get("radii", {}))

    def end_epoch(self, model: nn.Module, epoch: int) -> dict[str, Any] | None:
        if epoch % self.frequency:
            return None
        radii, loss = self.learn(model, epoch)
        before = distances(model, self.w0)
        project_(model, self.w0, radii)
        self.last_radii = {n: float(g) for n, g in radii.items()}
        ratios = [min(1.0, float(radii[n]) / float(d)) if float(d) > 0 else 1.0 for n, d in before.items()]
        return {"tpgm_val_loss": loss, "tpgm_mean_ratio": sum(ratios) / len(ratios)}

    def learn(self, model: nn.Module, epoch: int) -> tuple[dict[str, torch.Tensor], float]:
        """Fit the radii on validation batches (class docstring); returns them and the last step's mean loss."""
        from torch.func import functional_call

        params = dict(model.named_parameters())
        deltas = {n: params[n].detach() - w for n, w in self.w0.items()}
        d = torch.stack([v.float().norm() for v in deltas.values()])
        s = torch.ones(len(d), device=d.device, requires_grad=True)
        opt = torch.optim.Adam([s], lr=self.lr)
        was_training = model.training
        model.eval()  # the official code evaluates the projected copy in eval mode
        last = float("nan")
        try:
            for global_n, x, y, weight in self._batches(epoch):
                # s stays in [0, 1] by projected steps (a clamp here would stop the gradient at s = 1)
                proj = {n: w + r.to(w.dtype) * deltas[n] for r, (n, w) in zip(s.unbind(), self.w0.items())}
                with D.autocast(self.device, self.precision):
                    logits = functional_call(model, proj, (x,), strict=False)
                ce = F.cross_entropy(logits.float(), y, reduction="sum") * weight
                (grad,) = torch.autograd.grad(ce / global_n, [s])
                total = D.all_reduce_sum(torch.cat([grad.double().cpu(), ce.detach().double().cpu().reshape(1)]),
                                         self.device)  # the gradient of the mean loss over the global batch
                s.grad = total[:-1].to(s.dtype).to(s.device)
                opt.step()
                with torch.no_grad():
                    s.clamp_(0.0, 1.0)
                last = float(total[-1]) / global_n
        finally:
            model.train(was_training)
        return dict(zip(self.w0, (s.detach() * d).unbind())), last

    def _batches(self, epoch: int):
        """``(global batch size, images, labels, weight)`` of this rank's share of ``steps`` global batches."""
        from lpft.vision.data.loader import ImageLoader, collate_images

        rank, world = D.rank_world()
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch + 7_919)
        plan: list[tuple[int, list[int], int]] = []
        while len(plan) < self.steps:  # as many passes over the split as the steps need, reshuffled each pass
            plan += [(g, micros[0], first) for g, micros, first in
                     D.rank_micro_batches(len(self.val_set), self.batch_size, generator=gen, rank=rank, world=world)]
        plan = plan[:self.steps]
        # a rank without an image of a (tiny, final) batch runs one image with weight 0, like the engine
        loader = ImageLoader(self.val_set, batch_sampler=[idx if idx else [first] for _, idx, first in plan],
                             num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                             collate_fn=collate_images)
        for (g, idx, _), (x, y) in zip(plan, loader):
            yield g, D.to_device(x, self.device), torch.as_tensor(y).to(self.device), 1.0 if idx else 0.0
