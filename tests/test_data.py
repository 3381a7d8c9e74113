"""Tests of tfnas.data: loading (built-in digits, a real tfds builder prepared offline), splits,
resumable batch streams, preprocessing and augmentation. Nothing here touches the network."""
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfnas import data
from tfnas.data import BatchStream, DataError, Dataset
from tfnas.proto import config_pb2

TINY_TRAIN, TINY_TEST, TINY_SHAPE = 20, 8, (6, 5, 3)


def _tiny_examples(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield i, {"image": rng.integers(0, 256, TINY_SHAPE, dtype=np.uint8), "label": i % 3}


class TfnasTinyImages(tfds.core.GeneratorBasedBuilder):
    """A three-class random-image dataset, so that the real tfds builder/prepare/read path runs offline."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=TINY_SHAPE), "label": tfds.features.ClassLabel(names=["a", "b", "c"])}
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(TINY_TRAIN, 0), "test": self._generate_examples(TINY_TEST, 1)}

    def _generate_examples(self, n, seed):
        yield from _tiny_examples(n, seed)


def _config(**kw) -> config_pb2.DataConfig:
    return config_pb2.DataConfig(**kw)


def _toy(n=10, size=4, channels=3, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    return Dataset("toy", (x, np.arange(n) % 2), (x[:2], np.zeros(2, np.int64)), ["a", "b"])


def _sorted_rows(images: np.ndarray) -> list[bytes]:
    return sorted(im.tobytes() for im in images)


# ---------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return data.load_dataset(_config(dataset="digits"))


def test_digits_shapes_dtypes_and_labels(digits):
    (xtr, ytr), (xte, yte) = digits.train, digits.test
    assert xtr.shape == (1500, 8, 8, 1) and xte.shape == (297, 8, 8, 1)
    assert xtr.dtype == np.uint8 and np.issubdtype(ytr.dtype, np.integer) and ytr.ndim == 1
    assert digits.image_shape == (8, 8, 1) and digits.num_classes == 10
    assert digits.class_names == [str(i) for i in range(10)]
    assert set(np.unique(ytr)) == set(range(10)) and set(np.unique(yte)) <= set(range(10))
    assert xtr.max() == 255 and xtr.min() == 0  # 16 -> 255: the full uint8 range is used
    # train + test is a partition of the 1,797 examples of scikit-learn's copy, pixels scaled by 255/16
    from sklearn.datasets import load_digits

    raw = load_digits()
    full = np.round(raw.images * 255 / 16).astype(np.uint8)[..., None]
    pairs = lambda x, y: sorted(im.tobytes() + bytes([int(c)]) for im, c in zip(x, y))
    assert pairs(np.concatenate([xtr, xte]), np.concatenate([ytr, yte])) == pairs(full, raw.target)


def test_digits_is_deterministic_and_truncated_and_resized(digits):
    again = data.load_dataset(_config(dataset="digits"))
    np.testing.assert_array_equal(again.train[0], digits.train[0])
    np.testing.assert_array_equal(again.test[1], digits.test[1])
    small = data.load_dataset(_config(dataset="digits", max_train_examples=100, max_test_examples=7, image_size=16))
    assert small.train[0].shape == (100, 16, 16, 1) and small.test[0].shape == (7, 16, 16, 1)
    np.testing.assert_array_equal(small.train[1], digits.train[1][:100])  # the first N are kept
    assert small.train[0].dtype == np.uint8


def test_digits_rejects_unknown_split():
    with pytest.raises(DataError, match="validation"):
        data.load_dataset(_config(dataset="digits", test_split="validation"))


# ---------------------------------------------------------------------------------------------- tfds


def test_tfds_builder_prepared_offline_is_read(tmp_path):
    TfnasTinyImages(data_dir=str(tmp_path)).download_and_prepare()
    ds = data.load_dataset(_config(dataset="tfnas_tiny_images", data_dir=str(tmp_path)))
    assert ds.train[0].shape == (TINY_TRAIN, *TINY_SHAPE) and ds.test[0].shape == (TINY_TEST, *TINY_SHAPE)
    assert ds.train[0].dtype == np.uint8 and ds.class_names == ["a", "b", "c"] and ds.image_shape == TINY_SHAPE
    # PNG encoding is lossless: exactly the generated images come back (tfds reorders examples)
    expected = [ex["image"] for _, ex in _tiny_examples(TINY_TRAIN, 0)]
    assert _sorted_rows(ds.train[0]) == _sorted_rows(np.stack(expected))
    labels = {ex["image"].tobytes(): ex["label"] for _, ex in _tiny_examples(TINY_TRAIN, 0)}
    assert [labels[im.tobytes()] for im in ds.train[0]] == list(ds.train[1])

    cut = data.load_dataset(
        _config(dataset="tfnas_tiny_images", data_dir=str(tmp_path), max_train_examples=5, image_size=4, test_split="train[:3]")
    )
    assert cut.train[0].shape == (5, 4, 4, 3) and cut.test[0].shape == (3, 4, 4, 3)
    with pytest.raises(DataError, match="not a valid split"):
        data.load_dataset(_config(dataset="tfnas_tiny_images", data_dir=str(tmp_path), test_split="nope"))


def test_tfds_download_prepares_when_reachable(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda host, port, timeout: True)
    ds = data.load_dataset(_config(dataset="tfnas_tiny_images", data_dir=str(tmp_path), download=True))
    assert len(ds.train[0]) == TINY_TRAIN and len(ds.test[0]) == TINY_TEST


def test_tfds_download_fails_fast_when_unreachable(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(data, "_reachable", lambda host, port, timeout: probed.append(host) or False)
    with pytest.raises(DataError, match="unreachable"):
        data.load_dataset(_config(dataset="cifar10", data_dir=str(tmp_path), download=True))
    assert probed == ["www.cs.toronto.edu"]  # the dataset's own download host


def test_not_prepared_without_download_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match=r"'cifar10' is not prepared in .*data\.download=true"):
        data.load_dataset(_config(dataset="cifar10", data_dir=str(tmp_path)))
    assert time.monotonic() - start < 10


def test_unknown_dataset_suggests_close_names(tmp_path):
    with pytest.raises(DataError, match="did you mean: .*cifar10") as err:
        data.load_dataset(_config(dataset="cifar_10", data_dir=str(tmp_path)))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="empty"):
        data.load_dataset(_config(dataset=""))


def test_reachable_probe():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert data._reachable("127.0.0.1", server.getsockname()[1], 3.0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connection refused
        start = time.monotonic()
        assert not data._reachable("127.0.0.1", port, 3.0)
        assert time.monotonic() - start < 3.5


# ---------------------------------------------------------------------------------------------- splits, normalisation


def test_search_split_sizes_order_and_disjointness(digits):
    (xw, yw), (xa, ya) = data.search_split(digits, 0.5)
    assert len(xw) == len(yw) == 750 and len(xa) == len(ya) == 750
    np.testing.assert_array_equal(np.concatenate([xw, xa]), digits.train[0])  # no shuffle: [:cut] + [cut:]
    ds = _toy(n=10)
    ds.train = (ds.train[0], np.arange(10))  # labels = example indices
    (_, yw), (_, ya) = data.search_split(ds, 0.3)
    assert list(yw) == [0, 1, 2] and list(ya) == list(range(3, 10))  # disjoint, together everything
    for bad in (0.0, 1.0, 0.05, -0.5):
        with pytest.raises(DataError):
            data.search_split(ds, bad)


def test_normalization_from_config_and_computed():
    ds = _toy(channels=3)
    mean, std = data.normalization(ds, _config(mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.25]))
    np.testing.assert_allclose(mean, [0.5, 0.4, 0.3])
    np.testing.assert_allclose(std, [0.2, 0.2, 0.25])
    mean, std = data.normalization(ds, _config())
    x = ds.train[0].astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-5)
    assert mean.shape == (3,) and mean.dtype == np.float32
    with pytest.raises(DataError, match="3 channels"):
        data.normalization(ds, _config(mean=[0.5], std=[0.2]))
    with pytest.raises(DataError, match="positive"):
        data.normalization(ds, _config(mean=[0.5] * 3, std=[0.2, 0.0, 0.1]))


# ---------------------------------------------------------------------------------------------- BatchStream


def _stream(n=23, batch=5, seed=7, **kw) -> BatchStream:
    return BatchStream(np.arange(n, dtype=np.uint8)[:, None, None, None], np.arange(n), batch, seed, **kw)


def test_batch_stream_covers_each_example_once_per_epoch():
    s = _stream()
    assert s.steps_per_epoch == 4
    epochs = []
    for _ in range(3):
        batches = [s.next() for _ in range(s.steps_per_epoch)]
        for x, y in batches:
            assert x.shape == (5, 1, 1, 1) and x.dtype == np.uint8 and y.shape == (5,)
            np.testing.assert_array_equal(x[:, 0, 0, 0], y)  # images stay paired with their labels
        ys = np.concatenate([y for _, y in batches])
        assert len(set(ys)) == 20  # no repeats inside an epoch; 3 dropped (drop_remainder)
        epochs.append(ys)
        assert s.get_state() == {"epoch": len(epochs), "position": 0}
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])

    full = _stream(drop_remainder=False)
    assert full.steps_per_epoch == 5
    ys = np.concatenate([full.next()[1] for _ in range(5)])
    assert sorted(ys) == list(range(23)) and full.get_state()["epoch"] == 1


def test_batch_stream_same_seed_same_order_other_seed_differs():
    a, b, c = _stream(seed=3), _stream(seed=3), _stream(seed=4)
    ya = [a.next()[1] for _ in range(9)]
    yb = [b.next()[1] for _ in range(9)]
    yc = [c.next()[1] for _ in range(9)]
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)


@pytest.mark.parametrize("consumed", [0, 2, 4, 6, 11])
def test_batch_stream_resumes_exactly(consumed):
    reference = _stream()
    for _ in range(consumed):
        reference.next()
    state = reference.get_state()
    expected = [reference.next()[1] for _ in range(10)]
    resumed = _stream()
    resumed.set_state(dict(state))
    np.testing.assert_array_equal([resumed.next()[1] for _ in range(10)], expected)


def test_batch_stream_errors():
    with pytest.raises(DataError, match="only 3 examples, fewer than one batch of 5"):
        _stream(n=3)
    with pytest.raises(DataError, match="differ"):
        BatchStream(np.zeros((4, 1, 1, 1), np.uint8), np.zeros(3), 2, 0)
    with pytest.raises(DataError):
        _stream().set_state({"epoch": 0, "position": 99})
    with pytest.raises(DataError):
        _stream().set_state({"epoch": 0})


# ---------------------------------------------------------------------------------------------- preprocess, augment


def test_preprocess_math():
    x = np.array([[[[0, 255, 51]]]], np.uint8)
    out = data.preprocess(tf.constant(x), [0.5, 0.5, 0.0], [0.5, 0.25, 2.0])
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy()[0, 0, 0], [-1.0, 2.0, 0.1], rtol=1e-6)


def _aug(**kw) -> config_pb2.AugmentationConfig:
    return config_pb2.AugmentationConfig(**kw)


def _ramp(n=16, h=8, w=8, c=2) -> tf.Tensor:
    """Images whose every pixel value is distinct and non-zero, so moved content can be traced."""
    return tf.reshape(tf.range(1, n * h * w * c + 1, dtype=tf.float32), (n, h, w, c))


def test_augment_crop_shifts_content_within_padding():
    x = _ramp()
    out = data.augment(x, _aug(crop_padding=2), seed=1).numpy()
    assert out.shape == x.shape
    shifts = set()
    for img, src in zip(out, x.numpy()):
        padded = np.pad(src, [(2, 2), (2, 2), (0, 0)])
        found = [(dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(padded[dy : dy + 8, dx : dx + 8], img)]
        assert len(found) == 1  # each output is a window of the zero-padded image
        shifts.add(found[0])
    assert len(shifts) > 3 and shifts != {(2, 2)}  # content really moves, by different offsets per image


def test_augment_flip():
    x = _ramp()
    out = data.augment(x, _aug(horizontal_flip=True), seed=5).numpy()
    flipped = [np.array_equal(o, s[:, ::-1]) for o, s in zip(out, x.numpy())]
    kept = [np.array_equal(o, s) for o, s in zip(out, x.numpy())]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    np.testing.assert_array_equal(data.augment(x, _aug(), seed=5), x)  # nothing enabled: identity


def test_augment_cutout_zeroes_a_square():
    x = tf.ones((64, 12, 12, 3))
    out = data.augment(x, _aug(cutout=4), seed=tf.constant([3, 9])).numpy()
    interior = 0
    for img in out:
        zero = img[..., 0] == 0
        assert np.array_equal(zero, np.all(img == 0, axis=-1))  # all channels together
        rows, cols = np.nonzero(zero.any(axis=1))[0], np.nonzero(zero.any(axis=0))[0]
        assert 0 < len(rows) <= 4 and 0 < len(cols) <= 4
        assert zero.sum() == len(rows) * len(cols) and zero[np.ix_(rows, cols)].all()  # a rectangle
        if 0 < rows[0] and rows[-1] < 11 and 0 < cols[0] and cols[-1] < 11:
            assert zero.sum() == 16  # an interior centre: exactly a side x side square
            interior += 1
    assert interior > 5


def test_augment_is_deterministic_per_seed_and_traceable():
    x = _ramp()
    cfg = _aug(crop_padding=2, horizontal_flip=True, cutout=3)
    a = data.augment(x, cfg, seed=11)
    np.testing.assert_array_equal(a, data.augment(x, cfg, seed=11))
    assert not np.array_equal(a, data.augment(x, cfg, seed=12))
    traced = tf.function(lambda images, seed: data.augment(images, cfg, seed))
    spec = tf.TensorSpec([None, 8, 8, 2], tf.float32)
    out = traced.get_concrete_function(spec, tf.TensorSpec([2], tf.int64))(x, tf.constant([11, 0], tf.int64))
    np.testing.assert_array_equal(out, a)  # an int seed s means [s, 0]
    assert traced.get_concrete_function(spec, tf.TensorSpec([2], tf.int64)).output_shapes.as_list() == [None, 8, 8, 2]


def _windows_of(src, pad):
    """Every crop window, and its mirror image, of `src` zero-padded by `pad` pixels."""
    padded = np.pad(src, [(pad, pad), (pad, pad), (0, 0)])
    h, w = src.shape[:2]
    out = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[dy:dy + h, dx:dx + w]
            out[(dy, dx, False)], out[(dy, dx, True)] = window, window[:, ::-1]
    return out


def test_the_search_step_sees_cropped_flipped_images_with_black_padding():
    """Through train.steps.training_step as the DARTS search builds it (two streams, search.augmentation):
    each stream's batch is a crop of the black-padded image, sometimes mirrored, then normalised; the
    two streams and two steps get different crops; nothing is augmented without the setting."""
    from tfnas.train import steps
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (16, 8, 8, 3), dtype=np.uint8)  # no black pixel of their own
    labels = np.zeros(16, np.int64)
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    counter = tf.Variable(0, dtype=tf.int64)
    seen = []

    def spy(batches):
        seen.append(batches)
        return {"x0": batches[0][0], "x1": batches[1][0]}

    from tfnas import config
    aug = config.load_config(None, ["search.augmentation.crop_padding=2",
                                    "search.augmentation.horizontal_flip=true"]).search.augmentation
    step = steps.training_step(spy, 16, (8, 8, 3), mean, std, streams=2, augmentation=aug, seed=3, counter=counter)
    first = step(images, labels, images, labels)
    counter.assign_add(1)
    second = step(images, labels, images, labels)
    black = (0.0 - 0.5) / 0.25
    found = set()
    for out in (first["x0"], first["x1"], second["x0"], second["x1"]):
        pixels = out.numpy() * 0.25 + 0.5  # back to [0, 1]
        for img, src in zip(pixels, images):
            matches = [k for k, win in _windows_of(src / 255.0, 2).items() if np.allclose(win, img, atol=1e-5)]
            assert matches, "every image is a (possibly mirrored) window of the black-padded image"
            found.add(matches[0])
        assert (out.numpy() == black).any()  # black padding shows: normalised black, not the mean colour 0
    assert any(k[2] for k in found) and any(not k[2] for k in found)  # flipped and not
    assert len({k[:2] for k in found}) > 5  # many different crops
    assert not np.array_equal(first["x0"], first["x1"]) and not np.array_equal(first["x0"], second["x0"])
    plain = steps.training_step(spy, 16, (8, 8, 3), mean, std, streams=2)(images, labels, images, labels)
    np.testing.assert_allclose(plain["x0"], data.preprocess(images, mean, std), atol=1e-6)


def test_cutout_comes_after_normalisation_crop_before():
    x = tf.constant(np.full((32, 8, 8, 1), 200, np.uint8))
    mean, std = np.full(1, 0.2, np.float32), np.full(1, 0.5, np.float32)
    out = data.prepare_batch(x, mean, std, _aug(crop_padding=1, cutout=3), seed=4).numpy()
    white, black = (200 / 255 - 0.2) / 0.5, (0 - 0.2) / 0.5
    near = lambda v: np.isclose(out, v, atol=1e-5)  # noqa: E731
    assert (near(white) | near(black) | near(0.0)).all()
    assert near(0.0).any() and near(black).any()  # the cutout square has the mean colour, the padding is black
