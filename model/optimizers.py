"""Optimizers, chosen by ``train.optimizer``; each returns a list of torch optimizers the one training loop
steps, schedules, saves and restores together (exact resume works per optimizer).

- ``adamw``            torch AdamW (fused kernels on CUDA and CPU); no weight decay on norms and biases.
- ``paged_adamw_8bit`` bitsandbytes PagedAdamW8bit: 8-bit state paged between GPU and host memory. CUDA only.
- ``muon``             torch.optim.Muon on the hidden 2-D weights (attention and MLP projections inside the decoder
                       layers) + AdamW on everything else (embeddings, lm_head, norms, biases). The split is
                       reported as a share of parameters at start-up.

An optimizer that cannot run on the current device fails at start-up, saying why and what to use instead.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("dojo.optim")
OPTIMIZERS = ("adamw", "paged_adamw_8bit", "muon")
# torch's fused AdamW kernels (one kernel for every tensor instead of a Python loop): CUDA, and CPU since torch
# 2.4 — on the tiny model a CPU step of the optimizer takes 2.2 ms fused against 8.6 ms looped.
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def _adamw_groups(named, weight_decay: float) -> list[dict]:
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """Muon's share: 2-D weights inside the decoder layers (q/k/v/o and gate/up/down projections)."""
    return param.ndim == 2 and ".layers." in name and "embed" not in name and "lm_head" not in name


def build(model, train_cfg, device: str) -> tuple[list[torch.optim.Optimizer], dict]:
    """The optimizer(s) for ``model``'s trainable parameters, and a split report for the ledger and log."""
    name = train_cfg.optimizer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    betas = (train_cfg.adam_beta1, train_cfg.adam_beta2)
    if name == "adamw":
        opt = torch.optim.AdamW(_adamw_groups(named, train_cfg.weight_decay), lr=train_cfg.learning_rate,
                                betas=betas, fused=device in FUSED_ADAMW_DEVICES)
        return [opt], {"optimizer": "adamw", "adamw_share": 1.0, "trainable_params": total}
    if name == "paged_adamw_8bit":
        if device != "cuda":
            raise ValueError("config train.optimizer: paged_adamw_8bit needs a CUDA GPU (bitsandbytes pages its "
                             "8-bit state between GPU and host memory); on this machine use adamw or muon")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("config train.optimizer: paged_adamw_8bit needs the bitsandbytes package, which is not "
                             "installed; install the GPU extra (pip install -e '.[gpu]') or use adamw or muon") \
                from None

        opt = bnb.optim.PagedAdamW8bit(_adamw_groups(named, train_cfg.weight_decay), lr=train_cfg.learning_rate,
                                       betas=betas)
        return [opt], {"optimizer": "paged_adamw_8bit", "adamw_share": 1.0, "trainable_params": total}
    if name == "muon":
        hidden = [(n, p) for n, p in named if is_hidden_matrix(n, p)]
        rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
        if not hidden:
            raise ValueError("config train.optimizer: muon found no hidden 2-D weights to optimize (LoRA adapters "
                             "or an unusual architecture?); use adamw")
        muon = torch.optim.Muon([p for _, p in hidden], lr=train_cfg.muon_lr, weight_decay=train_cfg.weight_decay,
                                momentum=train_cfg.muon_momentum)
        opts = [muon]
        if rest:
            opts.append(torch.optim.AdamW(_adamw_groups(rest, train_cfg.weight_decay), lr=train_cfg.learning_rate,
                                          betas=betas, fused=device in FUSED_ADAMW_DEVICES))
        share = sum(p.numel() for _, p in hidden) / total
        report = {"optimizer": "muon", "muon_share": share, "adamw_share": 1.0 - share, "trainable_params": total,
                  "muon_tensors": len(hidden), "adamw_tensors": len(rest)}
        log.info("muon: %.1f%% of %d trainable parameters (%d hidden matrices); adamw: %.1f%% (embeddings, head, "
                 "norms, biases)", 100 * share, total, len(hidden), 100 * (1 - share))
        return opts, report
    raise ValueError(f"config train.optimizer: {name!r} is not allowed; use one of {', '.join(OPTIMIZERS)}")
