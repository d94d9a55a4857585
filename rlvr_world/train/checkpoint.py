"""Atomic, resumable checkpoints of a training run (generic: every recipe uses these three functions).

A checkpoint is a folder ``out_dir/checkpoints/step_XXXXXXX/`` holding

* ``model.safetensors``  the model's state dict (tensors copied to CPU; shared tensors stored twice);
* ``train_state.pt``     optimizer and LR-scheduler state dicts, the step, the RNG states of torch (CPU and
                         every CUDA device), numpy's global generator and Python's ``random``, the data
                         sampler's position (whatever plain object the recipe passes) and ``extra``;
                         read back with ``torch.load(weights_only=True)`` (no pickled code);
* ``config.yaml``        the resolved run config (``config.to_yaml``), when one is given;
* ``manifest.json``      written last: step, format version, and size + SHA-256 of each file above.

Choices:

* **Atomic**: everything is written into a hidden temp folder beside the target and moved into place with
  one ``os.replace``; a crash leaves either the whole checkpoint or none (a stale temp folder is ignored by
  ``latest`` and removed by the next ``save``). ``latest`` only returns folders whose manifest exists.
* **Clear failures**: ``load`` checks the manifest (missing file, size or checksum differs: "corrupt
  checkpoint ..."), then the model (missing / unexpected tensor, wrong shape, naming the tensor), then the
  config (the dotted keys whose values differ, except the ``ignore`` keys that may change on resume, e.g.
  ``train.steps``). Every such error is a ``ValueError`` naming the checkpoint and what mismatched.
* **Retention**: ``save(keep=N)`` keeps the N newest ``step_*`` folders (0 keeps all).
* RNG states are restored by ``load(restore_rng=True)``; a recipe that seeds its data per step (as the
  tokenizer recipe does) does not depend on them, but other recipes may.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DEFAULT_IGNORE", "FORMAT_VERSION", "latest", "list_checkpoints", "load", "save"]

FORMAT_VERSION = 1
MODEL_FILE, STATE_FILE, CONFIG_FILE, MANIFEST_FILE = "model.safetensors", "train_state.pt", "config.yaml", "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d{7,})$")
# config keys that may differ between a run and its resumption (bookkeeping, not the trained model's recipe)
DEFAULT_IGNORE = ("train.resume", "train.steps", "train.out_dir", "train.log_every", "train.eval_every",
                  "train.eval_batches", "train.checkpoint_every", "train.keep_checkpoints", "progress")


def _step_dir(out_dir, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:07d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and all(isinstance(x, str) for x in v):  # an empty dict has no leaves
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _config_dict(config) -> dict:
    """A config as a nested dict headed by ``recipe`` (and ``kind`` where the root has one, as ``to_yaml``
    writes it), from a RunConfig dataclass or a mapping."""
    if isinstance(config, Mapping):
        return dict(config)
    from rlvr_world.config import to_dict

    head = {"recipe": config.recipe, **({"kind": config.kind} if hasattr(config, "kind") else {})}
    return {**head, **to_dict(config)}


def list_checkpoints(out_dir) -> list[Path]:
    """Complete checkpoints (those with a manifest) under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / MANIFEST_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest(out_dir) -> Path | None:
    """The newest complete checkpoint folder in ``out_dir/checkpoints``, or None when there is none."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def save(out_dir, step: int, model: torch.nn.Module, optimizer=None, scheduler=None, *, config=None,
         sampler: Any = None, extra: Mapping | None = None, keep: int = 3) -> Path:
    """Write ``out_dir/checkpoints/step_{step:07d}/`` atomically; keep the ``keep`` newest (0: all). Returns it.

    sampler / extra: plain picklable-by-``weights_only`` objects (dicts, lists, numbers, strings, tensors).
    """
    from safetensors.torch import save_file

    from rlvr_world.config import to_yaml

    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    final = _step_dir(out_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(".tmp_step_*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{final.name}_", dir=final.parent))
    try:
        tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, tmp / MODEL_FILE, metadata={"format": "pt", "step": str(step)})
        torch.save({
            "step": step,
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": _rng_state(),
            "sampler": sampler,
            "extra": dict(extra or {}),
        }, tmp / STATE_FILE)
        files = [MODEL_FILE, STATE_FILE]
        if config is not None:
            cfg = _config_dict(config)
            if isinstance(config, Mapping):
                (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
            else:
                to_yaml(config, tmp / CONFIG_FILE)
            files.append(CONFIG_FILE)
        manifest = {"format_version": FORMAT_VERSION, "step": step,
                    "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in files}}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        if final.exists():  # re-saving a step (e.g. the final save at a checkpoint step): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _verify(path: Path) -> dict:
    manifest_file = path / MANIFEST_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    if not manifest_file.is_file():
        raise ValueError(f"corrupt checkpoint {path}: no {MANIFEST_FILE} (an interrupted save?)")
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"corrupt checkpoint {path}: unreadable {MANIFEST_FILE} ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format_version {manifest.get('format_version')!r}; "
                         f"this version reads {FORMAT_VERSION}")
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"corrupt checkpoint {path}: {name} is missing")
        if f.stat().st_size != info["bytes"]:
            raise ValueError(f"corrupt checkpoint {path}: {name} has {f.stat().st_size} bytes, the manifest says "
                             f"{info['bytes']} (truncated?)")
        if _sha256(f) != info["sha256"]:
            raise ValueError(f"corrupt checkpoint {path}: {name} does not match its SHA-256 in the manifest")
    return manifest


def _check_config(path: Path, saved: Mapping, current: Mapping, ignore: Iterable[str]) -> None:
    ignore = tuple(ignore)
    a, b = _flat(saved), _flat(current)
    diffs = [k for k in sorted(set(a) | set(b))
             if a.get(k, "<missing>") != b.get(k, "<missing>")
             and not any(k == i or k.startswith(i + ".") for i in ignore)]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {a.get(k, '<missing>')!r}, this run {b.get(k, '<missing>')!r}"
                          for k in diffs[:5])
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        raise ValueError(f"checkpoint {path} was written by a different config: {shown}{more}. Resume with the "
                         f"same config, or start a new out_dir")


def load(path, model: torch.nn.Module, optimizer=None, scheduler=None, *, config=None,
         ignore: Iterable[str] = DEFAULT_IGNORE, restore_rng: bool = True) -> dict:
    """Restore a checkpoint folder into ``model`` (and optimizer / scheduler when given), in place.

    config: the current run's config; when given, it must equal the saved one except for the ``ignore``
    dotted keys. Returns ``{"step", "sampler", "extra", "path"}``. Raises FileNotFoundError for a missing
    folder and ValueError (naming the checkpoint and what is wrong) for a corrupt or mismatched one.
    """
    import yaml
    from safetensors.torch import load_file

    path = Path(path)
    _verify(path)
    if config is not None and (path / CONFIG_FILE).is_file():
        _check_config(path, yaml.safe_load((path / CONFIG_FILE).read_text()), _config_dict(config), ignore)
    try:
        tensors = load_file(path / MODEL_FILE)
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a corrupt file here
        raise ValueError(f"corrupt checkpoint {path}: cannot read it ({type(e).__name__}: {e})") from None
    expected = model.state_dict()
    for name, value in expected.items():
        if name not in tensors:
            raise ValueError(f"checkpoint {path} does not match the model: missing tensor {name!r}")
        if tensors[name].shape != value.shape:
            raise ValueError(f"checkpoint {path} does not match the model: tensor {name!r} has shape "
                             f"{tuple(tensors[name].shape)}, the model's is {tuple(value.shape)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: unexpected tensor {unexpected[0]!r}")
    model.load_state_dict(tensors)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is None:
            continue
        if state.get(name) is None:
            raise ValueError(f"checkpoint {path} has no {name} state to restore")
        try:
            obj.load_state_dict(state[name])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"checkpoint {path} does not match the {name}: {e}") from None
    if restore_rng:
        _set_rng_state(state["rng"])
    return {"step": int(state["step"]), "sampler": state.get("sampler"), "extra": state.get("extra", {}),
            "path": path}
