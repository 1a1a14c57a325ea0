import random

import pytest
import torch
from PIL import Image

from scratchdet.data.classification import (
    TEXTURE_CLASSES,
    ImageFolderClassification,
    RandomResizedCropFlip,
    ResizeCenterCrop,
    SyntheticClassification,
    build_classification_train_loader,
    build_classification_transform,
    write_synthetic_classification,
)
from scratchdet.errors import ConfigError, DataError


def test_synthetic_images_are_a_pure_function_of_seed_split_and_index():
    a = SyntheticClassification(20, num_classes=5, size=32, seed=3)
    b = SyntheticClassification(20, num_classes=5, size=32, seed=3)
    for i in (0, 7, 19):
        image, label = a[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert torch.equal(image, b[i][0]) and label == b[i][1] == i % 5
    # Reading in another order, or after other reads, changes nothing.
    assert torch.equal(a[7][0], SyntheticClassification(20, num_classes=5, size=32, seed=3)[7][0])


def test_synthetic_splits_and_seeds_differ():
    train = SyntheticClassification(10, size=32, split="train")
    val = SyntheticClassification(10, size=32, split="val")
    other_seed = SyntheticClassification(10, size=32, seed=1)
    for i in range(10):
        assert not torch.equal(train[i][0], val[i][0])
        assert not torch.equal(train[i][0], other_seed[i][0])
        assert train[i][1] == val[i][1]  # same label layout, different images


def test_synthetic_has_every_class_and_rejects_bad_counts():
    ds = SyntheticClassification(len(TEXTURE_CLASSES) * 2, num_classes=len(TEXTURE_CLASSES), size=24)
    assert sorted({ds[i][1] for i in range(len(ds))}) == list(range(len(TEXTURE_CLASSES)))
    assert ds.classes == list(TEXTURE_CLASSES)
    with pytest.raises(ConfigError, match="num_classes=13"):
        SyntheticClassification(10, num_classes=13)


def test_sample_seed_decides_the_augmentation_not_the_image():
    ds = SyntheticClassification(4, size=48, transform=build_classification_transform(32, train=True))
    assert torch.equal(ds[(1, 123)][0], ds[(1, 123)][0])
    assert not torch.equal(ds[(1, 123)][0], ds[(1, 124)][0])
    assert ds[(1, 123)][0].shape == (3, 32, 32)


def test_train_transform_output_size_and_flip_from_rng():
    image = torch.randint(0, 256, (3, 50, 80), dtype=torch.uint8)
    crop = RandomResizedCropFlip(24)
    for seed in range(20):
        out = crop(image, random.Random(seed))
        assert out.shape == (3, 24, 24) and out.dtype == torch.uint8
        top, left, h, w = crop.crop_box(50, 80, random.Random(seed))
        assert 0 <= top <= 50 - h and 0 <= left <= 80 - w and h > 0 and w > 0
    # flip_prob=1 with the full image as crop box is a plain mirror.
    full = RandomResizedCropFlip(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)
    square = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    assert torch.equal(full(square, random.Random(0)), square.flip(-1))


def test_eval_transform_resizes_short_side_then_centre_crops():
    t = ResizeCenterCrop(224)
    assert t.resize == 256
    out = t(torch.zeros(3, 300, 500, dtype=torch.uint8))
    assert out.shape == (3, 224, 224)
    assert ResizeCenterCrop(32)(torch.zeros(3, 64, 40, dtype=torch.uint8)).shape == (3, 32, 32)
    assert isinstance(build_classification_transform(32, train=False), ResizeCenterCrop)


def test_write_synthetic_then_image_folder_round_trip(tmp_path):
    summary = write_synthetic_classification(tmp_path, num_classes=3, train_per_class=4, val_per_class=2, size=24)
    assert summary["train_images"] == 12 and summary["val_images"] == 6
    assert summary["classes"] == ["00_horizontal_stripes", "01_vertical_stripes", "02_diagonal_stripes"]
    for split in ("train", "val"):
        folder = ImageFolderClassification(tmp_path / split)
        generated = SyntheticClassification(len(folder), num_classes=3, size=24, split=split)
        assert folder.classes == summary["classes"] and len(folder) == len(generated)
        by_name = {path: label for path, label in folder.samples}
        for i in range(len(generated)):
            path = str(tmp_path / split / summary["classes"][generated.label(i)] / f"{i:06d}.png")
            assert by_name[path] == generated.label(i)
            index = [p for p, _ in folder.samples].index(path)
            image, label = folder[index]
            assert label == generated.label(i)
            assert torch.equal(image, generated[i][0])  # PNG is lossless: pixel-identical


def test_image_folder_with_transform_and_val_classes_from_train(tmp_path):
    write_synthetic_classification(tmp_path, num_classes=2, train_per_class=2, val_per_class=1, size=40)
    train = ImageFolderClassification(tmp_path / "train", build_classification_transform(32, train=True))
    val = ImageFolderClassification(
        tmp_path / "val", build_classification_transform(32, train=False), classes=train.classes
    )
    assert train[(0, 5)][0].shape == val[0][0].shape == (3, 32, 32)
    assert val.num_classes == 2


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="image folder not found.*missing"):
        ImageFolderClassification(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        ImageFolderClassification(tmp_path / "empty")
    (tmp_path / "split" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="class folder 'cat' holds no images"):
        ImageFolderClassification(tmp_path / "split")
    Image.new("RGB", (8, 8)).save(tmp_path / "split" / "cat" / "ok.png")
    (tmp_path / "split" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolderClassification(tmp_path / "split")
    broken = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.jpg")][0]
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.jpg"):
        ds[broken]
    with pytest.raises(DataError, match=r"not among the 1 training classes"):
        (tmp_path / "split" / "dog").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "split" / "dog" / "a.png")
        ImageFolderClassification(tmp_path / "split", classes=["cat"])


def test_train_loader_stream_resumes_at_the_same_batch():
    ds = SyntheticClassification(10, size=24, transform=build_classification_transform(16, train=True))
    straight = iter(build_classification_train_loader(ds, 4, seed=1))
    batches = [next(straight) for _ in range(3)]
    resumed = next(iter(build_classification_train_loader(ds, 4, seed=1, start_iter=2)))
    assert torch.equal(batches[2][0], resumed[0]) and torch.equal(batches[2][1], resumed[1])
    assert batches[0][0].shape == (4, 3, 16, 16) and batches[0][1].dtype == torch.int64
