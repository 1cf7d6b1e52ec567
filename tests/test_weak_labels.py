import torch

from studylib.config import TagsConfig
from studylib.data import synthetic
from studylib.weak_labels import multi_hot, simulate


def test_hashtags_are_noisy_long_tailed_and_seeded():
    data = synthetic(4000, 10)
    config = TagsConfig(p_true=0.7, noise_vocab=50)
    tags = simulate(data, config)
    stats = tags.stats()
    assert stats["vocab_size"] > 3 * data.num_classes
    assert abs(stats["missing_true_tag"] - 0.3) < 0.03
    assert stats["tags_per_image_mean"] > 1.5
    assert stats["top10pct_tag_share"] > 0.3  # a few tags carry much of the mass
    assert ((tags.tags >= 0).sum(1) >= 1).all()  # nobody is left without a tag
    assert torch.equal(simulate(data, config).tags, tags.tags)
    assert not torch.equal(simulate(data, TagsConfig(seed=1, p_true=0.7, noise_vocab=50)).tags, tags.tags)


def test_true_tag_is_the_class_name():
    data = synthetic(200, 10)
    tags = simulate(data, TagsConfig(p_true=1.0, p_wrong=0.0))
    captions = tags.captions()
    for label, caption in zip(data.train_labels[:20].tolist(), captions[:20], strict=True):
        assert f"#{data.classes[label]}" in caption.split()


def test_multi_hot_targets_sum_to_one():
    tags = torch.tensor([[3, 5, -1], [0, -1, -1], [1, 2, 4]])
    targets = multi_hot(tags, 6)
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert targets[0, 3] == 0.5 and targets[0, 5] == 0.5 and targets[1, 0] == 1
