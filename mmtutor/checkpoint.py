"""Checkpoints: a ``state_dict`` plus a plain config, never a pickled object.

A file holds ``{"format": "mmtutor/1", "kind": ..., "config": {...}, "state": {name: state_dict},
...extra}`` and is read with ``torch.load(weights_only=True)``, so loading a file cannot run
code. Everything that can be wrong with a file gets a sentence that names it: not a file,
not readable (truncated, corrupted, not a checkpoint), the wrong kind of model, an entry
missing, a config field that differs from the model it is loaded into, or weights that do
not fit the config stored beside them (an edited config).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import torch

FORMAT = "mmtutor/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupted, truncated, incomplete, or of another config."""


def writable_path(path, what: str = "output file") -> Path:
    """A path a file can be written to (its folder is created); a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a directory; give a file name, e.g. {str(path / 'out.pt')!r}")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the folder for {what} {str(path)!r}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {what} {str(path)!r}: the folder {str(parent)!r} is not writable")
    return path


def save(path, kind: str, config: dict, state: dict[str, dict], **extra) -> Path:
    """Write a checkpoint atomically (a crash mid-write never leaves a half-written file)."""
    path = writable_path(path, "checkpoint")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # two processes saving at once never share it
    torch.save({"format": FORMAT, "kind": kind, "config": config, "state": state, **extra}, tmp)
    os.replace(tmp, path)
    return path


def load(path, kind: str | None = None, map_location=None, expect_config: dict | None = None,
         require=("config", "state")) -> dict:
    """Read a checkpoint with ``weights_only=True``; raise CheckpointError naming what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file: zip, pickle, EOF, index, key errors
        reason = str(e).split("\n")[0][:200]   # first line only: torch's advice to use weights_only=False is unsafe
        raise CheckpointError(f"{path} is not a readable mmtutor checkpoint (truncated, corrupted, or not a "
                              f"checkpoint at all): {type(e).__name__}: {reason}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mmtutor checkpoint (no 'format': '{FORMAT}' entry)")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {ckpt.get('kind')!r} checkpoint, expected {kind!r}")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it has no {', '.join(map(repr, missing))} "
                              f"entr{'y' if len(missing) == 1 else 'ies'} (it holds {', '.join(sorted(ckpt))})")
    if "config" in require and not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: its 'config' entry is a {type(ckpt['config']).__name__}, not a dict")
    if "state" in require and not isinstance(ckpt["state"], dict):
        raise CheckpointError(f"{path}: its 'state' entry is a {type(ckpt['state']).__name__}, not a dict")
    if expect_config is not None:
        check_config(ckpt["config"], expect_config, source=str(path))
    return ckpt


def check_config(found: dict, expected: dict, source: str = "checkpoint") -> None:
    """Raise CheckpointError naming the first field where two configs differ."""
    for key in sorted(set(found) | set(expected)):
        if key not in found:
            raise CheckpointError(f"{source} has no config field {key!r} (expected {expected[key]!r})")
        if key not in expected:
            raise CheckpointError(f"{source} has an unexpected config field {key!r}={found[key]!r}")
        if isinstance(found[key], dict) and isinstance(expected[key], dict):
            check_config(found[key], expected[key], source=f"{source} [{key}]")
        elif _plain(found[key]) != _plain(expected[key]):
            raise CheckpointError(f"{source} was saved with {key}={found[key]!r}, "
                                  f"but this model has {key}={expected[key]!r}")


def _plain(x):
    return list(map(_plain, x)) if isinstance(x, (list, tuple)) else x


def dataclass_from_dict(cls, data, source: str = "checkpoint"):
    """Rebuild a config dataclass; unknown or missing fields, and invalid values, are errors
    that name the field."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: config must be a dict, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"{source}: config has unknown fields for {cls.__name__}: {sorted(unknown)}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: its config is not valid for {cls.__name__}: {e}") from None


def load_state(module: torch.nn.Module, state, source: str, what: str = "weights") -> None:
    """``module.load_state_dict(state)``, with a sentence instead of torch's dump when the weights
    do not fit (the config stored in the file was edited, or the file mixes two models)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: its {what} are a {type(state).__name__}, not a state_dict")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{source}: its {what} do not fit this model: missing {missing[:3]}"
                              f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                              f"{' ...' if len(unexpected) > 3 else ''}")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: its {what} entry {k!r} is not a tensor")
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{source}: its {what} do not fit the config stored with them: {k!r} has shape "
                f"{tuple(v.shape)} in the file but {tuple(own[k].shape)} in a model built from that config "
                "(was the config in the file edited, or are the weights from another model?)")
    module.load_state_dict(state)


__all__ = ["CheckpointError", "FORMAT", "save", "load", "check_config", "dataclass_from_dict", "load_state",
           "writable_path"]
