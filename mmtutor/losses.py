"""Every loss of the book, as a small pure function with its formula.

Each takes tensors and returns a scalar to *minimise*; none touches a model, so each can be
checked against a hand computation (tests/test_losses.py does, for every one).

GAN (Goodfellow et al. 2014; the article's section 4). The discriminator outputs a *logit*
a, D = sigmoid(a), and the logarithms become softplus terms:
-log sigmoid(a) = softplus(-a), -log(1 - sigmoid(a)) = softplus(a).

* ``discriminator_loss`` -- the article's L_D (``kind="bce"``) or the hinge loss (Lim & Ye
  2017), with GAN-INT-CLS's mismatched pairs (Reed et al. 2016);
* ``generator_loss``     -- the article's saturating L_G, the non-saturating fix, or hinge;
* ``diversity_loss``     -- the mode-seeking term (MSGAN, Mao et al. 2019; DSGAN, Yang et al. 2019);
* ``attribute_loss``     -- an auxiliary classifier's cross-entropy per attribute (AC-GAN, Odena et al. 2017);
* ``unstated_loss``      -- for what a caption leaves out: the images drawn for one caption should
  show each value as often as the data does, each image showing one (the information-maximisation
  loss of Krause et al. 2010 and Hu et al. 2017, per caption, with the data's shares as its target).

Contrastive alignment (CLIP, Radford et al. 2021; InfoNCE, van den Oord et al. 2018):
``clip_loss``.

VAE (Kingma & Welling 2014): ``gaussian_kl`` and ``elbo_loss``.

Diffusion (Ho et al. 2020; Salimans & Ho 2022 for v; Hang et al. 2023 for min-SNR):
``diffusion_loss`` and ``min_snr_weight``.

Captioning (Vinyals et al. 2015): ``caption_loss``, next-token cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import checks


# ======================================================================================
# GAN
def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, mismatch: torch.Tensor | None = None,
                       kind: str = "bce", mismatch_weight: float = 0.5) -> torch.Tensor:
    """The discriminator's loss, to be *minimised*.

    kind="bce" is the article's L_D = -E[log D(x, t)] - E[log(1 - D(G(z, t), t))].
    kind="hinge" is E[max(0, 1 - real)] + E[max(0, 1 + fake)].
    With ``mismatch`` logits (real images, wrong captions) the "fake" part becomes
    (1 - w) * fake term + w * mismatch term, w = mismatch_weight (GAN-INT-CLS: w = 1/2).
    """
    checks.choice(kind, "discriminator loss", ("bce", "hinge"))
    if kind == "bce":
        real_term, fake_term = F.softplus(-real).mean(), F.softplus(fake).mean()
        mis_term = F.softplus(mismatch).mean() if mismatch is not None and mismatch.numel() else None
    else:
        real_term, fake_term = F.relu(1 - real).mean(), F.relu(1 + fake).mean()
        mis_term = F.relu(1 + mismatch).mean() if mismatch is not None and mismatch.numel() else None
    if mis_term is None:
        return real_term + fake_term
    return real_term + (1 - mismatch_weight) * fake_term + mismatch_weight * mis_term


def generator_loss(fake: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """The generator's loss, to be *minimised*.

    "saturating":    the article's L_G = E[log(1 - D(G(z, t), t))]. Its gradient vanishes
                     when D confidently rejects the fakes -- i.e. early in training.
    "nonsaturating": -E[log D(G(z, t), t)], Goodfellow et al.'s fix: same fixed point,
                     strong gradients when G is bad.
    "hinge":         -E[D logit].
    """
    checks.choice(kind, "generator loss", ("saturating", "nonsaturating", "hinge"))
    if kind == "saturating":
        return -F.softplus(fake).mean()          # log(1 - sigmoid(a)) = -softplus(a)
    if kind == "nonsaturating":
        return F.softplus(-fake).mean()          # -log(sigmoid(a)) = softplus(-a)
    return -fake.mean()


def diversity_loss(a: torch.Tensor, b: torch.Tensor, za: torch.Tensor, zb: torch.Tensor,
                   target: float | torch.Tensor) -> torch.Tensor:
    """Mode-seeking regulariser, one term per pair (MSGAN, Mao et al. 2019; clamped as in DSGAN).

    a[i] = G(za[i], t_i) and b[i] = G(zb[i], t_i) are two images for the same caption made
    from different noise. ratio_i = mean|a_i - b_i| / mean|za_i - zb_i| is how far the image
    moves per unit of noise; a generator that ignores z has ratio 0 (mode collapse). The loss
    mean_i max(0, target - ratio_i) / target pushes each pair's ratio up to ``target`` -- the
    same ratio measured on pairs of real images of one caption -- and no further, so diversity
    is not bought with garbage. ``target`` may differ per pair (a (P,) tensor): a caption that
    leaves the size out allows more spread than one that names it. (A mean over pairs, so a
    batch split across processes gives the same loss as the whole batch.)"""
    if len(a) == 0:
        raise ValueError("diversity_loss needs at least one pair of images")
    image_dist = (a - b).abs().flatten(1).mean(1)                  # (P,)
    noise_dist = (za - zb).abs().flatten(1).mean(1)                # (P,)
    return (F.relu(target - image_dist / noise_dist) / target).mean()


def attribute_loss(logits: torch.Tensor, targets: torch.Tensor, n_values: tuple[int, ...]) -> torch.Tensor:
    """Cross-entropy of an attribute classifier, averaged over attributes (AC-GAN, Odena et al.
    2017, with one classifier per attribute).

    ``logits`` (B, sum(n_values)) hold one block of scores per attribute, ``targets`` (B, A)
    the value of each attribute or -1 where it is not known (a caption that leaves it out):
    each attribute's term is the mean of -log softmax(block)[target] over the rows that know it;
    attributes no row knows are left out of the average.
    """
    if logits.shape[1] != sum(n_values) or targets.shape[1] != len(n_values):
        raise ValueError(f"attribute_loss: {len(n_values)} attributes with {sum(n_values)} values in all, got "
                         f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
    terms = [F.cross_entropy(block, t, ignore_index=-1)
             for block, t in zip(logits.split(list(n_values), dim=1), targets.unbind(1)) if (t >= 0).any()]
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


def unstated_loss(logits: torch.Tensor, unstated: torch.Tensor, n_values: tuple[int, ...],
                  shares: list[torch.Tensor], groups: torch.Tensor | None = None) -> torch.Tensor:
    """Spread what a caption leaves out as the data does.

    ``logits`` (B, sum(n_values)) an attribute classifier's scores for B generated images,
    ``unstated`` (B, A) bool: True where image b's caption leaves attribute a out, ``shares``
    one tensor per attribute, the share of each value among real images, ``groups`` (B,) ids:
    rows with one id were drawn for one caption (None: the whole batch is one group). For every
    attribute some row leaves out, with p_b = softmax(block_b) over those rows and m_g the mean
    of group g's:

        mean_g KL(shares || m_g) + mean_b H(p_b)

    The first term asks the images of one caption to show each value as often as real images
    do -- per caption, so that drawing every box large and every star small does not pass for
    an even batch; the second asks each image to show one value clearly (without it, images
    that the classifier reads as half one value and half the other would satisfy the first).
    For two images of one caption and two values, the first term is least when they differ,
    which a generator that cannot see the other image reaches most often by drawing each value
    half the time from its noise. Attributes no row leaves out are left out of the average;
    with none at all the loss is 0.
    """
    if logits.shape[1] != sum(n_values) or unstated.shape != (logits.shape[0], len(n_values)):
        raise ValueError(f"unstated_loss: {len(n_values)} attributes with {sum(n_values)} values in all, got "
                         f"logits {tuple(logits.shape)} and unstated {tuple(unstated.shape)}")
    if len(shares) != len(n_values) or any(len(q) != n for q, n in zip(shares, n_values)):
        raise ValueError(f"unstated_loss: shares must hold one tensor per attribute with {list(n_values)} values, "
                         f"got lengths {[len(q) for q in shares]}")
    if groups is None:
        groups = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    elif groups.shape != (len(logits),):
        raise ValueError(f"unstated_loss: groups must hold one id per row ({len(logits)}), got {tuple(groups.shape)}")
    terms = []
    for block, rows, q in zip(logits.split(list(n_values), dim=1), unstated.unbind(1), shares):
        if not rows.any():
            continue
        logp = F.log_softmax(block[rows], dim=1)
        p = logp.exp()
        ids, which = torch.unique(groups[rows], return_inverse=True)
        m = torch.zeros(len(ids), p.shape[1], dtype=p.dtype, device=p.device).index_add(0, which, p)
        m = m / torch.bincount(which, minlength=len(ids)).unsqueeze(1)
        q = q.to(m)
        kl = (q * (q.clamp_min(1e-12).log() - m.clamp_min(1e-12).log())).sum(1).mean()
        terms.append(kl - (p * logp).sum(1).mean())
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


# ======================================================================================
# contrastive alignment
def clip_loss(logits: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric contrastive (InfoNCE) loss.

    logits: (N, N), logits[i, j] = s * <text_i, image_j>, s = exp(logit_scale) the inverse
    temperature. positives: optional (N, N) bool, positives[i, j] = caption i describes
    image j; the diagonal must be True. None means only the diagonal (plain CLIP: labels =
    arange(N)). With positives, the target of row i spreads evenly over its positives.
    Returns the mean of the text->image and image->text cross-entropies.
    """
    n = logits.shape[0]
    if logits.ndim != 2 or logits.shape[1] != n:
        raise ValueError(f"logits must be square (N, N), got {tuple(logits.shape)}")
    if positives is None:
        labels = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    if positives.shape != logits.shape or not positives.diagonal().all():
        raise ValueError("positives must be an (N, N) bool matrix with a True diagonal")
    p = positives.to(logits.dtype)
    t2i = -(p / p.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    i2t = -(p / p.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (t2i + i2t) / 2


# ======================================================================================
# VAE
def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) per sample, summed over latent dimensions:

        KL = 1/2 * sum_j ( mu_j^2 + sigma_j^2 - log sigma_j^2 - 1 ).

    (B, ...) -> (B,). Zero exactly when mu = 0 and sigma = 1 (the posterior is the prior)."""
    if mu.shape != logvar.shape:
        raise ValueError(f"gaussian_kl needs mu and logvar of one shape, got {tuple(mu.shape)} and "
                         f"{tuple(logvar.shape)}")
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).flatten(1).sum(1)


def elbo_loss(x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              beta: float = 1.0, sigma: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative ELBO per image, averaged over the batch, and its two parts:

        -ELBO = E_q[-log p(x | z, t)] + beta * KL(q(z | x, t) || p(z))

    with a Gaussian decoder p(x | z, t) = N(x_hat, sigma^2 I): -log p = ||x - x_hat||^2 /
    (2 sigma^2) + const (the constant, D/2 log(2 pi sigma^2) for D pixels, is dropped). The
    expectation over q is the one sample z the caller decoded into x_hat. beta = 1 is the ELBO
    proper; beta != 1 the beta-VAE (Higgins et al. 2017). Returns (loss, reconstruction term,
    KL term), all scalars."""
    if x.shape != x_hat.shape:
        raise ValueError(f"elbo_loss needs x and x_hat of one shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    checks.number(sigma, "sigma", low=0.0, low_open=True)
    checks.number(beta, "beta", low=0.0)
    recon = (x - x_hat).pow(2).flatten(1).sum(1) / (2 * sigma ** 2)      # (B,)
    kl = gaussian_kl(mu, logvar)                                         # (B,)
    return (recon + beta * kl).mean(), recon.mean(), kl.mean()


# ======================================================================================
# diffusion
def min_snr_weight(snr: torch.Tensor, gamma: float | None, prediction: str = "eps") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for a loss written in the prediction's own units.

    Hang et al. weight the x0-space error ||x0 - x0_hat||^2 by min(SNR, gamma): no time step with
    a high signal-to-noise ratio (little noise, an easy task) may dominate. A squared error in
    eps is SNR times the squared x0 error (eps - eps_hat = sqrt(SNR) (x0_hat - x0)), and one in
    v is (SNR + 1) times it, so the same weighting reads

        eps: min(SNR, gamma) / SNR,    v: min(SNR, gamma) / (SNR + 1),    x0: min(SNR, gamma).

    ``gamma=None``: all ones (Ho et al.'s unweighted L_simple)."""
    checks.choice(prediction, "prediction", ("eps", "v", "x0"))
    if gamma is None:
        return torch.ones_like(snr)
    gamma = checks.number(gamma, "gamma", low=0.0, low_open=True)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr.clamp(min=1e-8)
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean squared error between the network's prediction (eps, v or x0) and its
    target, per image then averaged: mean_b w_b * mean ||pred_b - target_b||^2 (Ho et al.'s
    L_simple when w = 1)."""
    if prediction.shape != target.shape:
        raise ValueError(f"diffusion_loss needs prediction and target of one shape, got "
                         f"{tuple(prediction.shape)} and {tuple(target.shape)}")
    per_image = (prediction - target).pow(2).flatten(1).mean(1)        # (B,)
    if weight is not None:
        per_image = per_image * weight
    return per_image.mean()


# ======================================================================================
# captioning
def caption_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Next-token cross-entropy under teacher forcing: logits (B, L, V) predict targets (B, L);
    padding positions (targets == pad_id) do not count."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)


__all__ = ["discriminator_loss", "generator_loss", "diversity_loss", "attribute_loss", "unstated_loss", "clip_loss",
           "gaussian_kl", "elbo_loss", "min_snr_weight", "diffusion_loss", "caption_loss"]
