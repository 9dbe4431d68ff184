"""Tests of clloop_jax.data.files on small files written here in the datasets' own formats (no network)."""

import gzip
import hashlib
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from clloop_jax import data as D
from clloop_jax.data import files as F

# ------------------------------------------------------------------------------------------------------ IDX


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An IDX file by hand: 00 00 <type> <ndim>, big-endian uint32 sizes, big-endian data."""
    big = array.astype(array.dtype.newbyteorder(">"))
    return struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        big.tobytes()


def write(path, payload: bytes, gz: bool = False):
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)
    return str(path)


def test_read_idx_uint8_images_and_labels(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    x = F.read_idx(write(tmp_path / "img", idx_bytes(images, 0x08)))
    assert x.dtype == np.uint8 and x.shape == (2, 3, 4)
    assert x[1, 2, 3] == 230 and x[0, 0, 1] == 10  # row-major: [1, 2, 3] is element 23
    np.testing.assert_array_equal(x, images)
    labels = F.read_idx(write(tmp_path / "lab", bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9])))  # written byte by byte
    np.testing.assert_array_equal(labels, [7, 0, 9])


def test_read_idx_big_endian_float_short_and_gzip(tmp_path):
    values = np.array([[1.5, -2.25], [3e10, 0.0]], np.float32)
    raw = struct.pack(">BBBBII", 0, 0, 0x0D, 2, 2, 2) + struct.pack(">4f", 1.5, -2.25, 3e10, 0.0)
    x = F.read_idx(write(tmp_path / "f.idx", raw))
    assert x.dtype == np.float32 and x.dtype.isnative
    np.testing.assert_array_equal(x, values)
    shorts = np.array([-300, 258, 7], np.int16)
    np.testing.assert_array_equal(F.read_idx(write(tmp_path / "s.idx", idx_bytes(shorts, 0x0B))), [-300, 258, 7])
    doubles = np.array([np.pi, -1e-300])
    got = F.read_idx(write(tmp_path / "d.idx.gz", idx_bytes(doubles, 0x0E), gz=True))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, doubles)


@pytest.mark.parametrize("raw, message", [
    (b"\x08\x03\x00\x00\x00\x00", "not an IDX file: magic number 08 03 00 00"),        # a wrong magic
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "not an IDX file"),                     # an unknown type code
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX file: 8 bytes, the header"),  # sizes cut off
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated IDX file: 2 data bytes"),  # data cut off
    (b"\x00\x00\x0c\x01\x00\x00\x00\x01" + b"\x00" * 6, r"sizes \(1,\) do not match the length: 6"),
    (b"\x00\x00", "truncated IDX file: 2 bytes"),
], ids=["wrong-magic", "unknown-type", "truncated-header", "truncated-data", "size-mismatch", "no-magic"])
def test_read_idx_refuses_damaged_files_naming_them(tmp_path, raw, message):
    path = write(tmp_path / "bad-idx1-ubyte", raw)
    with pytest.raises(ValueError, match=message) as err:
        F.read_idx(path)
    assert path in str(err.value)


def test_read_idx_refuses_a_broken_gzip(tmp_path):
    path = write(tmp_path / "x.gz", b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable gzip file") as err:
        F.read_idx(path)
    assert path in str(err.value)


def write_idx_set(folder, n_train=5, n_test=3, gz=False):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train, dtype=np.uint8) % 10,
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.array([9, 3, 1][:n_test], np.uint8)]
    for stem, a in zip(F.IDX_FILES, arrays):
        write(os.path.join(folder, stem + (".gz" if gz else "")), idx_bytes(a, 0x08), gz=gz)
    return arrays


def test_load_idx_dataset_plain_gz_and_torchvision_layout(tmp_path, monkeypatch):
    arrays = write_idx_set(tmp_path / "plain")
    monkeypatch.setenv("HOME", str(tmp_path))
    out = F.load_idx_dataset("~/plain")
    assert [a.dtype for a in out] == [np.uint8, np.int32, np.uint8, np.int32]
    for got, want in zip(out, arrays):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out[3], [9, 3, 1])
    gz = write_idx_set(tmp_path / "tv" / "FashionMNIST" / "raw", gz=True)
    out = F.load_idx_dataset(str(tmp_path / "tv"), name="fashion_mnist")
    np.testing.assert_array_equal(out[0], gz[0])
    assert out[0][4, 27, 27] == gz[0][4, 27, 27]


def test_load_idx_dataset_lists_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        F.load_idx_dataset(tmp_path, name="kmnist")
    for stem in F.IDX_FILES:
        assert f"{stem}[.gz]" in str(err.value)
    assert os.path.join(str(tmp_path), "KMNIST", "raw") in str(err.value)
    write_idx_set(tmp_path / "m")
    os.remove(tmp_path / "m" / "t10k-labels-idx1-ubyte")
    write(tmp_path / "m" / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8), 0x08))  # 4 labels, 3 images
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: expected 3 integer labels"):
        F.load_idx_dataset(tmp_path / "m")
    with pytest.raises(ValueError, match="name must be one of"):
        F.load_idx_dataset(tmp_path, name="emnist")


# ------------------------------------------------------------------------------------------------------ CIFAR


def cifar_image(seed):
    """A 32x32 RGB image whose every channel differs: pixel (r, c, ch) = (seed + 7r + 3c + 101ch) mod 256."""
    r, c, ch = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return ((seed + 7 * r + 3 * c + 101 * ch) % 256).astype(np.uint8)


def cifar_row(image):
    """A row of CIFAR's ``data``: the 1024 red values (row-major), then the green, then the blue, built by hand."""
    return np.array([image[r, c, ch] for ch in range(3) for r in range(32) for c in range(32)], np.uint8)


def write_batch(path, images, labels, label_keys=(b"labels",)):
    batch = {b"batch_label": b"training batch 1 of 5", b"data": np.stack([cifar_row(im) for im in images]),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    for key in label_keys:
        batch[key] = list(labels) if key != b"coarse_labels" else [v // 5 for v in labels]
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_load_cifar10_places_pixels_in_hwc(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", [cifar_image(10 * i), cifar_image(10 * i + 1)], [i, 9 - i])
    write_batch(folder / "test_batch", [cifar_image(99)], [4])
    x, y, xt, yt = F.load_cifar(tmp_path)
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8 and xt.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(y, [1, 8, 2, 7, 3, 6, 4, 5, 5, 4])
    assert y.dtype == np.int32 and yt.tolist() == [4]
    np.testing.assert_array_equal(x[0], cifar_image(10))
    np.testing.assert_array_equal(xt[0], cifar_image(99))
    # (row 2, col 5, green) of the first image: (10 + 14 + 15 + 101) = 140; its red and blue neighbours differ.
    assert x[0, 2, 5].tolist() == [39, 140, 241]
    assert x[3, 0, 0].tolist() == [21, 122, 223]  # image 2 of batch 2: seed 21
    # The files also work directly in the directory.
    np.testing.assert_array_equal(F.load_cifar(folder)[0], x)


def test_load_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    keys = (b"fine_labels", b"coarse_labels")
    write_batch(folder / "train", [cifar_image(1), cifar_image(2), cifar_image(3)], [57, 12, 99], keys)
    write_batch(folder / "test", [cifar_image(4)], [23], keys)
    x, y, xt, yt = F.load_cifar(tmp_path, which=100)
    np.testing.assert_array_equal(y, [57, 12, 99])
    assert yt.tolist() == [23]
    np.testing.assert_array_equal(x[2], cifar_image(3))
    _, yc, _, ytc = F.load_cifar(tmp_path, which=100, label="coarse")
    np.testing.assert_array_equal(yc, [11, 2, 19])
    assert ytc.tolist() == [4]


def test_load_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.*test_batch"):
        F.load_cifar(tmp_path)
    with pytest.raises(ValueError, match="which must be one of"):
        F.load_cifar(tmp_path, which=20)
    with pytest.raises(ValueError, match="coarse"):
        F.load_cifar(tmp_path, which=10, label="coarse")
    for name in ("train", "test"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [1]}, f)
    with pytest.raises(ValueError, match="'fine_labels' must hold 2 integer labels") as err:
        F.load_cifar(tmp_path, which=100)
    assert str(tmp_path / "train") in str(err.value)


def py2_batch(data, labels) -> bytes:
    """A batch pickled as the distributed files were (Python 2, NumPy 1, protocol 2), opcode by opcode: keys and
    pixel bytes are Python 2 ``str`` (``U``/``T`` opcodes) and the array names ``numpy.core.multiarray``."""
    def text(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def num(v):
        return b"J" + struct.pack("<i", v)

    dtype = (b"cnumpy\ndtype\n" + text(b"u1") + num(0) + num(1) + b"\x87R("  # dtype("u1", 0, 1), then its state
             + num(3) + text(b"|") + b"NNN" + num(-1) + num(-1) + num(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + num(0) + b"\x85" + text(b"b") + b"\x87R("
             + num(1) + num(data.shape[0]) + num(data.shape[1]) + b"\x86" + dtype + b"\x89" + text(data.tobytes())
             + b"tb")
    label_list = b"](" + b"".join(num(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + text(b"batch_label") + text(b"testing batch 1 of 1") + text(b"data") + array
            + text(b"labels") + label_list + b"u.")


def test_load_cifar_reads_batches_pickled_by_python2_and_numpy1(tmp_path):
    for i in range(1, 6):
        write_batch(tmp_path / f"data_batch_{i}", [cifar_image(i)], [i])
    (tmp_path / "test_batch").write_bytes(py2_batch(np.stack([cifar_row(cifar_image(42)), cifar_row(cifar_image(43))]),
                                                    [6, 2]))
    _, _, xt, yt = F.load_cifar(tmp_path)
    np.testing.assert_array_equal(yt, [6, 2])
    np.testing.assert_array_equal(xt[0], cifar_image(42))
    assert xt[1, 31, 0].tolist() == [(43 + 217) % 256, (43 + 217 + 101) % 256, (43 + 217 + 202) % 256]


class Exploit:
    """What a malicious pickle does: unpickling calls os.system with a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["reduce", "class", "not_a_dict"])
def test_load_cifar_refuses_pickles_that_build_other_objects(tmp_path, payload):
    marker = tmp_path / "ran"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
    if payload == "reduce":
        batch[b"labels"] = Exploit(marker)
    elif payload == "class":
        batch[b"labels"] = Exploit  # a class reference alone is resolved by name: refused as well
    else:
        batch = [batch]
    for i in range(1, 6):
        write_batch(tmp_path / f"data_batch_{i}", [cifar_image(i)], [i])
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    write_batch(tmp_path / "test_batch", [cifar_image(0)], [0])
    expected = "a pickled list, expected a dict" if payload == "not_a_dict" else "refused to load"
    with pytest.raises(ValueError, match=expected) as err:
        F.load_cifar(tmp_path)
    assert str(tmp_path / "data_batch_3") in str(err.value)
    if payload == "reduce":
        assert "posix.system" in str(err.value) or "os.system" in str(err.value)
    assert not marker.exists()  # the command never ran


# ------------------------------------------------------------------------------------------------ image folders


def solid(color, size=(4, 6)):
    """An RGB image of ``size`` (height, width) in one colour, with pixel (0, 1) set to its colour's reverse."""
    a = np.empty(size + (3,), np.uint8)
    a[:] = color
    a[0, 1] = color[::-1]
    return a


def save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_generic_image_folder_labels_in_sorted_class_order(tmp_path):
    save(tmp_path / "zebra" / "a.png", solid((200, 10, 30)))
    save(tmp_path / "cat" / "b.png", solid((1, 2, 3)))
    save(tmp_path / "cat" / "a.png", solid((4, 5, 6)))
    save(tmp_path / "dog" / "nested" / "x.png", solid((7, 8, 9)))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    save(tmp_path / ".ipynb_checkpoints" / "a.png", solid((0, 0, 0)))  # hidden: not a class
    x, y, classes = F.load_image_folder(tmp_path)
    assert classes == ["cat", "dog", "zebra"]
    np.testing.assert_array_equal(y, [0, 0, 1, 2])  # cat/a, cat/b, dog/nested/x, zebra/a
    assert x.shape == (4, 4, 6, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x[0], solid((4, 5, 6)))  # PNG is lossless: exact pixels
    np.testing.assert_array_equal(x[3], solid((200, 10, 30)))
    assert x[3, 0, 1].tolist() == [30, 10, 200] and x[3, 3, 5].tolist() == [200, 10, 30]
    gray = tmp_path / "gray"
    save(gray / "g" / "a.png", np.full((3, 3), 77, np.uint8))  # a grayscale PNG becomes RGB
    xg, _, _ = F.load_image_folder(gray)
    assert xg.shape == (1, 3, 3, 3) and (xg == 77).all()


def test_image_folder_resizes_and_refuses_mixed_sizes(tmp_path):
    save(tmp_path / "a" / "1.png", np.full((4, 6, 3), 50, np.uint8))
    save(tmp_path / "b" / "1.png", np.full((8, 8, 3), 90, np.uint8))
    with pytest.raises(ValueError, match="8x8 pixels.*has 6x4.*pass size") as err:
        F.load_image_folder(tmp_path)
    assert str(tmp_path / "b" / "1.png") in str(err.value)
    x, y, _ = F.load_image_folder(tmp_path, size=(5, 7))
    assert x.shape == (2, 5, 7, 3)
    assert (x[0] == 50).all() and (x[1] == 90).all()  # a uniform image stays uniform under resizing
    assert F.load_image_folder(tmp_path, size=3)[0].shape == (2, 3, 3, 3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no images"):
        F.load_image_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="class folder .*empty_class holds no images"):
        F.load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no image folder"):
        F.load_image_folder(tmp_path, split="val")
    with pytest.raises(TypeError, match="directory must be a path"):
        F.load_image_folder(3)
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        F.load_image_folder(tmp_path, size=0)


def test_tiny_imagenet_layout_train_and_val_agree(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    (root / "train").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, wnid in enumerate(wnids):
        for j in range(2):
            save(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", solid((10 * k, j, 0)))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t3\t3\n")
    val = root / "val"
    save(val / "images" / "val_0.JPEG", solid((1, 1, 1)))
    save(val / "images" / "val_1.JPEG", solid((2, 2, 2)))
    (val / "val_annotations.txt").write_text("val_0.JPEG\tn03\t0\t0\t3\t3\nval_1.JPEG\tn01\t1\t1\t2\t2\n")
    x, y, classes = F.load_image_folder(root, split="train")
    assert classes == ["n01", "n02", "n03"]
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 2, 2])
    assert x.shape == (6, 4, 6, 3)
    # JPEG is lossy: the class's red level, within a few units (n01 was written with red 10, n02 with 0, n03 with 20).
    np.testing.assert_allclose(x[:, 2, 3, 0].astype(int), [10, 10, 0, 0, 20, 20], atol=4)
    xv, yv, cv = F.load_image_folder(root, split="val")
    assert cv == classes
    np.testing.assert_array_equal(yv, [2, 0])  # val_0 is n03, val_1 is n01
    np.testing.assert_allclose(xv[:, 2, 3].astype(int), [[1, 1, 1], [2, 2, 2]], atol=4)
    (val / "val_annotations.txt").write_text("val_0.JPEG\tn99\n")
    with pytest.raises(ValueError, match="n99"):
        F.load_image_folder(root, split="val")


# ------------------------------------------------------------------------------------------------- downloads


def serve(tmp_path, name, payload):
    source = tmp_path / "remote" / name
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(payload)
    return source.as_uri(), hashlib.sha256(payload).hexdigest()


def test_download_checks_the_hash_and_renames_into_place(tmp_path, monkeypatch):
    payload = gzip.compress(idx_bytes(np.array([3, 1, 4], np.uint8), 0x08))
    url, sha = serve(tmp_path, "train-labels-idx1-ubyte.gz", payload)
    monkeypatch.setitem(F.DOWNLOADS, "mnist", [(url, sha)])
    out = tmp_path / "data"
    paths = F.download("mnist", out, progress=False)
    assert paths == [str(out / "train-labels-idx1-ubyte.gz")]
    assert (out / "train-labels-idx1-ubyte.gz").read_bytes() == payload
    np.testing.assert_array_equal(F.read_idx(paths[0]), [3, 1, 4])
    assert sorted(os.listdir(out)) == ["train-labels-idx1-ubyte.gz"]  # no temporary file left
    os.remove(tmp_path / "remote" / "train-labels-idx1-ubyte.gz")
    assert F.download("mnist", out, progress=False) == paths  # a file whose hash matches is not fetched again


def test_download_with_a_wrong_hash_creates_nothing(tmp_path, monkeypatch):
    url, sha = serve(tmp_path, "t10k-images-idx3-ubyte.gz", b"some bytes")
    monkeypatch.setitem(F.DOWNLOADS, "mnist", [(url, "0" * 64)])
    out = tmp_path / "data"
    with pytest.raises(ValueError, match=f"sha256 {sha} differs from the expected 0000"):
        F.download("mnist", out, progress=False)
    assert os.listdir(out) == []  # neither the target nor a temporary file


def test_download_offline_is_one_clear_error(tmp_path, monkeypatch):
    url = (tmp_path / "nowhere" / "cifar-10-python.tar.gz").as_uri()
    monkeypatch.setitem(F.DOWNLOADS, "cifar10", [(url, None)])
    with pytest.raises(ConnectionError, match="could not download .*download it by hand into") as err:
        F.download("cifar10", tmp_path / "data", progress=False)
    assert url in str(err.value) and isinstance(err.value, OSError)
    assert os.listdir(tmp_path / "data") == []
    with pytest.raises(ValueError, match="name must be one of"):
        F.download("imagenet", tmp_path)


def test_download_unpacks_a_cifar_archive_for_load_cifar(tmp_path, monkeypatch):
    folder = tmp_path / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", [cifar_image(i)], [i])
    write_batch(folder / "test_batch", [cifar_image(0)], [0])
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    url, sha = serve(tmp_path, "cifar-10-python.tar.gz", archive.read_bytes())
    monkeypatch.setitem(F.DOWNLOADS, "cifar10", [(url, sha)])
    F.download("cifar10", tmp_path / "data", progress=True)
    x, y, xt, yt = F.load_cifar(tmp_path / "data")
    np.testing.assert_array_equal(y, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(x[4], cifar_image(5))


def test_the_readers_are_exported_from_clloop_jax_data():
    for name in ("read_idx", "load_idx_dataset", "load_cifar", "load_image_folder", "download"):
        assert name in D.__all__ and getattr(D, name) is getattr(F, name)
