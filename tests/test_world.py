"""The captioned world: schema, caption grammar round trips, the held-out split, sampling,
rendering, and the errors a reader sees on bad input."""

import itertools

import pytest
import torch

import mmtutor as mm
from mmtutor.grammar import SYNONYMS, TEMPLATES

OMISSIONS = [(), ("size",), ("color",), ("relation",), ("color", "size"), ("color", "relation", "size")]


def test_schema(world):
    assert len(world.attributes["color"]) >= 8 and "red" in world.attributes["color"]
    assert len(world.attributes["object"]) >= 5 and "apple" in world.attributes["object"]
    rel = world.attributes["relation"]
    assert len(rel) >= 4 and "on the table" in rel and "under the table" in rel
    assert world.attributes["size"] == ["small", "large"]
    assert list(world.attributes) == ["color", "object", "relation", "size"]
    n = 1
    for values in world.attributes.values():
        n *= len(values)
    assert len(world.combinations) == n
    assert world.image_size == 32


def test_world_rejects_bad_construction():
    with pytest.raises(ValueError, match="image_size must be between 16 and 256"):
        mm.World(image_size=8)
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \[0, 0.5\)"):
        mm.World(heldout_fraction=0.6)


# ------------------------------------------------------------------------ captions
def test_parse_example(world):
    assert world.parse("a red apple on the table") == {"color": "red", "object": "apple",
                                                       "relation": "on the table"}


def test_parse_is_case_and_punctuation_tolerant(world):
    assert world.parse("A Red Apple, on the table.") == {"color": "red", "object": "apple",
                                                         "relation": "on the table"}


@pytest.mark.parametrize("caption, expected", [
    ("a big cube beneath the table", {"object": "box", "relation": "under the table", "size": "large"}),
    ("a little ring to the left of the table", {"object": "donut", "relation": "left of the table",
                                                "size": "small"}),
    ("a tiny blue star below the table", {"color": "blue", "object": "star", "relation": "under the table",
                                          "size": "small"}),
    ("an orange cone on top of the table", {"color": "orange", "object": "cone", "relation": "on the table"}),
    ("to the right of the table sits a large white bottle", {"color": "white", "object": "bottle",
                                                             "relation": "right of the table", "size": "large"}),
    ("a cube", {"object": "box"}),
])
def test_synonyms_map_to_canonical_values(world, caption, expected):
    assert world.parse(caption) == expected


def test_every_synonym_parses_to_its_value(world):
    for attr, table in SYNONYMS.items():
        for value, words in table.items():
            for word in words:
                caption = f"{word} apple" if attr != "object" else f"a {word}"
                assert world.parse(caption)[attr] == value, caption


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_caption_parse_round_trip_every_template(world, template):
    needs = TEMPLATES[template][1]
    checked = 0
    for combo in world.combinations:
        full = world.attrs_of(combo)
        for omit in OMISSIONS:
            attrs = {k: v for k, v in full.items() if k not in omit}
            if not all(n in attrs for n in needs):
                continue
            for seed in range(3):
                caption = world.caption(attrs, seed=seed, template=template)
                assert world.parse(caption) == attrs, (caption, attrs)
                checked += 1
    assert checked >= len(world.combinations) * 3  # the full attribute set is usable with every template


def test_caption_with_random_template_round_trips(world):
    for seed, combo in enumerate(world.combinations):
        attrs = world.attrs_of(combo)
        if seed % 2:
            attrs.pop("size")
        assert world.parse(world.caption(attrs, seed=seed)) == attrs


def test_noisy_captions_round_trip_and_carry_neutral_words(world):
    neutral = set(mm.grammar.NEUTRAL_WORDS)
    for seed, combo in enumerate(world.combinations):
        attrs = world.attrs_of(combo)
        if seed % 3 == 0:
            attrs.pop("size")
        for templates in (None, mm.grammar.AUGMENT_TEMPLATES):
            caption = mm.grammar.describe(attrs, seed=seed, templates=templates, noise=True)
            assert world.parse(caption) == attrs, caption
            assert 1 <= sum(w in neutral for w in caption.split()) <= 3, caption
            assert caption == mm.grammar.describe(attrs, seed=seed, templates=templates, noise=True)


def test_free_phrasings_share_no_word_with_any_training_wording():
    """The free phrasings are the book's out-of-template test: no word a training pool can add
    to the grammar's own (extra templates, neutral words) may occur in them."""
    g = mm.grammar
    grammar_words = g.template_words(g.TEMPLATES) | g.FILLER
    attribute_words = {w for table in g.SYNONYMS.values() for names in table.values() for n in names for w in n.split()}
    free = g.template_words(g.FREE_TEMPLATES)
    fresh = g.template_words(g.FRESH_TEMPLATES)
    extra = g.template_words(g.AUGMENT_TEMPLATES) - grammar_words
    assert not extra & free
    assert not extra & fresh
    assert not (fresh - grammar_words) & free          # the two test sets are independent too
    third = g.template_words(g.THIRD_TEMPLATES) - {",", ":"}
    assert not extra & third
    assert not (third - grammar_words) & (free | fresh)
    assert not set(g.NEUTRAL_WORDS) & third
    assert not set(g.NEUTRAL_WORDS) & (free | fresh | attribute_words | grammar_words |
                                       g.template_words(g.AUGMENT_TEMPLATES))
    assert len(set(g.NEUTRAL_WORDS)) == len(g.NEUTRAL_WORDS)


@pytest.mark.parametrize("phrasing", ["fresh", "third"])
def test_fresh_phrasings_name_every_attribute(world, phrasing):
    for combo in world.splits["all"][::37]:
        attrs = world.attrs_of(combo)
        for t in range(len(mm.grammar.PHRASINGS[phrasing])):
            caption = mm.grammar.free_caption(attrs, seed=t, template=t, phrasing=phrasing)
            assert world.parse(caption, strict=False) == attrs, caption
    caps = mm.metrics.evaluation_captions(world, "heldout", phrasing="fresh")
    assert len(caps) == len(world.splits["heldout"])
    with pytest.raises(ValueError, match="phrasing must be one of"):
        mm.grammar.free_caption(attrs, phrasing="odd")
    with pytest.raises(ValueError, match="template must be 0..19"):
        mm.grammar.free_caption(attrs, template=20, phrasing="fresh")


def test_caption_seed_varies_words_and_is_deterministic(world):
    attrs = {"color": "red", "object": "box", "relation": "under the table", "size": "large"}
    captions = {world.caption(attrs, seed=s) for s in range(60)}
    assert len(captions) > 5
    assert any("cube" in c for c in captions) and any("box" in c for c in captions)
    assert world.caption(attrs, seed=7) == world.caption(attrs, seed=7)


def test_caption_article(world):
    assert world.caption({"color": "orange", "object": "apple"}, seed=0, template=0) == "an orange apple"
    assert world.caption({"color": "red", "object": "apple"}, seed=0, template=0) == "a red apple"


def test_caption_rejects_unusable_template(world):
    attrs = {"color": "red", "object": "apple", "relation": "on the table"}   # no size
    unusable = [i for i, (_, needs) in enumerate(TEMPLATES) if "size" in needs]
    assert unusable, "some template needs the size"
    for t in unusable:
        with pytest.raises(ValueError, match=rf"template {t} needs .*usable templates"):
            world.caption(attrs, template=t)
    no_relation = {"color": "red", "object": "apple", "size": "small"}
    for t in [i for i, (_, needs) in enumerate(TEMPLATES) if "relation" in needs]:
        with pytest.raises(ValueError, match=rf"template {t} needs"):
            world.caption(no_relation, template=t)


def test_caption_needs_an_object(world):
    with pytest.raises(ValueError, match="needs an object.*apple"):
        world.caption({"color": "red"})


def test_caption_rejects_unknown_value(world):
    with pytest.raises(ValueError, match="unknown color 'crimson'; choose one of: red, orange"):
        world.caption({"color": "crimson", "object": "apple"})


@pytest.mark.parametrize("caption", ["", "   ", "\n\t"])
def test_parse_rejects_empty_caption(world, caption):
    with pytest.raises(ValueError, match="empty caption"):
        world.parse(caption)


def test_parse_rejects_non_string(world):
    with pytest.raises(TypeError, match="must be a string"):
        world.parse(["a red apple"])


def test_parse_lists_unknown_words(world):
    with pytest.raises(ValueError, match=r"outside the world's vocabulary: 'shiny', 'zebra'; allowed words"):
        world.parse("a shiny red zebra shiny")


def test_parse_rejects_caption_without_object(world):
    with pytest.raises(ValueError, match="names no object; name one of: apple, box"):
        world.parse("a big red on the table")


def test_parse_rejects_two_colors(world):
    with pytest.raises(ValueError, match="names two colors: 'red' and 'green'"):
        world.parse("a red green apple")


def test_parse_rejects_two_objects(world):
    with pytest.raises(ValueError, match="names two objects"):
        world.parse("a red apple and a box")


# ------------------------------------------------------------------------ held-out split
def test_heldout_fraction(world):
    n = len(world.combinations)
    assert abs(len(world.heldout) - 0.1 * n) <= 1
    assert set(world.splits["train"]) | world.heldout == set(world.combinations)
    assert not set(world.splits["train"]) & world.heldout
    assert world.splits["all"] == world.combinations


def test_heldout_pairs_are_seen_in_training(world):
    train = world.splits["train"]
    seen_pairs = {((i, c[i]), (j, c[j])) for c in train for i, j in itertools.combinations(range(4), 2)}
    for combo in world.heldout:
        for i, j in itertools.combinations(range(4), 2):
            assert ((i, combo[i]), (j, combo[j])) in seen_pairs, (combo, i, j)


def test_heldout_split_is_a_function_of_split_seed(world):
    assert mm.World().heldout == world.heldout
    assert mm.World(split_seed=1).heldout != world.heldout


def test_is_heldout(world):
    combo = sorted(world.heldout)[0]
    assert world.is_heldout(combo)
    assert world.is_heldout(world.attrs_of(combo))
    assert not world.is_heldout(world.splits["train"][0])


# ------------------------------------------------------------------------ sampling
def test_sample_shapes_and_range(world):
    images, captions, attrs = world.sample(6, seed=1)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert len(captions) == 6 and all(isinstance(c, str) for c in captions)
    assert attrs.shape == (6, 4) and attrs.dtype == torch.long
    for c, a in zip(captions, attrs):
        assert world.parse(c) == world.attrs_of(a)   # omit_size=0: full captions


def test_sample_is_deterministic_under_a_seed(world):
    a = world.sample(8, seed=3)
    b = world.sample(8, seed=3)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    c = world.sample(8, seed=4)
    assert not torch.equal(a[0], c[0])
    assert a[1] != c[1]


def test_sample_respects_split(world):
    _, _, held = world.sample(200, split="heldout", seed=0, render=False)
    assert all(tuple(r) in world.heldout for r in held.tolist())
    _, _, train = world.sample(2000, split="train", seed=0, render=False)
    assert not any(tuple(r) in world.heldout for r in train.tolist())


def test_sample_omit_size(world):
    _, captions, _ = world.sample(100, seed=0, omit_size=1.0, render=False)
    assert all("size" not in world.parse(c) for c in captions)


@pytest.mark.parametrize("n", [0, -3])
def test_sample_rejects_non_positive_n(world, n):
    with pytest.raises(ValueError, match=f"n must be a positive integer, got {n}"):
        world.sample(n)


def test_sample_rejects_unknown_split(world):
    with pytest.raises(ValueError, match="unknown split 'test'; choose one of: train, heldout, all"):
        world.sample(4, split="test")


# ------------------------------------------------------------------------ rendering
def test_render_dict_and_list(world):
    scene = {"color": "red", "object": "apple", "relation": "on the table", "size": "large"}
    one = world.render(scene)
    assert one.shape == (3, 32, 32) and one.min() >= -1 and one.max() <= 1
    many = world.render([scene, dict(scene, color="blue")])
    assert many.shape == (2, 3, 32, 32)
    assert torch.equal(world.render(scene, seed=5), world.render(scene, seed=5))


def test_render_draws_the_colour(world):
    red = world.render({"color": "red", "object": "box", "relation": "on the table", "size": "large"})
    blue = world.render({"color": "blue", "object": "box", "relation": "on the table", "size": "large"})
    diff = (red - blue).abs().sum(0)          # where the object is
    region = diff > 0.5
    assert region.sum() > 20
    assert red[0][region].mean() > red[2][region].mean() + 0.5    # red object: R >> B
    assert blue[2][region].mean() > blue[0][region].mean() + 0.5  # blue object: B >> R


def test_render_rejects_unknown_colour(world):
    with pytest.raises(ValueError, match="unknown color 'crimson'; choose one of: red, orange, yellow, green, "
                                         "blue, purple, pink, white"):
        world.render({"color": "crimson", "object": "apple", "relation": "on the table", "size": "small"})


def test_render_rejects_missing_and_unknown_attributes(world):
    with pytest.raises(ValueError, match="missing attribute 'size'; choose one of: small, large"):
        world.render({"color": "red", "object": "apple", "relation": "on the table"})
    with pytest.raises(ValueError, match="unknown attribute 'shape'; attributes are: color, object"):
        world.render({"color": "red", "object": "apple", "relation": "on the table", "size": "small",
                      "shape": "round"})
    with pytest.raises(ValueError, match="at least one scene"):
        world.render([])


def test_render_index_checks_range(world):
    with pytest.raises(ValueError, match=r"object index 9 out of range 0..5"):
        world.render_index(torch.tensor([[0, 9, 0, 0]]))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        world.render_index(torch.tensor([0, 1, 0, 0]))


def test_render_index_device_argument_and_chunking_keep_the_scenes(world):
    # The random layout is drawn in chunks of 256 on the CPU whatever the device, so one call
    # for 300 scenes starts with exactly the scenes of a call for the first 256.
    index = torch.tensor(world.splits["all"][:300])
    full = world.render_index(index, torch.Generator().manual_seed(3))
    on_cpu = world.render_index(index, torch.Generator().manual_seed(3), device="cpu")
    first = world.render_index(index[:256], torch.Generator().manual_seed(3))
    assert torch.equal(full, on_cpu)
    assert torch.equal(full[:256], first)
    assert on_cpu.device.type == "cpu"
