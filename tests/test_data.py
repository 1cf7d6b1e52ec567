import pytest
import torch
from PIL import Image

from studylib.batches import MEAN, STD, Batches, ImageTransform
from studylib.data import load_dataset, synthetic
from studylib.errors import DataError
from studylib.image_folder import cached_image_folder, image_folder


def _folder(root, classes=("cat", "dog"), per_class=3, size=8):
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", (size, size), (40 * i, 10 * j, 200)).save(
                    root / split / name / f"{j}.png"
                )
    return root


def test_image_folder_reads_classes_and_splits(tmp_path):
    data = image_folder(_folder(tmp_path))
    assert data.classes == ["cat", "dog"]
    assert data.train_images.shape == (6, 3, 8, 8) and data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test_images.shape[0] == 6
    assert data.train_images[3, 0, 0, 0] == 40  # dog's red channel


def test_a_pool_needs_only_train_and_imagenets_val_is_the_test_split(tmp_path):
    import shutil

    pool = _folder(tmp_path / "pool")
    shutil.rmtree(pool / "test")
    data = image_folder(pool)
    assert len(data.train_labels) == 6 and len(data.test_labels) == 0
    imagenet = _folder(tmp_path / "imagenet", per_class=2)
    (imagenet / "test").rename(imagenet / "val")
    data = image_folder(imagenet)
    assert len(data.test_labels) == 4 and data.test_labels.tolist() == [0, 0, 1, 1]


def test_an_image_folder_is_decoded_once_then_read_from_the_cache_until_an_image_changes(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("STUDYLIB_CACHE", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "pets")
    first = cached_image_folder(folder)
    (cache,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in cache.iterdir()) == [
        "classes.json",
        "test_images.npy",
        "test_labels.npy",
        "train_images.npy",
        "train_labels.npy",
    ]
    cached = cached_image_folder(folder)
    for part in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, part), getattr(cached, part))
    assert cached.classes == first.classes == ["cat", "dog"]
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "train" / "dog" / "0.png")
    changed = cached_image_folder(folder)
    assert changed.train_images[3, :, 0, 0].tolist() == [1, 2, 3]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_image_folder_errors_name_the_path(tmp_path):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        image_folder(tmp_path / "empty")
    folder = _folder(tmp_path / "bad")
    (folder / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken.jpg: not a readable image"):
        image_folder(folder)
    with pytest.raises(DataError, match="no such image folder"):
        load_dataset(str(tmp_path / "missing"))


def test_missing_data_directory_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYLIB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="data directory does not exist"):
        load_dataset("cifar100")


def test_augmented_batches_are_normalised_and_sized():
    data = synthetic(300, 10)
    batches = Batches(
        data.train_images, data.train_labels, 64, torch.device("cpu"), ImageTransform(48, 0.3)
    )
    assert len(batches) == 4  # drop_last
    torch.manual_seed(0)
    x, y = next(iter(batches))
    assert x.shape == (64, 3, 48, 48) and x.dtype == torch.float32 and y.shape == (64,)
    assert -3 < x.mean() < 3 and x.std() > 0.1
    torch.manual_seed(0)
    again, _ = next(iter(batches))
    assert torch.equal(x, again)  # the global seed decides every crop, flip and order


def test_per_class_picks_exactly_k():
    data = synthetic(300, 10)
    picked = data.per_class(5, seed=0)
    assert torch.bincount(data.train_labels[picked], minlength=10).tolist() == [5] * 10


def test_random_resized_crop_takes_a_window_of_the_image():
    """On a horizontal ramp (pixel value = column), every output row must be a contiguous, evenly
    spaced piece of the ramp, increasing or (flipped) decreasing, inside the image; both directions
    occur."""
    ramp = torch.arange(64, dtype=torch.float32).repeat(64, 1)  # (64, 64), value = column
    images = (ramp * 4).clamp(max=255).byte().expand(256, 3, 64, 64)
    transform = ImageTransform(16, crop_min=0.3)
    torch.manual_seed(0)
    x = transform(images)
    row = (x[:, 0, 8] * STD[0] + MEAN[0]) * 255 / 4  # back to column numbers
    steps = row[:, 1:] - row[:, :-1]
    assert (steps.abs().std(dim=1) < 0.05).all()  # evenly spaced
    widths = (row[:, -1] - row[:, 0]).abs() * 16 / 15
    assert (widths > 64 * 0.3**0.5 * 0.75 - 1).all() and (widths <= 64 + 1e-3).all()
    assert (row.min(dim=1).values >= -0.5).all() and (row.max(dim=1).values <= 63.5).all()
    flipped = (steps.mean(dim=1) < 0).float().mean()
    assert 0.35 < flipped < 0.65


def test_batches_draw_images_per_epoch_in_whole_shuffled_passes():
    images = torch.arange(10).view(10, 1, 1, 1).to(torch.uint8)
    longer = Batches(images, torch.arange(10), 4, torch.device("cpu"), images_per_epoch=25)
    assert len(longer) == 6  # 25 images drawn, whole batches of 4
    drawn = torch.cat([x.flatten() for x, _ in longer]).tolist()
    # passes end to end
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:20]) == list(range(10))
    shorter = Batches(images, torch.arange(10), 2, torch.device("cpu"), images_per_epoch=6)
    drawn = torch.cat([x.flatten() for x, _ in shorter]).tolist()
    assert len(drawn) == 6 and len(set(drawn)) == 6  # part of one pass, no image twice


def test_datasets_joined_by_plus_keep_their_classes_apart(tmp_path):
    a, b = (
        _folder(tmp_path / "a", ("cat", "dog")),
        _folder(tmp_path / "b", ("ant", "bee", "cow"), per_class=2),
    )
    both = load_dataset(f"{a}+{b}")
    assert len(both.train_labels) == 6 + 6 and both.num_classes == 5
    assert both.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert both.classes[2].endswith(":ant") and len(both.test_images) == 12
    small = _folder(tmp_path / "small", size=4)
    with pytest.raises(DataError, match="different sizes"):
        load_dataset(f"{a}+{small}")
