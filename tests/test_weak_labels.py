import torch

from studylib.config import load_experiment
from studylib.data import synthetic
from studylib.schema import TagsConfig
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
    assert not torch.equal(
        simulate(data, TagsConfig(seed=1, p_true=0.7, noise_vocab=50)).tags, tags.tags
    )


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


def test_rare_tags_weigh_their_repeat_factor_as_if_their_images_were_repeated():
    from torch import nn

    from studylib.stages.wsp import repeat_factors, wsp_loss

    # shares 0.5, 0.05, 0.01, 0
    factors = repeat_factors(torch.tensor([50, 5, 1, 0]), 100, threshold=0.1)
    assert torch.allclose(factors[:3], torch.tensor([1.0, 2**0.5, 10**0.5])) and factors[3] > 1000
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    images = torch.randn(3, 3, 2, 2)
    tags = torch.tensor([[0, -1], [1, 2], [3, -1]])  # image weights 1, max(2, 1) = 2 and 3
    weighted = wsp_loss(model, images, tags, tag_repeats=torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0]))
    repeated = [0, 1, 1, 2, 2, 2]
    torch.testing.assert_close(weighted, wsp_loss(model, images[repeated], tags[repeated]))
    assert not torch.allclose(weighted, wsp_loss(model, images, tags))


def test_the_rare_tag_threshold_names_a_new_run_only_when_set():
    from studylib.stages import wsp

    plain = wsp.run_for(load_experiment("smoke"))
    # runs made before the setting keep their hashes
    assert "rare_tag_threshold" not in plain.identity["wsp"]
    assert wsp.run_for(load_experiment("smoke", ["wsp.rare_tag_threshold=0"])).hash == plain.hash
    resampled = wsp.run_for(load_experiment("smoke", ["wsp.rare_tag_threshold=0.01"]))
    assert resampled.hash != plain.hash and resampled.identity["wsp"]["rare_tag_threshold"] == 0.01
