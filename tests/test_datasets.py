"""Data loaders: documented shapes and dtypes, determinism, tfds path under mock data, caching, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lopt.tasks import datasets, sampling, tfds_source
from lopt.tasks.corpus import VOCAB_SIZE, load_corpus
from lopt.tasks.datasets import DatasetError, load_images


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPT_CACHE", str(tmp_path))
    datasets.clear_cache()
    yield tmp_path
    datasets.clear_cache()


def _check_layout(data, shape, num_classes, n_train=None, n_valid=None):
    for split, n in (("train", n_train), ("valid", n_valid)):
        image, label = data[split]["image"], data[split]["label"]
        assert image.dtype == np.float32 and label.dtype == np.int32
        assert image.shape[1:] == shape and label.shape == image.shape[:1]
        assert n is None or len(label) == n
        assert label.min() >= 0 and label.max() < num_classes
        assert np.all(np.isfinite(image))


def test_digits_8x8_layout_and_normalization():
    data = load_images("digits")
    _check_layout(data, (8, 8, 1), 10, 1437, 360)
    train = data["train"]["image"]
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1.0) < 1e-3
    assert len(np.unique(data["train"]["label"])) == 10
    assert not data["train"]["image"].flags.writeable  # shared, memoized copy


def test_digits_16x16_and_determinism():
    data = load_images("digits", image_size=16)
    _check_layout(data, (16, 16, 1), 10, 1437, 360)
    datasets.clear_cache()
    again = load_images("digits", image_size=16)
    np.testing.assert_array_equal(data["train"]["image"], again["train"]["image"])
    np.testing.assert_array_equal(data["valid"]["label"], again["valid"]["label"])


def test_unknown_dataset_and_bad_arguments():
    with pytest.raises(DatasetError, match="valid datasets: cifar10, cifar100, digits, fashion_mnist, mnist"):
        load_images("imagenet")
    with pytest.raises(DatasetError, match="image_size"):
        load_images("digits", image_size=0)


def test_tfds_under_mock_is_converted_resized_and_cached(fresh_cache):
    with tfds.testing.mock_data(num_examples=12):
        native = load_images("cifar100", max_examples=10)
        small = load_images("svhn_cropped", image_size=16, max_examples=10)
    _check_layout(native, (32, 32, 3), 100, 10, 10)
    _check_layout(small, (16, 16, 3), 10, 10, 10)
    path = tfds_source.cache_path("svhn_cropped", 16, 10)
    assert os.path.exists(path)
    # The cache alone now serves the data: no tfds (mock or real) needed.
    datasets.clear_cache()
    cached = load_images("svhn_cropped", image_size=16, max_examples=10)
    np.testing.assert_array_equal(cached["train"]["image"], small["train"]["image"])
    with np.load(path, allow_pickle=False) as f:
        assert f["train_image"].dtype == np.uint8 and f["train_label"].dtype == np.int32
    assert "tensorflow" not in sys.modules


def test_corrupted_cache_is_rebuilt(fresh_cache):
    path = tfds_source.cache_path("mnist", None, 5)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"not a zip file")
    with tfds.testing.mock_data(num_examples=8), pytest.warns(UserWarning, match="corrupted"):
        data = load_images("mnist", max_examples=5)
    _check_layout(data, (28, 28, 1), 10, 5, 5)


def test_unavailable_dataset_gives_one_clear_error(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty_tfds"))
    monkeypatch.setenv("LOPT_NO_DOWNLOAD", "1")  # never touch the network in tests
    with pytest.raises(DatasetError, match="not available offline.*internet.*TFDS_DATA_DIR") as err:
        load_images("fashion_mnist")
    assert "\n" not in str(err.value)


def test_importing_tasks_does_not_import_tensorflow():
    code = "import sys, lopt.tasks.datasets, lopt.tasks.registry, lopt.tasks.cli; assert 'tensorflow' not in sys.modules"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_corpus_is_ascii_tokens():
    corpus = load_corpus()
    assert corpus["train"].dtype == np.uint8 and corpus["train"].size > 100_000
    assert corpus["valid"].size > 10_000
    assert int(max(corpus["train"].max(), corpus["valid"].max())) < VOCAB_SIZE


def test_sampling_respects_fraction_and_noise():
    key = jax.random.PRNGKey(0)
    idx = sampling.sample_indices(key, 1000, 4096, 0.05)
    assert idx.dtype == jnp.int32 and int(idx.max()) < 50 and int(idx.min()) >= 0
    assert int(sampling.sample_indices(key, 1000, 4096, 1.0).max()) > 900
    labels = jnp.zeros((4096,), jnp.int32)
    np.testing.assert_array_equal(sampling.noisy_labels(key, labels, 10, 0.0), labels)
    changed = float(jnp.mean(sampling.noisy_labels(key, labels, 10, 1.0) != 0))
    assert 0.85 < changed < 0.95  # a random class is sometimes the old one


def test_valid_split_is_clean():
    from lopt.tasks.registry import get_task

    task = get_task("mlp_digits")
    data = task.load_data()
    noisy = {"init_scale": jnp.float32(1.0), "label_noise": jnp.float32(1.0), "data_fraction": jnp.float32(0.1)}
    key = jax.random.PRNGKey(1)
    assert task.sample_batch(data, key, "valid", noisy)["label"].shape == (128,)
    clean = task.sample_batch(data, key, "valid")
    np.testing.assert_array_equal(task.sample_batch(data, key, "valid", noisy)["label"], clean["label"])
