"""The tangent kernel taken over the backbone's last block as well as LEAD's random head.

LEAD (Hu et al., CVPR 2024; docs/method.md, step 3) takes each class's mean tangent-kernel eigenvalue
lambda_k = mean_u ||grad_theta sum_j h_j(x_u)||^2 over the parameters theta of a random head on frozen
features. Here theta also holds the parameters of the backbone's last block (timm's last
``feature_info`` module and everything after it but the classifier), so the kernel sees how fast the
network itself can move its features, which the head alone cannot: a ReLU head's kernel diagonal
depends only on the norm of its input (docs/benchmarks.md, diagnosis).

Per-sample gradients come from one vmapped backward pass per class (``torch.autograd.grad`` with
``is_grads_batched``; BatchNorm in eval mode keeps samples independent); the head's share is the same closed form as :func:`lead.scoring.lead.kernel_diagonal`.
"""

from __future__ import annotations

import numpy as np

from lead.errors import InputError
from lead.preprocess import forward as model_forward
from lead.scoring.lead import random_head


def last_block_parameters(model) -> list[tuple[str, object]]:
    """(name, parameter) of the backbone's last block: the module named by ``model.feature_info[-1]``
    and every parameter registered after it, except the classifier's.

    Raises:
        InputError: the model has no ``feature_info`` (not a timm model).
    """
    info = getattr(model, "feature_info", None)
    if not info:
        raise InputError("backbone kernel: the model must be a timm model with feature_info; got none.")
    last = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
    classifier = {id(p) for p in model.get_classifier().parameters()}
    out, seen = [], False
    for name, p in model.named_parameters():
        if name == last or name.startswith(last + "."):
            seen = True
        if seen and id(p) not in classifier and p.requires_grad:
            out.append((name, p))
    if not out:
        raise InputError(f"backbone kernel: no parameters found from module {last!r} on.")
    return out


def backbone_class_kernel(model, x, codes: np.ndarray, n_classes: int, *, head: tuple[int, ...] = (1024, 2048),
                          seed: int = 0, standardize: bool = True, n_per_class: int = 64) -> dict[str, np.ndarray]:
    """Per-class mean kernel diagonal over the last block and the random head.

    Args:
        model: a timm model (``forward_features``, ``forward_head(pre_logits=True)``: the one forward pass,
            :func:`lead.preprocess.forward`); put in eval mode.
        x: input tensor (N, 3, H, W), float32, preprocessed for the model.
        codes: labels 0..K-1, shape (N,).
        head, seed: the random head of :func:`lead.scoring.lead.random_head` (float32 here).
        standardize: z-score the pre-logit features with their mean and (population) std over all N samples,
            constant features to 0, as LEAD does, before the head; the constants are not differentiated.
        n_per_class: first samples per class (in the given order) that enter the mean.
    Returns:
        ``{"head": (K,), "backbone": (K,), "total": (K,)}`` float64: the head's and the last block's share
        of lambda_k and their sum.
    """
    import torch

    model.eval()
    params = last_block_parameters(model)
    with torch.inference_mode():
        feats = torch.cat([model_forward(model, x[i:i + 128], logits=False)[0] for i in range(0, len(x), 128)])
    f64 = feats.double()
    mu = f64.mean(0) if standardize else torch.zeros(feats.shape[1], dtype=torch.float64)
    sd = f64.std(0, unbiased=False) if standardize else torch.ones(feats.shape[1], dtype=torch.float64)
    sd[sd == 0] = 1.0  # constant features become 0, as in lead.scoring._validate.standardize
    mu, sd = mu.float(), sd.float()
    layers = [(torch.from_numpy(w).float(), torch.from_numpy(b).float())
              for w, b in random_head(feats.shape[1], n_classes, head, seed=seed)]
    for _, w in layers:
        w.requires_grad_(False)
    head_params = []
    for w, b in layers:
        head_params += [w.clone().requires_grad_(True), b.clone().requires_grad_(True)]

    def forward(xb):
        """Summed head logits of each sample, shape (B,)."""
        z = (model_forward(model, xb, logits=False)[0] - mu) / sd
        a = z
        for i in range(len(layers)):
            a = a @ head_params[2 * i].T + head_params[2 * i + 1]
            if i < len(layers) - 1:
                a = torch.relu(a)
        return a.sum(dim=1)

    sums = {"head": np.zeros(n_classes), "backbone": np.zeros(n_classes)}
    counts = np.zeros(n_classes)
    backbone = [p for _, p in params]
    nb = len(backbone)
    for k in range(n_classes):
        idx = np.nonzero(codes == k)[0][:n_per_class]
        if idx.size == 0:
            continue
        out = forward(x[idx])
        # samples are independent (BatchNorm in eval mode), so one vmapped backward over the rows of the
        # identity gives each sample's own gradient; a loop of single backward passes where vmap fails
        try:
            grads = torch.autograd.grad(out, backbone + head_params, grad_outputs=torch.eye(len(idx)),
                                        is_grads_batched=True)
            sq = [(g.double() ** 2).flatten(1).sum(1) for g in grads]
        except RuntimeError:
            sq = None
        if sq is None:
            per = [torch.autograd.grad(out[j], backbone + head_params, retain_graph=True) for j in range(len(idx))]
            sq = [torch.stack([(g[m].double() ** 2).sum() for g in per]) for m in range(len(per[0]))]
        sums["backbone"][k] += float(sum(v.sum() for v in sq[:nb]))
        sums["head"][k] += float(sum(v.sum() for v in sq[nb:]))
        counts[k] += len(idx)
    out = {name: v / np.maximum(counts, 1) for name, v in sums.items()}
    out["total"] = out["head"] + out["backbone"]
    return out
