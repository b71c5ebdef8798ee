"""The world's caption grammar: attributes -> English captions, and captions -> attributes.

A caption is written from a *template* ("there is {a} {size} {color} {object} {relation}")
whose fields are filled with a synonym of each attribute value ("big" for large, "cube" for
box, "beneath the table" for under the table). ``describe`` writes one; a ``Parser`` reads
one back, greedily matching the longest known phrase, so ``parse(describe(a)) == a``.

Two more sets of phrasings live here, both *outside* the training grammar:

* ``FREE_TEMPLATES`` -- captions a reader might type ("you can see a small red apple lying on
  the table", "please draw ..."), with words the grammar does not know. They are never used
  in training; the book measures how a model trained on the grammar copes with them (only an
  open-vocabulary text encoder such as the pretrained MiniLM can read them at all).
* ``AUGMENT_TEMPLATES`` -- other extra phrasings, disjoint in their extra words from the free
  ones, that a training pool may add (``PairPool(..., augment=...)``) to teach a model that
  wording varies while the scene does not: descriptions, requests ("render ...", "could you
  produce ..."), framings ("an illustration of ..."), agents ("a child dropped ..."), and other
  ways to say size and colour;
* ``NEUTRAL_WORDS`` -- words that say nothing about the scene, which a training pool may
  scatter into its captions (``PairPool(..., noise=...)``), for the same lesson.
"""

from __future__ import annotations

import random
import re

# Words a caption may use for each attribute value (the first one is the canonical name).
SYNONYMS = {
    "object": {
        "apple": ["apple"],
        "box": ["box", "cube"],
        "cone": ["cone"],
        "bottle": ["bottle"],
        "star": ["star"],
        "donut": ["donut", "ring"],
    },
    "relation": {
        "on the table": ["on the table", "on top of the table"],
        "under the table": ["under the table", "beneath the table", "below the table"],
        "left of the table": ["left of the table", "to the left of the table"],
        "right of the table": ["right of the table", "to the right of the table"],
    },
    "size": {
        "small": ["small", "little", "tiny"],
        "large": ["large", "big"],
    },
    "color": {c: [c] for c in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white")},
}

# Caption templates. Fields in braces are filled with a synonym of the attribute value; a
# field written with "!" ({relation!}) is one the template cannot do without (``object`` is
# always required), so a caption that leaves that attribute out never uses it. ``{a}`` is the
# article "a"/"an", chosen from the word that follows it. Each list holds (text, needs) pairs.
def _templates(*texts: str) -> list[tuple[str, tuple[str, ...]]]:
    """("{relation!} sits {a} {object}", ...) -> [("{relation} sits {a} {object}", ("relation",)), ...]"""
    return [(text.replace("!}", "}"), tuple(re.findall(r"\{([a-z]+)!\}", text))) for text in texts]


TEMPLATES = _templates(
    "{a} {size} {color} {object} {relation}",
    "there is {a} {size} {color} {object} {relation}",
    "a photo of {a} {size} {color} {object} {relation}",
    "you can see {a} {size} {color} {object} {relation}",
    "{relation!} there is {a} {size} {color} {object}",
    "{relation!} sits {a} {size} {color} {object}",
    "the {object} {relation} is {color!} and {size!}",
)

# Words of the templates that carry no attribute.
FILLER = {"a", "an", "the", "there", "is", "photo", "of", "you", "can", "see", "sits", "and"}

# Extra phrasings a training pool may add (never used for evaluation). None of their extra
# words ("image", "snapshot", "located", "render", ...) occurs in FREE_TEMPLATES (a test checks).
# The second group was added after measuring, per free template, which kinds of sentence the
# book's GAN read worst (requests, framings, agents): it covers those *kinds* with other words, so
# the free phrasings still test wording the model never saw. README, gan.json: what it bought.
AUGMENT_TEMPLATES = _templates(
    "an image of {a} {size} {color} {object} {relation}",
    "a snapshot showing {a} {size} {color} {object} {relation}",
    "{a} {size} {object} that is {color} {relation}",
    "we see {a} {size} {color} {object} located {relation}",
    "{relation!} stands {a} {size} {color} {object}",
    "here is {a} {size} {color} {object} {relation}",
    "{a} {color} {object} which is {size} {relation}",
    "the frame holds {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} standing {relation}",
    "look at the {size} {color} {object} {relation}",
    # requests and framings, places and agents, other ways to say size and colour
    "render {a} {size} {color} {object} {relation}",
    "create {a} {size} {color} {object} {relation}",
    "make {a} {size} {color} {object} {relation}",
    "depict {a} {size} {color} {object} {relation}",
    "illustrate {a} {size} {color} {object} {relation}",
    "hand us {a} {size} {color} {object} {relation}",
    "we want {a} {size} {color} {object} {relation}",
    "we would like {a} {size} {color} {object} {relation}",
    "could you produce {a} {size} {color} {object} {relation}",
    "let us have {a} {size} {color} {object} {relation}",
    "display {a} {size} {color} {object} {relation}",
    "visualize {a} {size} {color} {object} {relation}",
    "an illustration of {a} {size} {color} {object} {relation}",
    "a rendering of {a} {size} {color} {object} {relation}",
    "an artwork featuring {a} {size} {color} {object} {relation}",
    "a capture of {a} {size} {color} {object} {relation}",
    "a shot containing {a} {size} {color} {object} {relation}",
    "a child dropped {a} {size} {color} {object} {relation}",
    "a friend stored {a} {size} {color} {object} {relation}",
    "we hid {a} {size} {color} {object} {relation}",
    "they stacked {a} {size} {color} {object} {relation}",
    "a person leaned {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} perched {relation}",
    "{a} {size} {color} {object} positioned {relation}",
    "{a} {size} {color} {object} waiting {relation}",
    "{a} {size} {color} {object} that lies {relation}",
    "{a} {size} {color} {object} appears {relation}",
    "{relation!} we have {a} {size} {color} {object}",
    "{a} fairly {size} {color} {object} {relation}",
    "{a} very {size} {color} {object} {relation}",
    "{a} {size} {object} of {color} hue {relation}",
    "{a} {size} {object} tinted {color} {relation}",
    "{a} {object} both {size} and {color} {relation}",
    "the {object} {relation} looks {color!} and {size!}",
    "{a} {size} {object} having a {color} surface {relation}",
    "exactly {a} {size} {color} {object} {relation}",
    "{a} lone {size} {color} {object} {relation}",
    "{a} {size} {color} {object} {relation} and that is all",
)

# Words that say nothing about a scene's colour, object, size or position, which a training
# pool may scatter into its captions (``PairPool(..., noise=...)``, ``describe(..., noise=True)``):
# a caption a reader types carries words the grammar never uses, and a model that has seen
# wordings vary while the scene stays put learns to look past them. None occurs in
# FREE_TEMPLATES (a test checks), and none is a near-synonym of their words (no "sketch" for
# "drawing", no "single" for "just one").
NEUTRAL_WORDS = """actually also always basically certainly clearly definitely honestly indeed likely maybe
merely naturally obviously perhaps possibly probably really seemingly simply surely totally truly well so
okay yes hello today now again still already ever once finally suddenly quietly calmly happily sadly gently
softly slowly proudly neatly plainly lovely pretty fine good great cool wonderful beautiful ordinary normal
regular typical classic modern old new fresh clean dusty wooden plastic metal glass paper morning evening
afternoon night sunday kitchen room house garden office studio behold observe notice spot check watch view
hey wow oh ah hmm kindly our your their his her its""".split()

# Phrasings a reader might type, never seen in training (the book's out-of-template test).
# Every one names all four attributes, so a generated image can be scored on each.
FREE_TEMPLATES = [
    "you can see {a} {size} {color} {object} lying {relation}",
    "i put {a} {size} {color} {object} {relation}",
    "somebody placed {a} {size} {color} {object} {relation}",
    "{a} {color} {object} of {size} size rests {relation}",
    "{relation} you will find {a} {size} {color} {object}",
    "draw {a} {size} {color} {object} {relation}",
    "please show me {a} {size} {color} {object} {relation}",
    "generate a picture with {a} {size} {color} {object} {relation}",
    "{a} {size} {object} , painted {color} , {relation}",
    "the {color} {object} is {size} and it is {relation}",
    "{a} rather {size} {color} {object} sitting {relation}",
    "just one {size} {color} {object} {relation} , nothing else",
    "{a} {size} {color} {object} can be seen {relation}",
    "there's {a} {size} {color} {object} {relation}",
    "{a} cute {size} {color} {object} {relation}",
    "my {size} {color} {object} is {relation}",
    "{relation} : {a} {size} {color} {object}",
    "{a} {size} {object} , colored {color} , {relation}",
    "in this photo {a} {size} {color} {object} is {relation}",
    "a drawing of {a} {size} {color} {object} {relation}",
    "what a nice {size} {color} {object} {relation}",
    "{a} {size} {color} {object} was set down {relation}",
    "someone keeps {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} resting {relation}",
    "imagine {a} {size} {color} {object} {relation}",
    "only {a} {size} {color} {object} {relation}",
    "a simple scene : {a} {size} {color} {object} {relation}",
    "{a} {size} shiny {color} {object} {relation}",
    "the picture shows {a} {size} {color} {object} {relation}",
    "a {color} colored {object} , quite {size} , {relation}",
]


# A second out-of-template set, written after the training bank (AUGMENT_TEMPLATES, NEUTRAL_WORDS)
# was fixed and never used to choose anything: FREE_TEMPLATES became a development set when the
# extra training patterns were written with their failures in view, so this is the honest test
# of wording. It shares no word with the training wordings nor with FREE_TEMPLATES (a test checks).
FRESH_TEMPLATES = [
    "sketch {a} {size} {color} {object} {relation}",
    "paint {a} {size} {color} {object} {relation}",
    "requesting {a} {size} {color} {object} {relation}",
    "there exists {a} {size} {color} {object} {relation}",
    "grandma forgot {a} {size} {color} {object} {relation}",
    "the kids abandoned {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} hangs around {relation}",
    "{a} {size} {object} whose colour is {color} {relation}",
    "locate {a} {size} {color} {object} {relation}",
    "a photograph presenting {a} {size} {color} {object} {relation}",
    "gaze upon {a} {size} {color} {object} {relation}",
    "{relation} lurks {a} {size} {color} {object}",
    "{a} {size} {color} {object} chilling {relation}",
    "{a} bright {color} {size} {object} {relation}",
    "do you see {a} {size} {color} {object} {relation}",
    "there remains {a} {size} {color} {object} {relation}",
    "a cartoon of {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} got stuck {relation}",
    "presumably {a} {size} {color} {object} sat {relation}",
    "{a} {size} {color} {object} {relation} as requested",
]

# A third set, written on 2026-12-06 after FRESH_TEMPLATES had been examined pattern by pattern and
# before the token readout (condition.py) was tried: it scored that readout and the GANs of the
# gan benchmark, and nothing was chosen by looking at its patterns. It shares no word with the
# training wordings nor with the two sets above (a test checks).
THIRD_TEMPLATES = [
    "a postcard bearing {a} {size} {color} {object} {relation}",
    "the cat knocked {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} rolled {relation}",
    "guests noticed {a} {size} {color} {object} {relation}",
    "envision {a} {size} {color} {object} {relation}",
    "fetch {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} belongs {relation}",
    "{relation} dozes {a} {size} {color} {object}",
    "{a} {color} {object} , {size} overall , {relation}",
    "mom bought {a} {size} {color} {object} {relation}",
    "allegedly {a} {size} {color} {object} remained {relation}",
    "watercolor study : {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} parked {relation}",
    "inventory item : {a} {size} {color} {object} {relation}",
    "grab {a} {size} {color} {object} {relation}",
    "witness {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} dangling {relation}",
    "somewhere {relation} , {a} {size} {color} {object}",
    "{a} glossy {color} {size} {object} {relation}",
    "uncle tossed {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} ended up {relation}",
    "{a} {size} {object} dyed {color} {relation}",
    "tourists photographed {a} {size} {color} {object} {relation}",
    "{a} {size} {color} {object} , untouched , {relation}",
]

# the out-of-template sets, by name
PHRASINGS = {"free": FREE_TEMPLATES, "fresh": FRESH_TEMPLATES, "third": THIRD_TEMPLATES}


def describe(attrs: dict, seed: int | None = None, template: int | None = None,
             templates: list | None = None, noise: bool = False) -> str:
    """Write a caption for ``attrs`` (attribute -> canonical value; absent attributes are not
    mentioned). ``seed`` picks the template and the synonyms; ``template`` forces one.
    ``noise``: also drop some of the template's filler words and scatter 1-3 ``NEUTRAL_WORDS``
    between its parts (never inside an attribute's phrase), e.g. "there is a small red apple on
    the table" -> "is a small red apple honestly on the table"."""
    templates = TEMPLATES if templates is None else templates
    rng = random.Random(seed)
    usable = [i for i, (_, needs) in enumerate(templates) if all(n in attrs for n in needs)]
    if template is None:
        template = rng.choice(usable)
    elif template not in usable:
        raise ValueError(f"template {template} needs {templates[template][1]}; usable templates "
                         f"for these attributes: {usable}")
    text = templates[template][0]
    words = {k: rng.choice(SYNONYMS[k][attrs[k]]) if k in attrs else "" for k in SYNONYMS}
    if noise:
        text = _scatter(text, rng)
    return _finish(text.format(a="{a}", **words))


def _scatter(template: str, rng: random.Random, drop: float = 0.3, most: int = 3) -> str:
    """A template with each filler word dropped with probability ``drop`` and 1..``most``
    neutral words inserted between its parts (a field such as ``{relation}`` is one part)."""
    parts = [p for p in template.split() if not (p in FILLER and rng.random() < drop)]
    for _ in range(rng.randint(1, most)):
        parts.insert(rng.randint(0, len(parts)), rng.choice(NEUTRAL_WORDS))
    return " ".join(parts)


def free_caption(attrs: dict, seed: int | None = None, template: int | None = None,
                 phrasing: str = "free") -> str:
    """A caption phrased outside the training grammar naming all four attributes, from
    ``FREE_TEMPLATES`` (``phrasing="free"``), ``FRESH_TEMPLATES`` (``"fresh"``) or ``THIRD_TEMPLATES``
    (``"third"``)."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {sorted(PHRASINGS)}, got {phrasing!r}")
    templates = PHRASINGS[phrasing]
    rng = random.Random(seed)
    if template is not None and not 0 <= template < len(templates):
        raise ValueError(f"template must be 0..{len(templates) - 1} for phrasing={phrasing!r}, got {template!r}")
    text = templates[rng.randrange(len(templates)) if template is None else template]
    words = {k: rng.choice(SYNONYMS[k][attrs[k]]) for k in SYNONYMS}
    return _finish(text.format(a="{a}", **words))


def _finish(text: str) -> str:
    """Collapse spaces and choose a/an from the word that follows."""
    parts = " ".join(text.split()).split(" ")
    for i, w in enumerate(parts):
        if w == "{a}":
            parts[i] = "an" if parts[i + 1][0] in "aeiou" else "a"
    return " ".join(parts)


def template_words(templates) -> set[str]:
    """The non-field words of some templates."""
    out = set()
    for t in templates:
        text = t[0] if isinstance(t, tuple) else t
        out |= set(re.findall(r"[a-z']+|[,:]", re.sub(r"\{[a-z]+\}", " ", text)))
    return out


class Parser:
    """Caption -> attributes it names, by greedy longest-phrase matching.

    >>> Parser(attributes).parse("there is a big red cube under the table")
    {'color': 'red', 'object': 'box', 'relation': 'under the table', 'size': 'large'}
    """

    def __init__(self, attributes: dict[str, list[str]], extra_words: set[str] = frozenset()):
        self.attributes = attributes
        # phrase -> (attribute, canonical value), longest phrases first for greedy parsing
        self.phrases = sorted(
            ((tuple(word.split()), (attr, value))
             for attr, table in SYNONYMS.items() for value, words in table.items() for word in words),
            key=lambda p: -len(p[0]))
        self.vocabulary = sorted(FILLER | set(extra_words) | {w for p, _ in self.phrases for w in p})
        self._known = set(self.vocabulary) | {",", "."}

    def tokens(self, caption: str) -> list[str]:
        return re.findall(r"[a-z]+|[^\sa-z]", caption.lower())

    def parse(self, caption: str, strict: bool = True) -> dict:
        """Attributes a caption names, canonical values, in schema order. Raises ValueError on an
        empty caption, words outside the vocabulary (unless ``strict=False``, which skips them --
        for open-vocabulary encoders), two values of one attribute, or no object."""
        if not isinstance(caption, str):
            hint = "; to draw attributes, pass them to render() as a dict" if isinstance(caption, dict) else ""
            raise TypeError(f"a caption must be a string, got {type(caption).__name__}{hint}")
        if not caption.strip():
            raise ValueError("empty caption; describe a scene, e.g. 'a red apple on the table'")
        tokens = self.tokens(caption)
        unknown = [t for t in tokens if t not in self._known]
        if unknown and strict:
            raise ValueError(f"caption {caption!r} has words outside the world's vocabulary: "
                             f"{', '.join(map(repr, dict.fromkeys(unknown)))}; allowed words are: "
                             f"{', '.join(self.vocabulary)}")
        tokens = [t for t in tokens if t not in {",", "."}]
        found: dict[str, str] = {}
        i = 0
        while i < len(tokens):
            for phrase, (attr, value) in self.phrases:
                if tuple(tokens[i:i + len(phrase)]) == phrase:
                    if attr in found and found[attr] != value:
                        raise ValueError(f"caption {caption!r} names two {attr}s: "
                                         f"{found[attr]!r} and {value!r}; name at most one")
                    found[attr] = value
                    i += len(phrase)
                    break
            else:
                i += 1
        if "object" not in found:
            raise ValueError(f"caption {caption!r} names no object; name one of: "
                             f"{', '.join(self.attributes['object'])}")
        return {k: found[k] for k in self.attributes if k in found}


__all__ = ["SYNONYMS", "TEMPLATES", "FILLER", "AUGMENT_TEMPLATES", "NEUTRAL_WORDS", "FREE_TEMPLATES", "describe", "free_caption",
           "template_words", "Parser"]
