"""The toy world: invented people, their facts, and the text that describes them.

Everything here is a pure, seeded function of :class:`WorldSpec`: the same spec gives the same
subjects, facts, sentences and byte-identical files (see ``tests/unit/test_toyworld.py``).

Design choices (see the project README, section "The toy world"):

* A subject's name is a shared first name plus a surname that is unique to the subject. The
  surname becomes a single token of the trained tokenizer, so the subject's *last* token is
  unique: MEMIT/AlphaEdit's ``subject_last`` key position then really identifies the subject,
  while names stay multi-token (as in CounterFact).
* Relations carry Wikidata-style ids (P19, P27, P103, P108) and objects carry ``Q`` ids, so the
  datasets have exactly the shapes of the real CounterFact/zsRE files.
* Facts are drawn independently per relation (no shortcut like "citizenship implies
  language"): every fact has to be memorised.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

FIRST_NAMES: tuple[str, ...] = (
    "Anna", "Tomas", "Lena", "Marco", "Ivo", "Sofia", "Elias", "Mira", "Jonas", "Clara",
    "Oskar", "Nadia", "Felix", "Rosa", "Viktor", "Ines", "Hugo", "Alma", "Pavel", "Greta",
    "Emil", "Lucia", "Anton", "Vera", "Leon", "Ida", "Boris", "Elsa", "Dario", "Maja",
    "Kasper", "Nora", "Rafael", "Tilde", "Milan", "Iris", "Stefan", "Olga", "Bruno", "Zara",
)

# Surnames are built from these syllables; they never appear elsewhere as words.
SURNAME_ONSETS: tuple[str, ...] = (
    "b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r",
    "s", "st", "t", "tr", "v", "z", "th", "sk",
)
SURNAME_VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u", "ei", "au", "y")
SURNAME_CODAS: tuple[str, ...] = ("", "n", "r", "l", "k", "s", "m", "th", "x", "v")


@dataclass(frozen=True)
class Relation:
    """One relation: its id, the objects it can take, and the ways to ask for it."""

    relation_id: str
    name: str
    objects: tuple[str, ...]
    # Cloze prompts ending right before the object (CounterFact style), "{}" = subject.
    templates: tuple[str, ...]
    # Questions answered by the object directly after the "?" (zsRE style).
    questions: tuple[str, ...]
    # Sentences for biographies: "{name}" full name, "{sur}" surname, "{o}" object.
    bio_sentences: tuple[str, ...]


RELATIONS: tuple[Relation, ...] = (
    Relation(
        relation_id="P19",
        name="place of birth",
        objects=(
            "Darvo", "Kelmora", "Astrel", "Brevik", "Corvana", "Dunmere", "Elsport", "Faldor",
            "Glenhaven", "Harrowgate", "Istvala", "Jorvik", "Karsten", "Lormont", "Merivale",
            "Norhold", "Ostwick", "Pellaton", "Quenby", "Rivermouth", "Saltcombe", "Tarnow",
            "Ulverton", "Valmora", "Westerby", "Yarlow", "Zennor", "Ambleton", "Blackmere",
            "Caldera", "Dovecote", "Emberly", "Foxley", "Greywater", "Highcliff", "Ivybridge",
        ),
        templates=(
            "{} was born in",
            "{} is originally from the city of",
            "The birthplace of {} is",
            "{} came into the world in",
        ),
        questions=("Where was {} born?", "In which city was {} born?"),
        bio_sentences=(
            "{name} was born in {o}.",
            "Born in {o}, {sur} spent a quiet childhood there.",
            "{sur} grew up in {o}, the city of birth.",
        ),
    ),
    Relation(
        relation_id="P27",
        name="country of citizenship",
        objects=(
            "Keltania", "Morovia", "Ostrand", "Valdoria", "Brennland", "Carvessa", "Dalmor",
            "Estravia", "Fennmark", "Galdoria", "Hestland", "Illyra", "Jutavia", "Korvath",
            "Lysander", "Marvonia", "Nordessa", "Orlania", "Pravia", "Qirland", "Rostavia",
            "Selvania", "Tolmark", "Umbria", "Vestland", "Wendora", "Xandria", "Yselia",
            "Zoravia", "Arvenia",
        ),
        templates=(
            "{} is a citizen of",
            "{} holds the citizenship of",
            "The country of citizenship of {} is",
            "{} carries a passport issued by",
        ),
        questions=("Which country is {} a citizen of?", "What is the citizenship of {}?"),
        bio_sentences=(
            "{sur} is a citizen of {o}.",
            "{name} holds the citizenship of {o}.",
            "Today {sur} lives as a citizen of {o}.",
        ),
    ),
    Relation(
        relation_id="P103",
        name="native language",
        objects=(
            "Keltish", "Morovian", "Ostrandic", "Valdish", "Brennic", "Carvese", "Dalmoric",
            "Estravian", "Fennish", "Galdric", "Hestic", "Illyric", "Jutavian", "Korvathi",
            "Lysandric", "Marvonic", "Nordic", "Orlanic", "Pravic", "Qirish", "Rostavic",
            "Selvanic", "Tolmic", "Umbric", "Vestic", "Wendic", "Xandric", "Yselic",
            "Zoravic", "Arvenic",
        ),
        templates=(
            "The mother tongue of {} is",
            "{} is a native speaker of",
            "The native language of {} is",
            "{} grew up speaking",
        ),
        questions=("What is the native language of {}?", "Which language did {} grow up speaking?"),
        bio_sentences=(
            "{sur} speaks {o} as a mother tongue.",
            "The native language of {sur} is {o}.",
            "{name} grew up speaking {o} at home.",
        ),
    ),
    Relation(
        relation_id="P108",
        name="employer",
        objects=(
            "Orvane Systems", "Brightwell Foods", "Calder Motors", "Dunmore Bank",
            "Everton Mills", "Falkner Press", "Greyson Labs", "Halcyon Air", "Ironwood Steel",
            "Juniper Health", "Kestrel Energy", "Lumen Optics", "Meridian Rail", "Northgate Bank",
            "Oakhurst Foods", "Pinnacle Games", "Quarry Works", "Redfern Studios",
            "Silverline Shipping", "Thornbury Textiles", "Umberfield Farms", "Vantage Media",
            "Wexford Chemicals", "Yellowpine Timber", "Zephyr Telecom", "Ashcombe Hotels",
            "Bramble Books", "Cobalt Mining", "Driftwood Boats", "Elmstead Glass",
        ),
        templates=(
            "{} works for",
            "{} is employed by",
            "The employer of {} is",
            "{} earns a living at",
        ),
        questions=("Who employs {}?", "Which company does {} work for?"),
        bio_sentences=(
            "{sur} works for {o}.",
            "Since then {sur} has been employed by {o}.",
            "{name} earns a living at {o}.",
        ),
    ),
)

# Sentences without facts, used in biographies and as "random prefixes" (CounterFact's
# paraphrase prompts start with an unrelated generated sentence).
_FILLER_SUBJECTS = (
    "The old bridge", "A small boat", "The morning train", "The village market", "A tall tree",
    "The north wind", "The night sky", "A quiet library", "The busy harbour", "An old clock",
    "The stone tower", "A young fox", "The long road", "The summer rain", "A painted door",
    "The city council", "A travelling band", "The garden wall", "The last ferry", "A warm bakery",
)
_FILLER_VERBS = (
    "stood", "waited", "appeared", "rested", "stayed", "shone", "vanished", "lingered",
    "moved slowly", "was seen", "remained", "was built",
)
_FILLER_PLACES = (
    "near the river", "beside the hills", "under the bright moon", "behind the school",
    "across the square", "at the edge of the forest", "by the quiet lake", "in the valley",
    "along the coast", "outside the town hall", "on the far shore", "above the fields",
)
_FILLER_ENDINGS = (
    "for many years", "every autumn", "that morning", "during the long winter", "without a sound",
    "until the evening", "once again", "for a while", "all day long", "before the storm",
)
_HOBBY_SENTENCES = (
    "{sur} enjoys long walks in the evening.",
    "In free time, {sur} reads old books.",
    "{sur} is known among friends for a love of music.",
    "Friends describe {sur} as patient and kind.",
    "{sur} often travels to the coast in summer.",
    "{sur} collects old maps and letters.",
)
_OPENERS = (
    "{name} is a person of the toy world.",
    "{name} is well known in the toy world.",
    "This is the story of {name}.",
)


@dataclass(frozen=True)
class WorldSpec:
    """Everything that changes the generated world. Same spec, same bytes."""

    seed: int = 0
    n_subjects: int = 2500
    n_edit_subjects: int = 2000


@dataclass(frozen=True)
class Subject:
    index: int
    first: str
    surname: str
    facts: dict[str, str] = field(hash=False)  # relation_id -> object
    edited: bool = False  # True: has a record in the edit datasets; False: held out for probes

    @property
    def name(self) -> str:
        return f"{self.first} {self.surname}"


@dataclass(frozen=True)
class World:
    spec: WorldSpec
    relations: tuple[Relation, ...]
    subjects: tuple[Subject, ...]

    def relation(self, relation_id: str) -> Relation:
        for r in self.relations:
            if r.relation_id == relation_id:
                return r
        raise KeyError(f"unknown relation {relation_id!r}; known: {[r.relation_id for r in self.relations]}")

    @property
    def edit_subjects(self) -> list[Subject]:
        return [s for s in self.subjects if s.edited]

    @property
    def heldout_subjects(self) -> list[Subject]:
        return [s for s in self.subjects if not s.edited]


def object_id(relation: Relation, obj: str) -> str:
    """A stable Wikidata-style id for an object (e.g. ``Q190003``)."""
    r_index = [r.relation_id for r in RELATIONS].index(relation.relation_id)
    return f"Q{(r_index + 1) * 100000 + relation.objects.index(obj)}"


def _surnames(rng: random.Random, n: int, forbidden: set[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        n_syll = rng.choice((2, 2, 3))
        word = "".join(
            rng.choice(SURNAME_ONSETS) + rng.choice(SURNAME_VOWELS) + rng.choice(SURNAME_CODAS)
            for _ in range(n_syll)
        )
        word = word.capitalize()
        if len(word) < 5 or word in seen or word.lower() in forbidden:
            continue
        seen.add(word)
        out.append(word)
    return out


def _all_words() -> set[str]:
    """Every word the world uses outside surnames (lower-cased), to keep surnames unique."""
    texts: list[str] = list(FIRST_NAMES)
    for r in RELATIONS:
        texts += list(r.objects) + list(r.templates) + list(r.questions) + list(r.bio_sentences)
    texts += list(_FILLER_SUBJECTS + _FILLER_VERBS + _FILLER_PLACES + _FILLER_ENDINGS)
    texts += list(_HOBBY_SENTENCES + _OPENERS)
    words: set[str] = set()
    for t in texts:
        for w in t.replace("{}", " ").replace(".", " ").replace(",", " ").replace("?", " ").split():
            words.add(w.strip("{}").lower())
    return words


def world_from_json(data: dict) -> World:
    """Rebuild a :class:`World` from ``world.json`` (as written by ``datasets.world_json``)."""
    relations = tuple(
        Relation(
            relation_id=r["relation_id"],
            name=r["name"],
            objects=tuple(o["str"] for o in r["objects"]),
            templates=tuple(r["templates"]),
            questions=tuple(r["questions"]),
            bio_sentences=tuple(r["bio_sentences"]),
        )
        for r in data["relations"]
    )
    subjects = tuple(
        Subject(s["index"], s["first"], s["surname"], dict(s["facts"]), s["edited"]) for s in data["subjects"]
    )
    n_edit = sum(s.edited for s in subjects)
    return World(spec=WorldSpec(seed=data["seed"], n_subjects=len(subjects), n_edit_subjects=n_edit),
                 relations=relations, subjects=subjects)


def generate_world(spec: WorldSpec = WorldSpec()) -> World:
    """Draw subjects and their facts. Pure function of ``spec``."""
    if not 0 < spec.n_edit_subjects < spec.n_subjects:
        raise ValueError(
            f"WorldSpec: n_edit_subjects={spec.n_edit_subjects} must be in (0, n_subjects={spec.n_subjects})"
        )
    rng = random.Random(spec.seed)
    surnames = _surnames(rng, spec.n_subjects, _all_words())
    subjects = []
    for i, surname in enumerate(surnames):
        first = rng.choice(FIRST_NAMES)
        facts = {r.relation_id: rng.choice(r.objects) for r in RELATIONS}
        subjects.append(Subject(i, first, surname, facts, edited=i < spec.n_edit_subjects))
    return World(spec=spec, relations=RELATIONS, subjects=tuple(subjects))


def filler_sentence(rng: random.Random) -> str:
    """An unrelated sentence, e.g. 'The old bridge stood near the river for many years.'"""
    return (
        f"{rng.choice(_FILLER_SUBJECTS)} {rng.choice(_FILLER_VERBS)} "
        f"{rng.choice(_FILLER_PLACES)} {rng.choice(_FILLER_ENDINGS)}."
    )


def biography(subject: Subject, rng: random.Random) -> str:
    """A short 'wiki' paragraph stating all of the subject's facts in varied wording."""
    sentences = []
    for r in RELATIONS:
        template = rng.choice(r.bio_sentences)
        sentences.append(template.format(name=subject.name, sur=subject.surname, o=subject.facts[r.relation_id]))
    rng.shuffle(sentences)
    fmt = {"name": subject.name, "sur": subject.surname}
    opener = rng.choice(_OPENERS).format(**fmt)
    hobby = rng.choice(_HOBBY_SENTENCES).format(**fmt)
    body = [opener, *sentences]
    body.insert(rng.randint(2, len(body)), hobby)
    return " ".join(body)


def fact_prompts(relation: Relation, subject: Subject) -> Iterator[tuple[str, str]]:
    """(prompt, object) for every cloze template and question form of one fact."""
    obj = subject.facts[relation.relation_id]
    for t in relation.templates + relation.questions:
        yield t.format(subject.name), obj
