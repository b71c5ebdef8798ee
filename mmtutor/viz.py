"""Pictures: image grids with captions, training curves, similarity heatmaps, embedding maps
and attention maps, drawn with matplotlib.

Grids are tiled here rather than with ``torchvision.utils.make_grid`` (same layout): importing
torchvision imports ``torch._dynamo``, which took 5-6 s of every chapter kernel's start on a 2-core
AMD EPYC, and a chapter that trains nothing needs nothing else from it."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F


def _unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], on the CPU, float."""
    return (images.detach().float().cpu().clamp(-1, 1) + 1) / 2


def tile(x: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) -> one (C, H', W') picture: rows of ``nrow`` images (fewer if N is smaller),
    each framed by ``padding`` pixels of ``pad_value``; a single image comes back unframed.
    The layout of ``torchvision.utils.make_grid``."""
    if x.dim() != 4:
        raise ValueError(f"tile expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if n == 0:
        raise ValueError("tile got no images")
    if n == 1:
        return x[0]
    cols = min(nrow, n)
    rows = -(-n // cols)
    cell_h, cell_w = h + padding, w + padding
    grid = x.new_full((c, rows * cell_h + padding, cols * cell_w + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = r * cell_h + padding, k * cell_w + padding
        grid[:, top:top + h, left:left + w] = x[i]
    return grid


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 1, scale: int = 1) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> one (3, H', W') image in [0, 1], optionally enlarged (nearest)."""
    x = _unit(images)
    if scale > 1:
        x = F.interpolate(x, scale_factor=scale, mode="nearest")
    return tile(x, nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(images: torch.Tensor, path, nrow: int = 8, scale: int = 4) -> None:
    """Write a PNG grid (images enlarged ``scale`` times so small renders stay sharp)."""
    from PIL import Image

    grid = image_grid(images, nrow=nrow, padding=2, scale=scale)
    pixels = grid.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(str(path))


def show_grid(images: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: int = 4,
              row_labels: list[str] | None = None, width: float = 8.0, wrap: int = 30):
    """Show a grid; ``row_labels`` writes one label left of each row. Returns the axes."""
    grid = image_grid(images, nrow=nrow, padding=2, scale=scale)
    if ax is None:
        rows = -(-len(images) // nrow)
        _, ax = plt.subplots(figsize=(width, max(1.2, width * rows / nrow * 0.95)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if row_labels:
        h = grid.shape[1] / len(row_labels)
        ax.set_yticks([h * (i + 0.5) for i in range(len(row_labels))])
        ax.set_yticklabels(["\n".join(textwrap.wrap(r, wrap)) for r in row_labels], fontsize=9)
        ax.tick_params(axis="y", length=0)
    if title:
        ax.set_title(title)
    return ax


def labelled_grid(images: torch.Tensor, labels: list[str], ncols: int = 4, width: float = 9.0, wrap: int = 26,
                  title: str | None = None, scale: int = 4):
    """Images (N, 3, H, W) in [-1, 1], each with its own label underneath (wrapped), ``ncols``
    per row -- for showing captions that are too long to share a row label."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    rows = -(-len(images) // ncols)
    texts = ["\n".join(textwrap.wrap(lab, wrap)) for lab in labels]
    lines = max(t.count("\n") + 1 for t in texts)
    fontsize = 9
    label_h = lines * fontsize * 1.3 / 72 + 0.15          # inches of label under each image
    fig, axes = plt.subplots(rows, ncols, figsize=(width, rows * (width / ncols + label_h)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, text in zip(axes.flat, images, texts):
        x = _unit(img.unsqueeze(0))
        if scale > 1:
            x = F.interpolate(x, scale_factor=scale, mode="nearest")
        ax.imshow(x[0].permute(1, 2, 0).numpy(), interpolation="nearest")
        # below the image, not over its bottom edge (a title at negative y keeps its upward pad)
        ax.text(0.5, -0.02, text, transform=ax.transAxes, ha="center", va="top", fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def describe_model(model: torch.nn.Module, *inputs, depth: int = 1) -> str:
    """A table of a network's layers: name, output shape and parameters, from one forward pass
    on ``inputs`` (forward hooks on the children down to ``depth``). Returns the table as text."""
    rows, hooks = [], []

    def shape_of(out):
        if isinstance(out, torch.Tensor):
            return "x".join(map(str, out.shape))
        if isinstance(out, (tuple, list)):
            return ", ".join(shape_of(o) for o in out)
        return type(out).__name__

    def visit(module, prefix, level):
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            inner = [n for n, _ in child.named_children() if n != "parametrizations"]   # spectral norm is not a layer
            if level < depth and inner:
                visit(child, full, level + 1)
            else:
                n = sum(p.numel() for p in child.parameters())
                hooks.append(child.register_forward_hook(
                    lambda m, i, o, full=full, n=n, kind=type(child).__name__: rows.append((full, kind, shape_of(o), n))))

    visit(model, "", 0)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    total = sum(p.numel() for p in model.parameters())
    lines = [f"{'layer':28s} {'kind':22s} {'output shape':>18s} {'parameters':>11s}"]
    lines += [f"{name[:28]:28s} {kind[:22]:22s} {shape:>18s} {n:>11,}" for name, kind, shape, n in rows]
    lines.append(f"{'total':28s} {'':22s} {'':>18s} {total:>11,}")
    return "\n".join(lines)


def caption_rows(images: torch.Tensor, captions: list[str], n_per_caption: int, title: str | None = None,
                 ax=None, width: float = 9.0):
    """Caption-major images (n_per_caption per caption) as one labelled row per caption."""
    if len(images) != len(captions) * n_per_caption:
        raise ValueError(f"expected {len(captions)} x {n_per_caption} images, got {len(images)}")
    return show_grid(images, nrow=n_per_caption, title=title, ax=ax, row_labels=captions, width=width)


def plot_history(history: dict, keys=("d_loss", "g_loss"), ax=None, title: str | None = None,
                 x: str = "step", smooth: int = 1):
    """Training curves from a history dict (lists keyed by name); ``smooth`` = moving-average window."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    xs = history[x]
    for k in keys:
        ys = torch.tensor(history[k], dtype=torch.float)
        if smooth > 1 and len(ys) >= smooth:
            ys = torch.nn.functional.avg_pool1d(ys.view(1, 1, -1), smooth, stride=1).view(-1)
            ax.plot(xs[smooth - 1:], ys.tolist(), label=k)
        else:
            ax.plot(xs, ys.tolist(), label=k)
    ax.set_xlabel(x)
    ax.legend()
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return ax


def similarity_heatmap(sim: torch.Tensor, row_labels: list[str], col_labels: list[str] | None = None,
                       ax=None, title: str | None = None):
    """A (rows, cols) similarity matrix with labelled rows (and columns)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(0.5 * sim.shape[1] + 3, 0.4 * sim.shape[0] + 1.5))
    im = ax.imshow(sim.detach().float().cpu().numpy(), cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels(row_labels, fontsize=8)
    if col_labels is not None:
        ax.set_xticks(range(len(col_labels)))
        ax.set_xticklabels(col_labels, fontsize=8, rotation=90)
    plt.colorbar(im, ax=ax, fraction=0.03)
    if title:
        ax.set_title(title)
    return ax


def pca_2d(*embeddings: torch.Tensor) -> list[torch.Tensor]:
    """Project several (N_i, D) sets onto the first two principal axes of their union."""
    allx = torch.cat([e.detach().float().cpu() for e in embeddings])
    mean = allx.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(allx - mean, q=2, center=False)
    return [(e.detach().float().cpu() - mean) @ v for e in embeddings]


def embedding_map(text_emb: torch.Tensor, image_emb: torch.Tensor, labels: list[str], ax=None,
                  title: str | None = None, separate_labels: bool = True):
    """Texts (crosses) and images (dots) of the joint space in 2-D, coloured by label.

    ``separate_labels=True`` projects onto the two directions along which the labels' mean
    embeddings differ most (PCA of the class means, a linear map); False uses plain PCA."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    t, v = text_emb.detach().float().cpu(), image_emb.detach().float().cpu()
    names = sorted(set(labels))
    if separate_labels:
        both, lab2 = torch.cat([t, v]), labels + labels
        means = torch.stack([both[[i for i, lab in enumerate(lab2) if lab == n]].mean(0) for n in names])
        center = both.mean(0, keepdim=True)
        _, _, vt = torch.linalg.svd(means - means.mean(0, keepdim=True), full_matrices=False)
        t2, i2 = (t - center) @ vt[:2].t(), (v - center) @ vt[:2].t()
    else:
        t2, i2 = pca_2d(t, v)
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(names):
        idx = torch.tensor([i for i, lab in enumerate(labels) if lab == name])
        ax.scatter(i2[idx, 0], i2[idx, 1], s=14, color=cmap(k % 10), alpha=0.5, label=f"{name}")
        ax.scatter(t2[idx, 0], t2[idx, 1], s=50, marker="x", color=cmap(k % 10))
    ax.legend(fontsize=7, loc="best", title="dots: images, x: captions", title_fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def attention_maps(weights: torch.Tensor, tokens: list[str], image: torch.Tensor | None = None,
                   title: str | None = None, ncols: int = 6, panel: float = 1.5):
    """(H*W, L) attention of image positions over words -> one heatmap per word (plus the image
    first), ``ncols`` panels per row so that long captions stay readable."""
    hw, L = weights.shape
    side = int(round(hw ** 0.5))
    n = L + (image is not None)
    rows = -(-n // ncols)
    fig, axes = plt.subplots(rows, min(n, ncols), figsize=(panel * min(n, ncols), (panel + 0.35) * rows),
                             squeeze=False)
    flat = list(axes.flat)
    for ax in flat:
        ax.axis("off")
    if image is not None:
        flat[0].imshow(_unit(image).permute(1, 2, 0).numpy(), interpolation="nearest")
        flat[0].set_title("image", fontsize=9)
        flat = flat[1:]
    vmax = float(weights.max())
    for j in range(L):
        flat[j].imshow(weights[:, j].view(side, side).float().cpu().numpy(), cmap="magma", vmin=0, vmax=vmax)
        flat[j].set_title(tokens[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def bench_results(name: str) -> dict | None:
    """The repository's ``bench/results/<name>.json``, looked for from the folder a notebook runs
    in and every folder above it; None where there is none (Colab, a copy of one notebook)."""
    from pathlib import Path
    import json
    here = Path.cwd()
    candidates = (d / "bench" / "results" / f"{name}.json" for d in (here, *here.parents))
    path = next((p for p in candidates if p.is_file()), None)
    return None if path is None else json.loads(path.read_text())


def glue(name: str, value, display: bool = False) -> None:
    """Hand a computed number to the book's prose ({glue:text}`name` in MyST). Outside a book
    build (Colab without myst-nb) it does nothing; the printed outputs still show the value."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    _glue(name, value, display=display)


__all__ = ["bench_results", "glue", "image_grid", "save_grid", "show_grid", "labelled_grid", "describe_model", "caption_rows", "plot_history", "similarity_heatmap",
           "pca_2d", "embedding_map", "attention_maps"]
