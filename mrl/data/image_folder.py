"""ImageFolder trees (``root/<class>/<image>``) checked up front, so bad data fails before training.

* class indices come from sorted class folder names and must be identical across splits;
* an empty root, or a class folder with no images, is a one-line :class:`ConfigError`;
* a corrupt or non-image file is skipped with a warning (``bad_images="skip"``) or reported before
  training (``bad_images="error"``); if one slips past verification, the loader substitutes the next
  sample instead of crashing mid-epoch.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from mrl.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BAD_IMAGE_POLICIES = ("skip", "error")


def _is_image_ok(path: str) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:
        return False


def scan_image_folder(root: str | Path, field: str = "data.root", bad_images: str = "skip",
                      verify: bool = True, num_threads: int = 8) -> tuple[list[str], list[tuple[str, int]]]:
    """Return ``(class_names, samples)`` with ``samples = [(path, class_index), ...]``.

    Hidden files are ignored. Files without an image extension, and (when ``verify``) files PIL cannot
    decode, are bad images: skipped with one warning, or a :class:`ConfigError` with
    ``bad_images="error"``.
    """
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ConfigError("data.bad_images", f"unknown policy {bad_images!r}",
                          f"choose one of {list(BAD_IMAGE_POLICIES)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(field, f"{root} does not exist or is not a directory",
                          "point it at an ImageFolder tree (<root>/<class>/<image>)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ConfigError(field, f"{root} has no class folders", "expected <root>/<class>/<image> files")
    candidates: list[tuple[str, int]] = []
    bad: list[str] = []
    for idx, class_dir in enumerate(class_dirs):
        for dirpath, _, files in sorted(os.walk(class_dir, followlinks=True)):
            for fname in sorted(files):
                if fname.startswith("."):
                    continue
                path = os.path.join(dirpath, fname)
                (candidates.append((path, idx)) if fname.lower().endswith(IMAGE_EXTENSIONS) else bad.append(path))
    if verify and candidates:
        with ThreadPoolExecutor(num_threads) as pool:
            ok = list(pool.map(_is_image_ok, (p for p, _ in candidates), chunksize=256))
        bad += [p for (p, _), good in zip(candidates, ok) if not good]
        candidates = [s for s, good in zip(candidates, ok) if good]
    if bad:
        if bad_images == "error":
            raise ConfigError(field, f"{len(bad)} corrupt or non-image file(s) under {root}, e.g. {sorted(bad)[0]}",
                              "remove them, or set data.bad_images=skip to skip them")
        warnings.warn(f"skipping {len(bad)} corrupt or non-image file(s) under {root}, e.g. {sorted(bad)[0]}",
                      stacklevel=2)
    counts = [0] * len(class_dirs)
    for _, idx in candidates:
        counts[idx] += 1
    empty = [class_dirs[i].name for i, c in enumerate(counts) if c == 0]
    if empty:
        raise ConfigError(field, f"class folder(s) {empty[:5]} under {root} have no images",
                          "add images or remove the empty class folders")
    return [d.name for d in class_dirs], candidates


def check_same_classes(reference: Sequence[str], other: Sequence[str], ref_name: str, other_name: str,
                       field: str = "data.root") -> None:
    """Class indices are positions in the sorted folder list, so the lists must match exactly."""
    if list(reference) != list(other):
        only_ref = sorted(set(reference) - set(other))[:5]
        only_other = sorted(set(other) - set(reference))[:5]
        raise ConfigError(field, f"{ref_name} and {other_name} have different class folders "
                          f"(only in {ref_name}: {only_ref}, only in {other_name}: {only_other})",
                          "give both splits the same class folders")


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


class ImageFolderDataset(Dataset):
    """``(image, label)`` pairs from :func:`scan_image_folder` samples.

    A file that fails to decode (verification off, or a truncated file that passed it) is replaced by
    the next sample with a warning, so one bad file never kills a long run mid-epoch.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], class_names: Sequence[str],
                 transform: Callable | None = None, loader: Callable[[str], Image.Image] = load_rgb):
        self.samples = list(samples)
        self.classes = list(class_names)
        self.targets = [y for _, y in self.samples]
        self.transform = transform
        self.loader = loader
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for offset in range(min(len(self.samples), 100)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                image = self.loader(path)
            except Exception as err:
                if path not in self._warned:
                    self._warned.add(path)
                    warnings.warn(f"skipping unreadable image {path} ({type(err).__name__})", stacklevel=2)
                continue
            return (self.transform(image) if self.transform else image), target
        raise RuntimeError(f"100 consecutive unreadable images from index {index} on; is the data mount broken?")


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if absent) for the block: the processes of a job
    that share the folder (the DDP ranks of a node) do ``what`` once, the others wait and then reuse it."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process {what}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def extract_archive(archive: str | Path, cache_dir: str | Path, field: str = "data.root") -> Path:
    """Extract a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` once into ``cache_dir`` and return the folder.

    Extraction goes to a temporary sibling that is renamed into place when complete, so an interrupted
    run never leaves a half tree that a later run mistakes for a finished one. The folder name carries
    the archive's size and mtime: a changed archive is extracted afresh.
    """
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise ConfigError(field, f"{archive} does not exist", "give an existing archive or ImageFolder root")
    stat = archive.stat()
    target = Path(cache_dir).expanduser() / f"{_archive_stem(archive)}-{stat.st_size}-{int(stat.st_mtime)}"
    if target.is_dir():
        return target
    with exclusive(target.parent / f".{target.name}.lock", f"extracting {archive}"):
        if not target.is_dir():  # not done by the process that held the lock before
            _extract(archive, target, field)
    return target


def _extract(archive: Path, target: Path, field: str) -> None:
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"extracting {archive} into {target} (once: later runs reuse it)", flush=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(field, f"cannot extract {archive} ({type(err).__name__}: {err})",
                          "check the file is a complete .tar.gz/.zip") from None
    try:
        os.replace(tmp, target)
    except OSError:  # a process of another machine sharing the cache folder (no common lock) finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise


def find_split_root(root: Path, splits: Sequence[str], field: str = "data.root") -> Path:
    """The folder under ``root`` (itself, or nested a few levels down) that holds all ``splits``."""
    queue = [root]
    for _ in range(4):
        next_level = []
        for folder in queue:
            if all((folder / s).is_dir() for s in splits):
                return folder
            next_level += sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        queue = next_level
    raise ConfigError(field, f"no folder with {'/, '.join(splits)}/ found under {root}",
                      f"expected <root>/{splits[0]}/<class>/<image> and <root>/{splits[1]}/<class>/<image>")
