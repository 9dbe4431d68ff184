"""Readers for the standard image datasets as they lie on disk, and an optional downloader of their files.

* :func:`read_idx` and :func:`load_idx_dataset`: the IDX files of MNIST, Fashion-MNIST and KMNIST (plain or
  ``.gz``).
* :func:`load_cifar`: the "python version" batches of CIFAR-10 and CIFAR-100, unpickled with a restricted unpickler
  that builds nothing but NumPy arrays (a pickle names the code it runs; a file from disk must not run any).
* :func:`load_image_folder`: one sub-folder of images per class (``root/<class>/*.png``), also the layout of
  TinyImageNet (``train/<wnid>/images/*.JPEG``, ``val/`` with ``val_annotations.txt``), decoded with Pillow.
* :func:`download`: fetches a dataset's files from :data:`DOWNLOADS` into a folder, checked against their sha256 and
  renamed into place only when complete; the only function of the package that uses the network.

Images come out as uint8 (``[N, H, W]`` for IDX, ``[N, H, W, 3]`` RGB for the others), labels as int32; scaling,
flattening and splitting are left to the caller (e.g. ``x.reshape(len(x), -1) / 255.0`` for the task streams).
Paths are ``str`` or ``os.PathLike`` and may start with ``~``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from typing import List, Optional, Tuple

import numpy as np

from clloop_jax.validation import check_bool, check_choice, check_int, check_path

__all__ = ["read_idx", "load_idx_dataset", "IDX_FILES", "load_cifar", "load_image_folder", "IMAGE_EXTENSIONS",
           "DOWNLOADS", "download"]

#: IDX type codes (the magic number's third byte) and the big-endian dtypes they stand for.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: The four standard IDX file names: training images and labels, test images and labels.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: Sub-folders where ``torchvision`` keeps the same files (``<root>/<folder>/raw``), searched as well.
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def _path(name: str, value) -> str:
    """A path argument as a ``str``, with ``~`` expanded."""
    return os.path.expanduser(os.fspath(check_path(name, value)))


def _read_file(path: str) -> bytes:
    """The bytes of ``path``, decompressed when its name ends in ``.gz``; a damaged archive is a ValueError."""
    if not path.endswith(".gz"):
        with open(path, "rb") as f:
            return f.read()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({e})") from None


def read_idx(path) -> np.ndarray:
    """The array held by an IDX file (the format of MNIST, Fashion-MNIST and KMNIST), plain or gzipped (``.gz``).

    The file starts with a magic number (two zero bytes, a type code from :data:`IDX_DTYPES`, the number of
    dimensions), then one big-endian uint32 size per dimension, then the data in big-endian row-major order. The
    array is returned in native byte order. Raises ``ValueError`` naming the file for a wrong magic number, a
    truncated header or data, and data longer than the sizes say; ``FileNotFoundError`` when it does not exist.
    """
    path = _path("path", path)
    raw = _read_file(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file: magic number {raw[:4].hex(' ')}, expected 00 00 <type> <ndim> "
                         f"with type one of {', '.join(f'{c:02x}' for c in IDX_DTYPES)}")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(f"{path}: truncated IDX file: {len(raw)} bytes, the header of {ndim} sizes needs {start}")
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = math.prod(shape)  # exact: no int64 overflow on absurd sizes
    need = count * dtype.itemsize
    have = len(raw) - start
    if have < need:
        raise ValueError(f"{path}: truncated IDX file: {have} data bytes, sizes {tuple(shape)} of {dtype.name} "
                         f"need {need}")
    if have > need:
        raise ValueError(f"{path}: the IDX sizes {tuple(shape)} do not match the length: {have} data bytes, "
                         f"{need} expected")
    return np.frombuffer(raw, dtype, count=count, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory: str, name: str) -> List[str]:
    """The paths of the four :data:`IDX_FILES` (each plain or ``.gz``) in the first folder that holds all four."""
    folders = [directory, os.path.join(directory, name),
               os.path.join(directory, _TORCHVISION_FOLDERS[name], "raw")]
    for folder in folders:
        found = []
        for stem in IDX_FILES:
            candidates = [os.path.join(folder, stem + ext) for ext in ("", ".gz")]
            found += [p for p in candidates if os.path.isfile(p)][:1]
        if len(found) == len(IDX_FILES):
            return found
    looked = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES)
    raise FileNotFoundError(f"no {name} IDX files in {directory}: looked for {looked} in "
                            f"{', '.join(folders)} (download({name!r}, directory) fetches them)")


def load_idx_dataset(directory, name: str = "mnist") -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train uint8 [N, 28, 28], y_train int32 [N], x_test uint8 [M, 28, 28], y_test int32 [M])`` from IDX files.

    ``name`` is ``"mnist"``, ``"fashion_mnist"`` or ``"kmnist"`` (the three share the file names and layout). The
    four :data:`IDX_FILES` (each plain or ``.gz``) are looked for in ``directory``, in ``directory/<name>`` and in
    torchvision's ``directory/<MNIST|FashionMNIST|KMNIST>/raw``; ``FileNotFoundError`` lists what was looked for.
    Images must be uint8 ``[N, H, W]`` and labels ``[N]``, the same ``N`` (``ValueError`` naming the file otherwise).
    """
    directory = _path("directory", directory)
    check_choice("name", name, tuple(_TORCHVISION_FOLDERS))
    paths = _find_idx(directory, name)
    out = []
    for images_path, labels_path in (paths[:2], paths[2:]):
        x, y = read_idx(images_path), read_idx(labels_path)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(f"{images_path}: expected uint8 images [N, H, W], got {x.dtype} of shape {x.shape}")
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{labels_path}: expected {x.shape[0]} integer labels (one per image of "
                             f"{os.path.basename(images_path)}), got {y.dtype} of shape {y.shape}")
        out += [x, y.astype(np.int32)]
    return tuple(out)


# ------------------------------------------------------------------------------------------------------ CIFAR

#: What a CIFAR batch may name: NumPy's array and dtype reconstruction (NumPy 1 and 2 module names), and the
#: ``_codecs.encode`` that Python 3 pickles bytes with at protocol 2. Everything else is refused.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names of :data:`_PICKLE_ALLOWED`, so loading runs no other code."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent reference")


def _unpickle_batch(path: str) -> dict:
    """A CIFAR batch file as a dict with ``str`` keys; ``ValueError`` naming the file for anything else."""
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise ValueError(f"{path}: not a CIFAR batch: {e} (only a dict of bytes, lists and NumPy arrays is "
                         f"unpickled: a pickle names the code it runs)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR batch: a pickled {type(obj).__name__}, expected a dict")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, (bytes, str, list, np.ndarray)) or (
                isinstance(value, np.ndarray) and value.dtype.hasobject):
            raise ValueError(f"{path}: not a CIFAR batch: entry {key!r} is a {type(value).__name__}")
        out[key.decode("latin1") if isinstance(key, bytes) else str(key)] = value
    return out


def _cifar_arrays(path: str, label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_batch(path)
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: not a CIFAR batch: expected the keys 'data' and {label_key!r}, got "
                         f"{sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} of shape {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must hold {data.shape[0]} integer labels, got {labels.dtype} "
                         f"of shape {labels.shape}")
    # Each row is three 32x32 planes (all red, then green, then blue), each plane row-major: [N, C, H, W] -> HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int32)


def load_cifar(directory, which: int = 10, label: str = "fine"
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train uint8 [N, 32, 32, 3], y_train int32 [N], x_test, y_test)`` from CIFAR's "python version" files.

    ``which=10``: ``data_batch_1`` .. ``data_batch_5`` (50,000 images) and ``test_batch`` (10,000), labels 0..9,
    looked for in ``directory/cifar-10-batches-py`` and in ``directory``. ``which=100``: ``train`` and ``test``
    with the 100 ``"fine"`` labels or the 20 ``"coarse"`` superclasses, in ``directory/cifar-100-python`` or
    ``directory``. Images are HWC RGB (the files hold each image as its red, green and blue 32x32 planes).

    The batches are pickles; they are read with an unpickler that constructs nothing but NumPy arrays, and a file
    that names any other class or function is refused with a ``ValueError`` naming it, before anything runs.
    """
    directory = _path("directory", directory)
    which = check_choice("which", check_int("which", which), (10, 100))
    check_choice("label", label, ("fine", "coarse"))
    if which == 10 and label != "fine":
        raise ValueError("label='coarse' is for CIFAR-100 (its 20 superclasses); CIFAR-10 has one set of labels")
    if which == 10:
        folder, names, key = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
    else:
        folder, names, key = "cifar-100-python", ["train", "test"], f"{label}_labels"
    folders = [os.path.join(directory, folder), directory]
    base = next((d for d in folders if all(os.path.isfile(os.path.join(d, n)) for n in names)), None)
    if base is None:
        raise FileNotFoundError(f"no CIFAR-{which} python batches in {directory}: looked for {', '.join(names)} in "
                                f"{' and '.join(folders)} (download('cifar{which}', directory) fetches them)")
    parts = [_cifar_arrays(os.path.join(base, n), key) for n in names]
    train, test = parts[:-1], parts[-1]
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test[0], test[1])


# ------------------------------------------------------------------------------------------------ image folders

#: File name endings read as images (case-insensitive); other files (``*_boxes.txt``, ...) are skipped.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _images_under(folder: str) -> List[str]:
    """The image files under ``folder`` and its sub-folders (hidden ones skipped), in sorted path order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _annotated_files(root: str, annotations: str) -> List[Tuple[str, str]]:
    """``(path, class)`` pairs of a TinyImageNet-style ``val/``: ``images/<file>`` listed in ``val_annotations.txt``
    as ``<file> <TAB> <class> ...``."""
    pairs = []
    with open(annotations) as f:
        for number, fields in enumerate((line.split() for line in f), 1):
            if fields and len(fields) < 2:
                raise ValueError(f"{annotations}:{number}: expected '<file> <class> ...', got {fields[0]!r}")
            if fields:
                image = os.path.join(root, "images", fields[0])
                pairs.append((image if os.path.isfile(image) else os.path.join(root, fields[0]), fields[1]))
    return pairs


def _decode(path: str, size):
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib, a dependency
        raise ImportError("load_image_folder needs Pillow, which is not installed: pip install Pillow") from e

    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None:
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def load_image_folder(directory, size=None, split: Optional[str] = None
                      ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """``(x uint8 [N, H, W, 3], y int32 [N], classes)`` from a folder of images with one sub-folder per class.

    The folder read is ``directory`` (``split=None``) or ``directory/<split>`` (e.g. ``"train"``, ``"val"``). Its
    layout is either one sub-folder per class (hidden ones, ``.name``, skipped), whose images may lie in nested folders
    (``<class>/*.png``, TinyImageNet's ``train/<wnid>/images/*.JPEG``), or TinyImageNet's ``val/``: an
    ``images/`` folder and a ``val_annotations.txt`` naming each file's class. ``classes`` is the sorted list of
    class names and ``y`` indexes it; for an annotated folder, the classes are ``directory/wnids.txt`` when it
    exists (so that train and val labels agree), else ``directory/train``'s sub-folders, else the annotated ones.

    Images are decoded with Pillow to RGB and resized (bilinear) to ``size``, an int (square) or ``(height,
    width)``, when given; with ``size=None`` all images must have one size (``ValueError`` naming the first that
    differs). ``ValueError`` for a folder or class without images.
    """
    directory = _path("directory", directory)
    if size is not None:
        size = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        size = tuple(check_int("size", s, min=1) for s in size)
    if split is not None and not isinstance(split, str):
        raise TypeError(f"split must be a folder name (str) or None, got {type(split).__name__} {split!r}")
    root = directory if split is None else os.path.join(directory, split)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no image folder {root}")
    annotations = os.path.join(root, "val_annotations.txt")
    if os.path.isfile(annotations):
        pairs = _annotated_files(root, annotations)
        wnids, train = os.path.join(directory, "wnids.txt"), os.path.join(directory, "train")
        if os.path.isfile(wnids):
            with open(wnids) as f:
                classes = sorted({line.strip() for line in f if line.strip()})
        elif split is not None and os.path.isdir(train):
            classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
        else:
            classes = sorted({c for _, c in pairs})
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({c for _, c in pairs if c not in index})
        if unknown:
            raise ValueError(f"{annotations}: classes not among the {len(classes)} known ones: {unknown[:5]}")
        files = [(p, index[c]) for p, c in pairs]
    else:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d[0] != ".")
        files = []
        for label, name in enumerate(classes):
            found = _images_under(os.path.join(root, name))
            if not found:
                raise ValueError(f"class folder {os.path.join(root, name)} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            files += [(p, label) for p in found]
    if not files:
        raise ValueError(f"{root} holds no images: expected one sub-folder of images per class")
    x = None
    for i, (path, _) in enumerate(files):
        image = _decode(path, size)
        if x is None:
            x = np.empty((len(files),) + image.shape, np.uint8)
        elif image.shape != x.shape[1:]:
            raise ValueError(f"{path}: image of {image.shape[1]}x{image.shape[0]} pixels, but {files[0][0]} has "
                             f"{x.shape[2]}x{x.shape[1]}: pass size=(height, width) to resize them all")
        x[i] = image
    return x, np.array([label for _, label in files], np.int32), classes


# ------------------------------------------------------------------------------------------------- downloads

def _idx_urls(base: str, hashes) -> list:
    """``(url, sha256)`` of the four gzipped :data:`IDX_FILES` under ``base``, in that order."""
    return [(f"{base}{stem}.gz", h) for stem, h in zip(IDX_FILES, hashes)]


#: Each dataset's files: ``(url, sha256)``; a sha256 of None is not checked. The hashes are those that
#: TensorFlow Datasets records for the same URLs. TinyImageNet's zip has no recorded sha256 and is not checked.
DOWNLOADS = {
    "mnist": _idx_urls("https://storage.googleapis.com/cvdf-datasets/mnist/", (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")),
    "fashion_mnist": _idx_urls("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")),
    "kmnist": _idx_urls("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", (
        "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c")),
    "cifar10": [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")],
    "cifar100": [("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7")],
    "tiny_imagenet": [("http://cs231n.stanford.edu/tiny-imagenet-200.zip", None)],
}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, sha256: Optional[str], target: str, progress: bool) -> None:
    """Downloads ``url`` to a temporary file beside ``target`` and renames it to ``target`` once its hash matched."""
    from tqdm.auto import tqdm

    directory = os.path.dirname(target)
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"could not download {url} ({reason}); without a network, download it by hand into "
                              f"{directory}") from e
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=directory)
    try:
        digest = hashlib.sha256()
        total = response.headers.get("Content-Length") if response.headers else None
        with response, os.fdopen(fd, "wb") as out, tqdm(total=int(total) if total else None, unit="B",
                                                       unit_scale=True, desc=os.path.basename(target),
                                                       disable=not progress) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f"{url}: sha256 {digest.hexdigest()} differs from the expected {sha256}; the file was "
                             f"not kept (a changed or damaged download)")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _extract(archive: str, directory: str) -> None:
    """Unpacks a ``.tar.gz`` (with tarfile's ``data`` filter: no links out, no absolute paths) or a ``.zip``."""
    if archive.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(directory, filter="data")
    elif archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(directory)  # zipfile drops absolute paths and ".." components


def download(name: str, directory, progress: bool = True) -> List[str]:
    """Downloads the files of dataset ``name`` (a key of :data:`DOWNLOADS`) into ``directory``; the paths.

    A file already in ``directory`` whose sha256 matches (or whose hash is not known) is kept. Each download goes
    to a temporary file in ``directory``, is checked against its sha256 and only then renamed to its name, so an
    interrupted or wrong download leaves no file under that name (``ValueError`` for a wrong hash). Archives
    (CIFAR's ``.tar.gz``, TinyImageNet's ``.zip``) are unpacked next to themselves right after their download, for
    :func:`load_cifar` and :func:`load_image_folder`; the IDX ``.gz`` files are read as they are. A ``tqdm`` bar
    shows the progress (``progress=False`` hides it). Without a network it raises ``ConnectionError`` naming the
    URL: download the files by hand into ``directory`` instead.
    """
    check_choice("name", name, tuple(DOWNLOADS))
    directory = _path("directory", directory)
    check_bool("progress", progress)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for url, sha256 in DOWNLOADS[name]:
        target = os.path.join(directory, url.rstrip("/").rsplit("/", 1)[-1])
        if not (os.path.isfile(target) and (sha256 is None or _sha256(target) == sha256)):
            _fetch(url, sha256, target, progress)
            _extract(target, directory)
        paths.append(target)
    return paths

