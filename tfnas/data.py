"""Datasets, search splits, resumable minibatch streams, preprocessing and augmentation.

Datasets are held as numpy arrays in memory (uint8 NHWC images, integer labels): the datasets tfnas
targets (digits, MNIST, CIFAR-10) fit easily, and plain arrays make seeded, exactly resumable
iteration (`BatchStream`) trivial, which a checkpoint taken inside an epoch needs.
`preprocess` and `augment` are pure TensorFlow ops so that they can run inside a traced training step
and, for `preprocess`, inside the exported serving graph.
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
import socket
import threading
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np
import tensorflow as tf

from tfnas.errors import UserError
from tfnas.proto import config_pb2

DIGITS = "digits"
_DIGITS_TEST_SIZE = 297
_DIGITS_SPLIT_SEED = 0
_RESIZE_CHUNK = 4096
_NETWORK_TIMEOUT_S = 3.0
_FALLBACK_HOST = "storage.googleapis.com"


class DataError(UserError):
    """A dataset cannot be loaded or used as configured (the message says what is wrong)."""


@dataclasses.dataclass
class Dataset:
    """An in-memory image-classification dataset: uint8 NHWC images and 1-D integer labels."""

    name: str
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: list[str]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image."""
        return tuple(int(d) for d in self.train[0].shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------------------------
# Loading


def load_dataset(config: config_pb2.DataConfig) -> Dataset:
    """Loads `config.dataset` into memory, truncated and resized as configured.

    "digits" is built in (see `_load_digits`) so that tfnas runs and tests anywhere, offline. Any other
    name is a tensorflow-datasets image-classification dataset, read from `config.data_dir` (empty:
    the tfds default). A dataset that is not prepared is downloaded only when `config.download` is
    set, and only after a quick reachability check: without network tfds would retry DNS for
    minutes before failing.
    """
    name = config.dataset.strip()
    if not name:
        raise DataError("data.dataset is empty; use 'digits' or a tensorflow-datasets name such as 'cifar10'")
    if name == DIGITS:
        ds = _load_digits(config.train_split, config.test_split)
    else:
        ds = _load_tfds(name, config)
    ds.train = _limit(ds.train, config.max_train_examples)
    ds.test = _limit(ds.test, config.max_test_examples)
    if config.image_size < 0:
        raise DataError(f"data.image_size must be >= 0, got {config.image_size}")
    if config.image_size > 0:
        ds.train = (_resize(ds.train[0], config.image_size), ds.train[1])
        ds.test = (_resize(ds.test[0], config.image_size), ds.test[1])
    return ds


def _load_digits(train_split: str, test_split: str) -> Dataset:
    """The UCI optical-recognition-of-handwritten-digits test set as shipped with scikit-learn.

    1,797 grey 8x8 images of the digits 0-9 (Alpaydin & Kaynak, UCI ML repository), read from the CSV
    inside scikit-learn's wheel (`sklearn.datasets.load_digits`; scikit-learn is BSD-3 licensed), so no
    download is ever needed. Pixels 0..16 are scaled to 0..255. The split is a fixed-seed permutation:
    1,500 training and 297 test examples, identical on every machine.
    """
    pixels, labels = _digits_csv()
    images = np.round(pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    labels = labels.astype(np.int64)
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
    cut = len(labels) - _DIGITS_TEST_SIZE
    splits = {"train": order[:cut], "test": order[cut:]}
    picked = []
    for field, split in (("train_split", train_split or "train"), ("test_split", test_split or "test")):
        if split not in splits:
            raise DataError(f"data.{field} '{split}' is not a split of 'digits' (splits: train, test)")
        picked.append((images[splits[split]], labels[splits[split]]))
    return Dataset(DIGITS, picked[0], picked[1], [str(i) for i in range(10)])


def _digits_csv() -> tuple[np.ndarray, np.ndarray]:
    """(pixels [n, 64], labels [n]) from scikit-learn's digits.csv.gz, read without importing scikit-learn
    (which takes about a second: a tenth of the default search's start-up)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = pathlib.Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.exists():
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            return table[:, :-1], table[:, -1]
    from sklearn.datasets import load_digits  # a layout this code does not know: ask scikit-learn

    raw = load_digits()
    return raw.data, raw.target


def _load_tfds(name: str, config: config_pb2.DataConfig) -> Dataset:
    """Reads an image-classification dataset of tensorflow-datasets (preparing it if allowed)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=config.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(_unknown_name_message(name, tfds.list_builders(with_community_datasets=False))) from None
    where = str(getattr(builder, "data_dir_root", None) or config.data_dir or builder.data_dir)
    if not _is_prepared(builder):
        if not config.download:
            raise DataError(
                f"dataset '{name}' is not prepared in {where}; run with data.download=true on a machine "
                "with network, or prepare it with tfds first"
            )
        host = _download_host(builder)
        if not _reachable(host, 443, _NETWORK_TIMEOUT_S):
            raise DataError(
                f"dataset '{name}' is not prepared in {where} and its download host {host}:443 is unreachable "
                f"within {_NETWORK_TIMEOUT_S:g} s; prepare it on a machine with network and copy the data_dir"
            )
        try:
            builder.download_and_prepare()
        except Exception as e:  # tfds raises many kinds; keep the reason, one line
            raise DataError(f"downloading/preparing dataset '{name}' into {where} failed: {e}".splitlines()[0]) from e

    image_key, label_key, label_names = _check_features(name, builder.info)
    image_shape = builder.info.features[image_key].shape
    splits = sorted(builder.info.splits.keys())
    parts = []
    for field, split, limit in (
        ("train_split", config.train_split or "train", config.max_train_examples),
        ("test_split", config.test_split or "test", config.max_test_examples),
    ):
        try:
            tf_ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        except (ValueError, KeyError) as e:
            raise DataError(f"data.{field} '{split}' is not a valid split of '{name}' (splits: {', '.join(splits)})") from e
        if limit > 0:
            tf_ds = tf_ds.take(limit)
        if None in image_shape:  # varying image sizes cannot be batched: resize each image first
            if config.image_size <= 0:
                raise DataError(f"dataset '{name}' has images of varying size {image_shape}; set data.image_size")
            size = config.image_size
            tf_ds = tf_ds.map(lambda x, y: (_resize_tf(x[None], size)[0], y))
        parts.append(_materialise(tfds.as_numpy(tf_ds.batch(1024)), name, split))
    return Dataset(name, parts[0], parts[1], list(label_names))


def _is_prepared(builder: Any) -> bool:
    if hasattr(builder, "is_prepared"):
        return bool(builder.is_prepared())
    return tf.io.gfile.exists(f"{builder.data_dir}/dataset_info.json")


def _check_features(name: str, info: Any) -> tuple[str, str, Sequence[str]]:
    """Checks that a tfds dataset is (uint8 HxWxC image, ClassLabel) supervised data."""
    import tensorflow_datasets as tfds

    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        raise DataError(f"dataset '{name}' has no (image, label) supervised keys: {keys}")
    image, label = info.features[keys[0]], info.features[keys[1]]
    if not isinstance(image, tfds.features.Image) or tf.as_dtype(image.dtype) != tf.uint8 or len(image.shape) != 3:
        raise DataError(f"dataset '{name}': feature '{keys[0]}' is not a uint8 HxWxC image: {image!r}")
    if not isinstance(label, tfds.features.ClassLabel):
        raise DataError(f"dataset '{name}': feature '{keys[1]}' is not a class label: {label!r}")
    return keys[0], keys[1], label.names


def _materialise(batches: Any, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in batches:
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError(f"split '{split}' of dataset '{name}' is empty")
    return np.concatenate(xs).astype(np.uint8, copy=False), np.concatenate(ys)


def _unknown_name_message(name: str, known: Sequence[str]) -> str:
    base = name.split(":")[0].split("/")[0]
    close = difflib.get_close_matches(base, list(known), n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see tfds.list_builders()"
    return f"unknown dataset '{name}': neither 'digits' nor a tensorflow-datasets dataset{hint}"


def _download_host(builder: Any) -> str:
    """The host of the dataset's first registered download URL, else Google Cloud Storage."""
    try:
        urls = list(builder.url_infos or {})
    except Exception:  # builders without a checksums file
        urls = []
    host = urlparse(urls[0]).hostname if urls else None
    return host or _FALLBACK_HOST


def _reachable(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds, DNS lookup included.

    socket's timeout does not bound name resolution, so the probe runs in a daemon thread that is
    abandoned when the time is up.
    """
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _limit(split: tuple[np.ndarray, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    if n < 0:
        raise DataError(f"max examples must be >= 0, got {n}")
    return (split[0][:n], split[1][:n]) if n > 0 else split


def _resize_tf(images: tf.Tensor, size: int) -> tf.Tensor:
    resized = tf.image.resize(images, (size, size), method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 NHWC array to size x size (in chunks to bound float memory)."""
    if images.shape[1:3] == (size, size):
        return images
    chunks = [_resize_tf(images[i : i + _RESIZE_CHUNK], size).numpy() for i in range(0, len(images), _RESIZE_CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros((0, size, size, images.shape[-1]), np.uint8)


# ----------------------------------------------------------------------------------------------
# Normalisation and splits


def normalization(dataset: Dataset, config: config_pb2.DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in the 0..1 pixel scale, as `preprocess` expects.

    Taken from config.mean/config.std when given (e.g. the customary CIFAR-10 constants), otherwise
    computed exactly from the training images through per-channel histograms (no float copy of the
    whole training set). A channel of constant value gets std 1 instead of 0.
    """
    channels = dataset.image_shape[-1]
    if config.mean or config.std:
        mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
        if len(mean) != channels or len(std) != channels:
            raise DataError(
                f"data.mean has {len(mean)} and data.std {len(std)} values; dataset '{dataset.name}' has {channels} channels"
            )
        if np.any(std <= 0):
            raise DataError(f"data.std must be positive, got {std.tolist()}")
        return mean, std
    images = dataset.train[0]
    if len(images) == 0:
        raise DataError(f"dataset '{dataset.name}' has no training images to compute normalisation from")
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = np.empty(channels, np.float32), np.empty(channels, np.float32)
    for c in range(channels):
        counts = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        p = counts / counts.sum()
        m = float(p @ values)
        mean[c], std[c] = m, np.sqrt(max(float(p @ values**2) - m * m, 0.0))
    std[std < 1e-6] = 1.0
    return mean, std


def search_split(
    dataset: Dataset, fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Splits the training set as DARTS does: the first int(fraction * N) examples train the weights,
    the rest train the architecture (alphas). No shuffle before splitting (DARTS's indices[:split] /
    indices[split:]); the datasets' training splits are already in random order.
    """
    x, y = dataset.train
    cut = int(fraction * len(x))
    if not 0.0 < fraction < 1.0 or cut == 0 or cut == len(x):
        raise DataError(
            f"data.search_train_fraction {fraction} must leave both parts of the {len(x)} training examples non-empty"
        )
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


# ----------------------------------------------------------------------------------------------
# Batches


class BatchStream:
    """An endless stream of shuffled minibatches whose position can be saved and restored exactly.

    Epoch e visits the examples in the order np.random.default_rng([seed, e]).permutation(N), so the
    order of any epoch depends only on (seed, e) and a stream restored with `set_state` continues with
    exactly the batches an uninterrupted stream would have produced, even inside an epoch.
    With drop_remainder the last N % batch_size examples of each epoch's order are skipped.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, drop_remainder: bool = True):
        if len(x) != len(y):
            raise DataError(f"images and labels differ in length: {len(x)} vs {len(y)}")
        if batch_size <= 0:
            raise DataError(f"batch size must be positive, got {batch_size}")
        if len(x) == 0 or (drop_remainder and len(x) < batch_size):
            raise DataError(f"only {len(x)} examples, fewer than one batch of {batch_size}")
        self._x, self._y = x, y
        self.batch_size, self.seed, self.drop_remainder = int(batch_size), int(seed), drop_remainder
        self._epoch, self._position = 0, 0
        self._order_epoch, self._order = -1, np.empty(0, np.int64)

    @property
    def num_examples(self) -> int:
        return len(self._x)

    @property
    def steps_per_epoch(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._order_epoch = epoch
        return self._order

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (uint8 images, labels) batch; moves to the next epoch eagerly after its last batch,
        so that the state at an epoch boundary reads (epoch + 1, 0)."""
        start = self._position
        idx = self._permutation(self._epoch)[start : start + self.batch_size]
        self._position = start + len(idx)
        remaining = self.num_examples - self._position
        if remaining == 0 or (self.drop_remainder and remaining < self.batch_size):
            self._epoch, self._position = self._epoch + 1, 0
        return self._x[idx], self._y[idx]

    __next__ = next

    def __iter__(self) -> BatchStream:
        return self

    def get_state(self) -> dict[str, int]:
        """Where the stream is: {"epoch": e, "position": index into epoch e's order of the next batch}."""
        return {"epoch": self._epoch, "position": self._position}

    def set_state(self, state: dict[str, int]) -> None:
        """Continues from a state returned by get_state (of a stream over the same data and seed)."""
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"batch stream state must hold integer 'epoch' and 'position': {state!r}") from e
        if epoch < 0 or not 0 <= position < self.num_examples:
            raise DataError(f"batch stream state {state!r} is out of range for {self.num_examples} examples")
        self._epoch, self._position = epoch, position


# ----------------------------------------------------------------------------------------------
# Preprocessing and augmentation (pure TensorFlow)


def preprocess(images_uint8: tf.Tensor, mean: Any, std: Any) -> tf.Tensor:
    """uint8 images -> float32 (x / 255 - mean) / std, per channel.

    Pure TF ops, so that training and the exported serving graph normalise identically.
    """
    x = tf.cast(images_uint8, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def augment(images: tf.Tensor, config: config_pb2.AugmentationConfig, seed: tf.Tensor | int) -> tf.Tensor:
    """Per-image random crop after zero padding, horizontal flip and cutout of an NHWC batch, in that
    order, on the values as given (see `prepare_batch` for where training applies each).

    The DARTS recipes: the search crops and flips (crop 32 with padding 4), the evaluation also cuts out
    (side 16; DeVries & Taylor 2017). Stateless random ops seeded from `seed` (an int or a shape-[2]
    integer tensor, e.g. derived from the step) make it reproducible and traceable in a tf.function; masks
    and gathers keep it vectorised. Cutout's centre is uniform over the image and the square is clipped at
    the borders.
    """
    seeds = _augmentation_seeds(seed)
    return _cutout(_crop_and_flip(tf.convert_to_tensor(images), config, seeds), config, seeds)


def prepare_batch(images_uint8: tf.Tensor, mean: Any, std: Any, config: config_pb2.AugmentationConfig | None = None,
                  seed: tf.Tensor | int = 0, window: tuple[Any, int] | None = None) -> tf.Tensor:
    """A training batch as the network sees it: uint8 images cropped (black padding, as torchvision pads
    before ToTensor) and flipped, normalised (`preprocess`), then cut out (the square reads 0, the mean
    colour, as the DARTS code's Cutout after Normalize). Without `config`, only normalised.

    `window=(start, size)`: the images are rows start.. of a global batch of `size` (one replica's share),
    and take the random draws of those rows, so the global batch is augmented as on one device."""
    if not augments(config):
        return preprocess(images_uint8, mean, std)
    seeds = _augmentation_seeds(seed)
    return _cutout(preprocess(_crop_and_flip(images_uint8, config, seeds, window), mean, std), config, seeds, window)


# Named, not "auto_select": that picks another generator under XLA (jit_compile, TPUs), and the same seed
# must crop the same way everywhere. Philox is what auto_select picks on CPUs and GPUs.
RNG = "philox"


def _draw(shape: list, seed: tf.Tensor, window: tuple[Any, int] | None, n, **kw) -> tf.Tensor:
    """Stateless uniform draws of `shape` (the batch axis last), for the window's rows of the global batch."""
    if window is None:
        return tf.random.stateless_uniform(shape + [n], seed, alg=RNG, **kw)
    start, size = window
    draws = tf.random.stateless_uniform(shape + [size], seed, alg=RNG, **kw)
    return tf.slice(draws, [0] * len(shape) + [start], shape + [n])


def augments(config: config_pb2.AugmentationConfig | None) -> bool:
    """Whether `config` changes a batch at all (crop, flip or cutout set)."""
    return config is not None and bool(config.crop_padding or config.horizontal_flip or config.cutout)


def _augmentation_seeds(seed: tf.Tensor | int) -> list[tf.Tensor]:
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
    return tf.unstack(tf.random.experimental.stateless_split(seed, 4, alg=RNG))  # crop, flip, cutout rows, columns


def _crop_and_flip(images: tf.Tensor, config: config_pb2.AugmentationConfig, seeds: list[tf.Tensor],
                   window: tuple[Any, int] | None = None) -> tf.Tensor:
    crop_seed, flip_seed = seeds[0], seeds[1]
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    out = images
    pad = int(config.crop_padding)
    if pad > 0:
        padded = tf.pad(out, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = _draw([2], crop_seed, window, n, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
        rows = offsets[0][:, None] + tf.range(h)[None]  # [N, H] rows of the padded image to keep
        cols = offsets[1][:, None] + tf.range(w)[None]  # [N, W]
        out = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    if config.horizontal_flip:
        # An integer draw: XLA turns the generator's bits into floats otherwise than TF's kernels do, so a
        # float draw flipped other images under jit_compile; integer draws agree everywhere.
        flip = _draw([], flip_seed, window, n, minval=0, maxval=2, dtype=tf.int32) > 0
        out = tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)
    out.set_shape(images.shape)
    return out


def _cutout(images: tf.Tensor, config: config_pb2.AugmentationConfig, seeds: list[tf.Tensor],
            window: tuple[Any, int] | None = None) -> tf.Tensor:
    side = int(config.cutout)
    if side <= 0:
        return images
    cut_y_seed, cut_x_seed = seeds[2], seeds[3]
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    cy = _draw([], cut_y_seed, window, n, minval=0, maxval=h, dtype=tf.int32)
    cx = _draw([], cut_x_seed, window, n, minval=0, maxval=w, dtype=tf.int32)
    y0, x0 = cy - side // 2, cx - side // 2
    in_rows = _between(tf.range(h)[None], y0[:, None], y0[:, None] + side)  # [N, H]
    in_cols = _between(tf.range(w)[None], x0[:, None], x0[:, None] + side)  # [N, W]
    keep = tf.logical_not(in_rows[:, :, None] & in_cols[:, None, :])
    out = images * tf.cast(keep, images.dtype)[..., None]
    out.set_shape(images.shape)
    return out


def _between(v: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
    return (v >= lo) & (v < hi)
